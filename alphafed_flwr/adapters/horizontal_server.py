"""ServerApp side of FedAvg/FedSGD: the scheduler's model, tests, checkpoints and outputs.

``HorizontalServer`` implements the strategy's ``FederatedHooks``; the strategy never sees
the scheduler.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp import Grid

from alphafed_flwr import compat
from alphafed_flwr.api.env import RunEnvironment, set_environment
from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.api.fed_avg import FedAvgScheduler
from alphafed_flwr.api.log import logger
from alphafed_flwr.api.metrics import append_csv_row, csv_file
from alphafed_flwr.api.scheduler import TaskComplete, call_user
from alphafed_flwr.families import family_of, load
from alphafed_flwr.strategies import (
    DriverConfig,
    FullBatchCheck,
    RoundDriver,
    RoundOutcome,
    StrategyConfigError,
)
from alphafed_flwr.strategies.aggregation import DEFAULT_MAX_NUM_EXAMPLES
from alphafed_flwr.strategies.catalog import build_strategy
from alphafed_flwr.strategies.protocol import ARRAYS, METRICS, NUM_EXAMPLES, PARTY

from .lifecycle import failures_recorded, finish_summary, resumed_summary
from .outputs import Checkpoint, RunSummary, save_state_dict
from .private import PrivacyReport, StrategySetup, refuse_target_epsilon
from .records import arrays_to_numpy, arrays_to_state, numpy_to_arrays, state_to_arrays


@dataclass(frozen=True)
class ServerSettings:
    """Server-side run settings.

    Parameters
    ----------
    out_dir : Path
        Output folder (weights, TensorBoard, metrics, checkpoint, summary.json).
    task_id : str
        The task id.
    rounds : int | None
        Overrides the scheduler's ``max_rounds``.
    data_dir : Path | None
        The server's data folder (its test data; its training data with
        ``involve_aggregator``).
    seed : int | None
        Seed of the initial model and of client sampling.
    weighted : bool
        Mean weighted by sample count (``False``: unweighted, as AlphaFed).
    client_eval : str
        When clients also test the global model on their own data: ``"last"`` (the last
        round), ``"test-rounds"`` (every round the server tests) or ``"off"``.
    resume : bool
        Continue from ``<out>/checkpoint`` if a checkpoint is there.
    max_round_retries : int
        Retries of a round with too few valid results.
    strategy : str
        ``--strategy`` name (``strategies.catalog``); ``fedavg`` by default.
    strategy_args : dict[str, Any]
        The strategy's parameters (``--strategy-arg``).
    max_num_examples : float
        Largest sample count one reply may claim (``--max-num-examples``).
    target_epsilon : float | None
        DPFedAvgScheduler only: end the run before a round that would spend more.
    record : dict[str, Any]
        Extra configuration recorded in ``summary.json``.
    """

    out_dir: Path
    task_id: str = "local-task"
    rounds: int | None = None
    data_dir: Path | None = None
    seed: int | None = None
    weighted: bool = True
    client_eval: str = "last"
    resume: bool = True
    max_round_retries: int = 3
    strategy: str = "fedavg"
    strategy_args: dict[str, Any] = field(default_factory=dict)
    max_num_examples: float = DEFAULT_MAX_NUM_EXAMPLES
    target_epsilon: float | None = None
    record: dict[str, Any] = field(default_factory=dict)


#: Prefix of the strategy's server-side state (FedAdam's m_t, ...) in the checkpoint.
STATE_PREFIX = "strategy:"


def is_test_round(server_round: int, log_rounds: int, max_rounds: int) -> bool:
    """AlphaFed's schedule: round 1, every ``log_rounds`` rounds, and the last round."""
    return (
        server_round == 1
        or (log_rounds > 0 and server_round % log_rounds == 0)
        or server_round == max_rounds
    )


