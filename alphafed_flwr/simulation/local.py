"""``launch_task()`` in a script run directly (``python script.py``): a local simulation."""

from __future__ import annotations

import os
import re
from pathlib import Path

from alphafed_flwr.api.errors import AlphaFedError, ConfigError
from alphafed_flwr.api.log import logger
from alphafed_flwr.api.scheduler import Scheduler
from alphafed_flwr.families import HORIZONTAL, family_of

LOCAL_CLIENTS_ENV = "ALPHAFED_LOCAL_CLIENTS"
DEFAULT_LOCAL_CLIENTS = 3


def launch_directly(
    scheduler: Scheduler,
    task_id: str | None,
    num_clients: int | None = None,
    fresh: bool = False,
) -> None:
    """Run ``scheduler`` in a local Ray simulation; exit the script on a user error.

    The number of virtual clients is ``num_clients`` (AlphaFed's mock nodes), else
    ``$ALPHAFED_LOCAL_CLIENTS`` (default 3); outputs go to ``runs/<task id>``, resuming
    from their checkpoint unless ``fresh``.
    """
    from alphafed_flwr.settings import RunSettings  # pylint: disable=import-outside-toplevel

    from .horizontal import simulate_horizontal  # local: Flower is heavy

    try:
        if family_of(scheduler).kind != HORIZONTAL:
            raise ConfigError(
                f"{type(scheduler).__name__}.launch_task() cannot run on its own: a vertical "
                "task needs all parties; run python -m alphafed_flwr.simulation --host "
                "host.py --collaborator collaborator.py"
            )
        count = str(num_clients or os.environ.get(LOCAL_CLIENTS_ENV, DEFAULT_LOCAL_CLIENTS))
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(f"{LOCAL_CLIENTS_ENV} must be a positive integer, got '{count}'")
        name = task_id or scheduler.task_id
        out = Path("runs") / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "local-task")
        logger.info(
            "launch_task(task_id=%r) outside alphafed-flwr's tools: running a local simulation "
            "with %s virtual clients (set %s to change), outputs in %s",
            task_id,
            count,
            LOCAL_CLIENTS_ENV,
            out,
        )
        simulate_horizontal(
            scheduler,
            RunSettings(num_clients=int(count), out=out, task_id=name, resume=not fresh),
        )
    except AlphaFedError as exc:
        logger.error("%s", exc)
        raise SystemExit(1) from None
