"""Vertical (HeteroNN split-learning) simulation: the host in the ServerApp, one virtual
node per collaborator script."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from alphafed_flwr.adapters.templates import PickledTemplate
from alphafed_flwr.adapters.vertical_client import CollaboratorSettings
from alphafed_flwr.adapters.vertical_host import VerticalSettings, run_vertical_host
from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.api.hetero_nn import HeteroNNCollaboratorScheduler, HeteroNNHostScheduler
from alphafed_flwr.api.log import logger
from alphafed_flwr.families import VERTICAL, client_app, family_of
from alphafed_flwr.loader import load_object
from alphafed_flwr.strategies.codecs import ExchangeCodecs

from .engine import party_threads, run_ray_simulation
from .horizontal import SimulationOptions


def simulate_vertical(
    host_ref: str | None, collaborator_refs: list[str], options: SimulationOptions
) -> dict[str, Any]:
    """Run a host script and one virtual node per collaborator script.

    Returns the content of ``summary.json``.
    """
    if not host_ref:
        raise ConfigError("a vertical simulation needs --host host.py[:name]")
    if not collaborator_refs:
        raise ConfigError("a vertical simulation needs at least one --collaborator collab.py[:name]")
    loaded_host = load_object(host_ref, HeteroNNHostScheduler)
    host: HeteroNNHostScheduler = loaded_host.obj
    collaborators: list[HeteroNNCollaboratorScheduler] = [
        load_object(ref, HeteroNNCollaboratorScheduler).obj for ref in collaborator_refs
    ]
    keys = [host.feature_key] + [c.feature_key for c in collaborators]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"feature_key values must be unique across parties, got {keys}")
    out = Path(options.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    task_id = options.task_id or loaded_host.task_id or host.task_id
    data_dir = None if options.data_dir is None else Path(options.data_dir).resolve()
    templates = [PickledTemplate(c) for c in collaborators]
    host_template = PickledTemplate(host)
    settings = VerticalSettings(
        out_dir=out,
        task_id=task_id,
        num_collaborators=len(collaborators),
        rounds=options.rounds,
        data_dir=data_dir,
        seed=options.seed,
        resume=not options.fresh,
        batches_per_exchange=options.batches_per_exchange,
        record={"mode": "simulation", "host": host_ref, "collaborators": collaborator_refs, **options.record()},
    )
    client_settings = CollaboratorSettings(
        task_id=task_id,
        out_dir=str(out),
        data_dir=None if data_dir is None else str(data_dir),
        seed=options.seed,
    )
    summary: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        del context
        family = family_of(host)  # secure HeteroNN or plain
        host_class, strategy_class = family.server_adapter(), family.strategy_class()
        vertical_host = host_class(host_template.new_instance(), settings)  # type: ignore[arg-type]
        strategy = strategy_class(
            num_collaborators=len(collaborators),
            schedule_timeout=float(host.schedule_timeout),
            calculation_timeout=float(host.calculation_timeout),
            batches_per_exchange=options.batches_per_exchange,
            codecs=ExchangeCodecs.parse(getattr(host, "exchange_codecs", None)),
        )
        summary.update(run_vertical_host(grid, vertical_host, strategy))

    collaborators_app = client_app(
        VERTICAL, lambda context: templates[int(context.node_config["partition-id"])], lambda _: client_settings
    )
    logger.info(
        "Simulating a vertical task: host '%s' and %s, outputs in %s",
        host.feature_key,
        ", ".join(f"'{c.feature_key}'" for c in collaborators),
        out,
    )
    cpus = options.cpus_per_client or max(1, (os.cpu_count() or 1) // len(collaborators))
    run_ray_simulation(
        server_app, collaborators_app, len(collaborators), cpus,
        gpus_per_client=options.gpus_per_client, ray_address=options.ray_address,
        threads_per_party=party_threads(len(collaborators) + 1),  # the host is a party too
    )
    return summary
