"""FedAvg/FedSGD simulation: one scheduler, N virtual clients on Ray."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from alphafed_flwr.adapters.horizontal_client import ClientSettings
from alphafed_flwr.adapters.horizontal_server import ServerSettings
from alphafed_flwr.adapters.templates import PickledTemplate
from alphafed_flwr.api.env import RunEnvironment, set_environment
from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.api.fed_avg import FedAvgScheduler, FedSGDScheduler
from alphafed_flwr.api.log import logger
from alphafed_flwr.families import HORIZONTAL, client_app, family_of
from alphafed_flwr.strategies.aggregation import DEFAULT_MAX_NUM_EXAMPLES
from alphafed_flwr.strategies.catalog import build_strategy
from alphafed_flwr.strategies.driver import required_replies
from alphafed_flwr.strategies.errors import StrategyConfigError

from .engine import run_ray_simulation


@dataclass
class SimulationOptions:
    """Options of a simulation run (the command-line flags).

    Parameters
    ----------
    num_clients : int
        Virtual clients.
    rounds : int | None
        Overrides the scheduler's ``max_rounds``.
    partition : str
        ``iid``, ``dirichlet`` or ``sample``.
    alpha : float
        Dirichlet concentration.
    samples : int
        Samples per client for ``sample``.
    seed : int | None
        Makes partitioning, model initialisation, sampling and local shuffling reproducible.
    out : Path
        Output folder.
    data_dir : Path | None
        Data folder of every party (``get_dataset_dir``); default: the offline MNIST subset.
    reset_optimizer : bool
        Fresh optimizer state on clients every round.
    weighted : bool
        Mean weighted by sample count.
    strategy : str
        The strategy that aggregates (``--strategy``; ``strategies.catalog``).
    strategy_args : dict[str, Any]
        Its parameters (``--strategy-arg``).
    max_num_examples : float
        Largest sample count one client update may claim.
    target_epsilon : float | None
        DPFedAvgScheduler: privacy budget (``--target-epsilon``).
    client_eval : str
        When clients test the global model on their own data: ``last``, ``test-rounds``
        or ``off``.
    fresh : bool
        Ignore a checkpoint in ``out`` instead of resuming from it.
    cpus_per_client : float | None
        Ray CPUs per virtual client (sets how many run in parallel and their torch
        threads); ``None``: 1 for FedAvg/FedSGD clients, which train in parallel, and the
        machine's cores shared out for vertical collaborators, which take turns with the
        host.
    gpus_per_client : float
        Ray GPUs per virtual client (fractions share a GPU); 0: clients see no GPU.
    ray_address : str | None
        Existing Ray cluster to join; ``None``: a private local Ray instance.
    task_id : str | None
        Task id (default: the scheduler's name or ``local-task``).
    batches_per_exchange : int
        Vertical only: batches per feature/gradient exchange.
    """

    num_clients: int = 3
    rounds: int | None = None
    partition: str = "iid"
    alpha: float = 0.5
    samples: int = 32
    seed: int | None = None
    out: Path = Path("runs/simulation")
    data_dir: Path | None = None
    reset_optimizer: bool = False
    weighted: bool = True
    strategy: str = "fedavg"
    strategy_args: dict[str, Any] = field(default_factory=dict)
    max_num_examples: float = DEFAULT_MAX_NUM_EXAMPLES
    target_epsilon: float | None = None
    client_eval: str = "last"
    fresh: bool = False
    cpus_per_client: float | None = None
    gpus_per_client: float = 0.0
    ray_address: str | None = None
    task_id: str | None = None
    batches_per_exchange: int = 1

    def record(self) -> dict[str, Any]:
        """The options as JSON-able values (for summary.json)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self).items()}


def check_fedsgd_loader(scheduler: FedSGDScheduler, data_dir: Path | None, task_id: str) -> None:
    """Refuse a non-full-batch FedSGD loader in the driver, before Ray starts."""
    probe = copy.deepcopy(scheduler)
    env = RunEnvironment("server", "check", None, data_dir, task_id)
    probe.bind(env)
    set_environment(env)
    probe.check_full_batch()


def check_strategy(options: SimulationOptions) -> None:
    """Refuse, before Ray starts, a strategy that cannot run with these clients."""
    try:
        strategy = build_strategy(options.strategy, options.strategy_args)
    except StrategyConfigError as exc:
        raise ConfigError(str(exc)) from exc
    need, why = required_replies(strategy)
    if options.num_clients < need:
        raise ConfigError(f"{why}, but --num-clients is {options.num_clients}: use more clients")


def simulate_horizontal(scheduler: FedAvgScheduler, options: SimulationOptions) -> dict[str, Any]:
    """Run a FedAvg/FedSGD scheduler with ``options.num_clients`` virtual clients.

    Returns the content of ``summary.json``.
    """
    if options.num_clients < scheduler.min_clients:
        raise ConfigError(
            f"--num-clients {options.num_clients} is below the scheduler's min_clients "
            f"({scheduler.min_clients}): every round would fail; use more clients"
        )
    check_strategy(options)
    out = Path(options.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    task_id = options.task_id or scheduler.task_id
    data_dir = None if options.data_dir is None else Path(options.data_dir).resolve()
    if isinstance(scheduler, FedSGDScheduler):
        check_fedsgd_loader(scheduler, data_dir, task_id)
    template = PickledTemplate(scheduler)
    client_settings = ClientSettings(
        task_id=task_id,
        out_dir=str(out),
        data_dir=None if data_dir is None else str(data_dir),
        partition=options.partition,
        alpha=options.alpha,
        samples=options.samples,
        seed=options.seed,
        reset_optimizer=options.reset_optimizer,
    )
    server_settings = ServerSettings(
        out_dir=out,
        task_id=task_id,
        rounds=options.rounds,
        data_dir=data_dir,
        seed=options.seed,
        weighted=options.weighted,
        client_eval=options.client_eval,
        resume=not options.fresh,
        strategy=options.strategy,
        strategy_args=dict(options.strategy_args),
        max_num_examples=options.max_num_examples,
        target_epsilon=options.target_epsilon,
        record={"mode": "simulation", "scheduler": type(scheduler).__name__, **options.record()},
    )
    summary: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        del context
        server = family_of(scheduler).server_adapter()(
            template.new_instance(),  # type: ignore[arg-type]
            server_settings,
            trainer=template.new_instance() if scheduler.involve_aggregator else None,  # type: ignore[arg-type]
        )
        summary.update(server.run(grid))

    clients_app = client_app(HORIZONTAL, lambda _: template, lambda _: client_settings)
    logger.info(
        "Simulating %s with %d virtual clients (%s partition), outputs in %s",
        type(scheduler).__name__,
        options.num_clients,
        options.partition,
        out,
    )
    run_ray_simulation(
        server_app, clients_app, options.num_clients, options.cpus_per_client or 1.0,
        gpus_per_client=options.gpus_per_client, ray_address=options.ray_address,
    )
    return summary