class HorizontalServer:
    """Runs a FedAvg/FedSGD scheduler's server side: any catalog strategy under ``RoundDriver``.

    Parameters
    ----------
    scheduler : FedAvgScheduler
        The server's scheduler (builds the initial model, tests the global model).
    settings : ServerSettings
        Run settings.
    trainer : FedAvgScheduler | None
        A second instance that trains on the server's data (``involve_aggregator``).
    """

    def __init__(
        self,
        scheduler: FedAvgScheduler,
        settings: ServerSettings,
        trainer: FedAvgScheduler | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.settings = settings
        self.out = Path(settings.out_dir)
        self.max_rounds = settings.rounds if settings.rounds else max(scheduler.max_rounds, 1)
        scheduler.max_rounds = self.max_rounds
        self.env = RunEnvironment(
            role="server",
            party="server",
            out_dir=self.out,
            data_dir=settings.data_dir,
            task_id=settings.task_id,
        )
        scheduler.bind(self.env)
        self.trainer = trainer if scheduler.involve_aggregator else None
        if self.trainer is not None:
            self.trainer.max_rounds = self.max_rounds
            self.trainer.bind(
                RunEnvironment("server", "server-trainer", None, settings.data_dir, settings.task_id)
            )
        self.checkpoint = Checkpoint(self.out / "checkpoint")
        self.summary: RunSummary | None = None
        self.driver = self.build_driver()
        self.privacy = PrivacyReport(self.driver.strategy, self.out)
        self._round_start = time.monotonic()
        self._last_test: dict[str, float] = {}

    # ----- set-up ----------------------------------------------------------------------
    def build_driver(self) -> RoundDriver:
        """The strategy of the scheduler's family under a driver with its round semantics.

        The family's ``setup`` (``alphafed_flwr.families``) chooses the strategy: the
        ``--strategy`` catalog's (FedAvg, FedProx, and FedSGD on every node checked for a
        full-batch loader), central DP, or SecAgg+.
        """
        sched, settings = self.scheduler, self.settings
        try:
            config = DriverConfig(
                min_clients=sched.min_clients,
                max_clients=sched.max_clients,
                schedule_timeout=float(sched.schedule_timeout),
                calculation_timeout=float(sched.calculation_timeout),
                weighted=settings.weighted,
                max_num_examples=settings.max_num_examples,
                max_round_retries=settings.max_round_retries,
                seed=settings.seed,
            )
            setup = load(family_of(sched).setup)(sched, settings, config)
            return RoundDriver(setup.strategy, setup.config, admit_nodes=setup.admit)
        except StrategyConfigError as exc:
            raise ConfigError(str(exc)) from exc

    def initial_state(self) -> tuple[ArrayRecord, int]:
        """Global arrays to start from and the first round (after a checkpoint: resume)."""
        loaded = self.checkpoint.load() if self.settings.resume else None
        config = {
            **self.settings.record,
            "max_rounds": self.max_rounds,
            "strategy": self.settings.strategy,
            "strategy_args": dict(self.settings.strategy_args),
        }
        if loaded is not None:
            arrays, meta = loaded
            done = int(meta["round"])
            arrays = self._restore_strategy_state(arrays, meta)
            self.summary = resumed_summary(self.out, config, meta, done)
            logger.info("Resuming from the checkpoint of round %d in %s", done, self.checkpoint.path)
            record = numpy_to_arrays(arrays)
            call_user(self.scheduler, "load_state_dict", arrays_to_state(record))
            return record, done + 1
        self.summary = RunSummary(self.out, config)
        if self.settings.seed is not None:
            torch.manual_seed(self.settings.seed)
        return state_to_arrays(call_user(self.scheduler, "state_dict"), "state_dict()"), 1

    # ----- FederatedHooks ------------------------------------------------------------------
    def on_round_end(
        self, server_round: int, arrays: ArrayRecord, train_metrics: MetricRecord | None
    ) -> RoundOutcome:
        """Test on schedule, decide whether the task is finished, checkpoint."""
        sched = self.scheduler
        sched.set_round(server_round)
        call_user(sched, "load_state_dict", arrays_to_state(arrays))
        tested = False
        test: dict[str, float] = {}
        if is_test_round(server_round, sched.log_rounds, self.max_rounds):
            test, tested = self._test(), True
        finished = server_round >= self.max_rounds or self._finished()
        if finished and not tested:
            test, tested = self._test(), True
        seconds = time.monotonic() - self._round_start
        train = {k: float(v) for k, v in (train_metrics or {}).items()}  # type: ignore[arg-type]
        entry = {"round": server_round, "seconds": round(seconds, 3), "train": train, "test": test}
        assert self.summary is not None
        privacy = self.privacy.round_end(server_round, sched, self.summary.data)
        self.summary.add_round(entry, write=False)  # summary.json never runs ahead of the checkpoint
        self.checkpoint.save(
            {**arrays_to_numpy(arrays), **self._strategy_state()},
            {
                "round": server_round,
                "finished": finished,
                "strategy": self.settings.strategy,
                "summary": self.summary.data,
                **self.privacy.state(),
            },
        )
        self.summary.write()
        sched.flush_outputs()
        clients = int(train.get("num-results", 0))
        logger.info(
            "Round %d/%d: %d client%s, %.1fs%s",
            server_round,
            self.max_rounds,
            clients,
            "" if clients == 1 else "s",
            seconds,
            (f", test {_fmt(test)}" if test else "") + privacy,
        )
        self._round_start = time.monotonic()
        mode = self.settings.client_eval
        evaluate = (mode == "test-rounds" and tested) or (mode == "last" and finished)
        return RoundOutcome(stop=finished, evaluate_clients=evaluate)

    def on_client_evaluation(self, server_round: int, metrics: dict[int, RecordDict]) -> None:
        """Write each client's test results to ``<out>/metrics/clients/<party>.csv``."""
        for node, content in sorted(metrics.items()):
            record = next(iter(content.metric_records.values()), MetricRecord())
            party_record = content.config_records.get(PARTY, ConfigRecord())
            party = str(party_record.get(PARTY, f"node-{node}"))
            row = {"round": server_round, **{k: v for k, v in record.items()}}
            path = csv_file(self.out / "metrics" / "clients", party)
            append_csv_row(path, list(row), row)
        if metrics:
            logger.info("Round %d: client evaluation from %d clients written to %s",
                        server_round, len(metrics), self.out / "metrics" / "clients")

    def local_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord
    ) -> RecordDict | None:
        """With ``involve_aggregator``: train on the server's data as one more participant."""
        trainer = self.trainer
        if trainer is None:
            return None
        trainer.set_round(server_round)
        call_user(trainer, "load_state_dict", arrays_to_state(arrays))
        num_examples = trainer.run_local_round()
        return RecordDict(
            {
                ARRAYS: state_to_arrays(call_user(trainer, "state_dict"), "state_dict()"),
                METRICS: MetricRecord({NUM_EXAMPLES: num_examples}),
            }
        )

    # ----- helpers -----------------------------------------------------------------------
    def _strategy_state(self) -> dict[str, Any]:
        """The strategy's server-side state (FedAdam's m_t and v_t, FedAvgM's momentum)."""
        state = compat.get_strategy_state(self.driver.strategy)
        return {
            f"{STATE_PREFIX}{attribute}/{key}": value
            for attribute, arrays in state.items()
            for key, value in arrays.items()
        }

    def _restore_strategy_state(self, arrays: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        """Load the checkpoint's strategy state into the strategy; return the model arrays."""
        saved = str(meta.get("strategy", "fedavg"))
        if saved != self.settings.strategy:
            raise ConfigError(
                f"the checkpoint in {self.checkpoint.path} was made with --strategy {saved}, this "
                f"run uses {self.settings.strategy}: use the same strategy, or --fresh to start over"
            )
        self.privacy.restore(meta)
        state: dict[str, dict[str, Any]] = {}
        model = {}
        for key, value in arrays.items():
            if key.startswith(STATE_PREFIX):
                attribute, _, name = key[len(STATE_PREFIX):].partition("/")
                state.setdefault(attribute, {})[name] = value
            else:
                model[key] = value
        if state:
            compat.set_strategy_state(self.driver.strategy, state)
            logger.info("Restored %s's server state (%s)", type(self.driver.strategy).__name__,
                        ", ".join(sorted(state)))
        return model

    def _test(self) -> dict[str, float]:
        values = self.scheduler.collect_test()
        self._last_test = values
        return values

    def _finished(self) -> bool:
        try:
            return bool(call_user(self.scheduler, "is_task_finished"))
        except TaskComplete:
            return True

    def run(self, grid: Grid) -> dict[str, Any]:
        """Run the task to its end; return ``summary.json``'s content."""
        set_environment(self.env)
        sched = self.scheduler
        call_user(sched, "validate_context")
        initial, first_round = self.initial_state()
        assert self.summary is not None
        if first_round > self.max_rounds:
            logger.info("The checkpoint in %s is already at round %d of %d: nothing to run",
                        self.checkpoint.path.parent, first_round - 1, self.max_rounds)
            self._finish(initial, "completed")
            return self.summary.data
        start, summary = time.monotonic(), self.summary
        with failures_recorded(lambda reason: finish_summary(summary, "failed", time.monotonic() - start, reason)):
            result = self.driver.run(
                grid,
                initial,
                self.max_rounds,
                first_round=first_round,
                train_config=ConfigRecord({"seed": self.settings.seed or 0}),
                hooks=self,
            )
        if self.driver.stop_reason:
            self.summary.data["stopped"] = self.driver.stop_reason
        self._finish(result.arrays, "completed", seconds=time.monotonic() - start)
        return self.summary.data

    def _finish(self, arrays: ArrayRecord, status: str, seconds: float = 0.0) -> None:
        assert self.summary is not None
        save_state_dict(self.out / "model.pt", arrays_to_state(arrays))
        finish_summary(
            self.summary,
            status,
            seconds,
            outputs={
                "model": str(self.out / "model.pt"),
                "metrics": str(self.out / "metrics"),
                "tensorboard": str(self.out / "tensorboard"),
                "checkpoint": str(self.checkpoint.path),
            },
        )
        self.scheduler.close_outputs()
        logger.info("Outputs written to %s (summary.json, model.pt, metrics/, tensorboard/)", self.out)


def catalog_setup(scheduler: FedAvgScheduler, settings: ServerSettings, config: DriverConfig) -> StrategySetup:
    """FedAvg/FedProx: the ``--strategy`` catalog's strategy (``fedavg`` by default).

    Parameters
    ----------
    scheduler : FedAvgScheduler
        The task.
    settings : ServerSettings
        The run's settings (``strategy``, ``strategy_args``, ``target_epsilon``).
    config : DriverConfig
        The driver settings from the scheduler.
    """
    refuse_target_epsilon(settings.target_epsilon)
    strategy = build_strategy(settings.strategy, settings.strategy_args)
    warn_if_mu_unused(scheduler, settings.strategy)
    return StrategySetup(strategy, config)


def fedsgd_setup(scheduler: FedAvgScheduler, settings: ServerSettings, config: DriverConfig) -> StrategySetup:
    """FedSGD: the catalog's strategy on every available node, each checked for a full-batch
    loader before its first round (``FullBatchCheck``); parameters as for :func:`catalog_setup`."""
    setup = catalog_setup(scheduler, settings, config)
    return StrategySetup(setup.strategy, replace(config, max_clients=None), FullBatchCheck(float(scheduler.schedule_timeout)))


def warn_if_mu_unused(scheduler: FedAvgScheduler, strategy: str) -> None:
    """Warn when ``--strategy fedprox`` meets a task whose clients ignore ``proximal-mu``."""
    if strategy == "fedprox" and type(scheduler).apply_round_config is FedAvgScheduler.apply_round_config:
        logger.warning("--strategy fedprox: %s ignores proximal-mu (its apply_round_config is "
                       "FedAvgScheduler's no-op), so this runs FedAvg; write the task as a "
                       "FedProxScheduler", type(scheduler).__name__)


def _fmt(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in values.items())

