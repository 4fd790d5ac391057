"""FedAvg-family simulation: one scheduler, N virtual clients on Ray (settings: ``RunSettings``)."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from alphafed_flwr.adapters.templates import PickledTemplate
from alphafed_flwr.api.env import RunEnvironment, set_environment
from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.api.fed_avg import FedAvgScheduler, FedSGDScheduler
from alphafed_flwr.api.log import logger
from alphafed_flwr.families import HORIZONTAL, client_app, family_of, load
from alphafed_flwr.settings import RunSettings
from alphafed_flwr.strategies.catalog import build_strategy
from alphafed_flwr.strategies.driver import required_replies
from alphafed_flwr.strategies.errors import StrategyConfigError

from .engine import run_ray_simulation


def check_fedsgd_loader(scheduler: FedSGDScheduler, settings: RunSettings) -> None:
    """The FedSGD family's pre-flight: refuse a non-full-batch loader in the driver, before Ray starts."""
    probe = copy.deepcopy(scheduler)
    env = RunEnvironment("server", "check", None, settings.data_dir, settings.task_id or scheduler.task_id)
    probe.bind(env)
    set_environment(env)
    probe.check_full_batch()


def check_strategy(settings: RunSettings) -> None:
    """Refuse, before Ray starts, a strategy that cannot run with these clients."""
    try:
        strategy = build_strategy(settings.strategy, settings.strategy_args)
    except StrategyConfigError as exc:
        raise ConfigError(str(exc)) from exc
    need, why = required_replies(strategy)
    if settings.num_clients < need:
        raise ConfigError(f"{why}, but --num-clients is {settings.num_clients}: use more clients")


def simulate_horizontal(scheduler: FedAvgScheduler, settings: RunSettings) -> dict[str, Any]:
    """Run a FedAvg-family scheduler with ``settings.num_clients`` virtual clients.

    Returns the content of ``summary.json``.
    """
    if settings.num_clients < scheduler.min_clients:
        raise ConfigError(
            f"--num-clients {settings.num_clients} is below the scheduler's min_clients "
            f"({scheduler.min_clients}): every round would fail; use more clients"
        )
    check_strategy(settings)
    settings = dataclasses.replace(settings.resolved(), task_id=settings.task_id or scheduler.task_id)
    settings.out.mkdir(parents=True, exist_ok=True)
    family = family_of(scheduler)
    if family.preflight:
        load(family.preflight)(scheduler, settings)
    template = PickledTemplate(scheduler)
    client_settings = settings.client_settings()
    server_settings = settings.server_settings(mode="simulation", scheduler=type(scheduler).__name__)
    summary: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        del context
        server = family.server_adapter()(
            template.new_instance(),  # type: ignore[arg-type]
            server_settings,
            trainer=template.new_instance() if scheduler.involve_aggregator else None,  # type: ignore[arg-type]
        )
        summary.update(server.run(grid))

    clients_app = client_app(HORIZONTAL, lambda _: template, lambda _: client_settings)
    logger.info(
        "Simulating %s with %d virtual clients (%s partition), outputs in %s",
        type(scheduler).__name__,
        settings.num_clients,
        settings.partition,
        settings.out,
    )
    run_ray_simulation(
        server_app, clients_app, settings.num_clients, settings.cpus_per_client or 1.0,
        gpus_per_client=settings.gpus_per_client, ray_address=settings.ray_address,
    )
    return summary
