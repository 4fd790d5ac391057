"""Vertical (HeteroNN split-learning) simulation: the host in the ServerApp, one virtual
node per collaborator script."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from alphafed_flwr.adapters.templates import PickledTemplate
from alphafed_flwr.adapters.vertical_host import run_host
from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.api.hetero_nn import HeteroNNCollaboratorScheduler, HeteroNNHostScheduler
from alphafed_flwr.api.log import logger
from alphafed_flwr.families import VERTICAL, client_app
from alphafed_flwr.loader import load_object
from alphafed_flwr.settings import RunSettings

from .engine import party_threads, run_ray_simulation


def simulate_vertical(host_ref: str | None, collaborator_refs: list[str], settings: RunSettings) -> dict[str, Any]:
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
    settings = dataclasses.replace(
        settings.resolved(),
        kind=VERTICAL,
        num_collaborators=len(collaborators),
        task_id=settings.task_id or loaded_host.task_id or host.task_id,
    )
    settings.out.mkdir(parents=True, exist_ok=True)
    templates = [PickledTemplate(c) for c in collaborators]
    host_template = PickledTemplate(host)
    host_settings = settings.vertical_settings(mode="simulation", host=host_ref, collaborators=collaborator_refs)
    # a private Ray instance runs every actor on this machine: they share the live snapshots
    one_machine = settings.ray_address is None
    client_settings = dataclasses.replace(
        settings.collaborator_settings(), live_state=one_machine, folder_persists=one_machine
    )
    summary: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        del context
        summary.update(run_host(grid, host_template.new_instance(), host_settings))  # type: ignore[arg-type]

    collaborators_app = client_app(
        VERTICAL, lambda context: templates[int(context.node_config["partition-id"])], lambda _: client_settings
    )
    logger.info(
        "Simulating a vertical task: host '%s' and %s, outputs in %s",
        host.feature_key,
        ", ".join(f"'{c.feature_key}'" for c in collaborators),
        settings.out,
    )
    cpus = settings.cpus_per_client or max(1, (os.cpu_count() or 1) // len(collaborators))
    run_ray_simulation(
        server_app, collaborators_app, len(collaborators), cpus,
        gpus_per_client=settings.gpus_per_client, ray_address=settings.ray_address,
        threads_per_party=party_threads(len(collaborators) + 1),  # the host is a party too
    )
    return summary
