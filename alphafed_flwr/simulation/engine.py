"""The one place that starts Flower's Ray simulation engine.

Flower 1.41 offers two ways to simulate: ``flwr run`` against a local SuperLink, and the
in-process ``flwr.simulation.run_simulation`` (deprecated in favour of ``flwr run``). We use
the deprecated function, here only, because ``flwr run`` for simulation starts a detached
local SuperLink that outlives the command, needs the app packed as a bundle on disk, and
cannot take the scheduler object that ``launch_task()`` hands us in Python; the in-process
engine runs exactly Flower's own Ray backend (``RayBackend``, ``ClientAppActor``) for the
lifetime of our command.
"""

from __future__ import annotations

import logging
import os

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp


class _DropDeprecationNotice(logging.Filter):
    """Hides Flower's notice that run_simulation is deprecated (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "run_simulation" not in message and "DEPRECATED FEATURE" not in message


def run_ray_simulation(
    server_app: ServerApp,
    client_app: ClientApp,
    num_supernodes: int,
    cpus_per_client: float = 1.0,
    ray_init_args: dict[str, object] | None = None,
) -> None:
    """Run ``server_app`` against ``num_supernodes`` virtual nodes on Ray; raise its errors.

    Virtual nodes are registered up front (a node id each) but a ClientApp only runs, and
    builds its scheduler, when a message reaches that node.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network calls at start
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a FutureWarning
    from flwr.simulation import run_simulation  # pylint: disable=import-outside-toplevel

    flwr_logger = logging.getLogger("flwr")
    notice_filter = _DropDeprecationNotice()
    flwr_logger.addFilter(notice_filter)
    for handler in flwr_logger.handlers:
        handler.addFilter(notice_filter)
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_supernodes,
            backend_config={
                "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
                "init_args": dict(ray_init_args or {}),
            },
        )
    finally:
        flwr_logger.removeFilter(notice_filter)
        for handler in flwr_logger.handlers:
            handler.removeFilter(notice_filter)
