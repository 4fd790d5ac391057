"""FedAvg with AlphaFed's round semantics: Flower's FedAvg, started through ``RoundDriver``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from .aggregation import DEFAULT_MAX_NUM_EXAMPLES, weighted_mean, weights_of
from .driver import AdmitNodes, DriverConfig, FederatedHooks, RoundDriver
from .exchange import DEFAULT_POLL_INTERVAL
from .protocol import ARRAYS, CONFIG, NUM_EXAMPLES


class FedAvgWithClientLimits(FedAvg):
    """Federated averaging between ``min_clients`` and ``max_clients`` nodes per round.

    The hooks are Flower's ``FedAvg`` (the mean is taken in float64 and keeps each array's
    dtype); ``start`` runs them through ``RoundDriver``, which adds AlphaFed's semantics:
    seeded sampling within ``schedule_timeout``, ``calculation_timeout``, reply checks,
    bounded retries from the unchanged global state, early stop. It is a drop-in for a
    plain Flower ServerApp (``strategy.start(grid=grid, initial_arrays=..., num_rounds=...)``).

    Parameters
    ----------
    min_clients : int (default: 1)
        Fewest nodes per round and fewest valid results that make a round.
    max_clients : int | None (default: None)
        Most nodes per round; ``None`` uses every available node.
    schedule_timeout : float (default: 30)
        Seconds to wait for ``min_clients`` nodes to connect.
    calculation_timeout : float (default: 300)
        Seconds to wait for the replies of one round.
    weighted : bool (default: True)
        Weight each update by its ``num-examples`` (``False``: unweighted mean, as AlphaFed).
    max_num_examples : float (default: DEFAULT_MAX_NUM_EXAMPLES)
        Largest sample count one reply may claim; replies claiming more are rejected.
    max_round_retries : int (default: 3)
        Retries of a round that got too few valid results.
    poll_interval : float (default: 0.005)
        Seconds between pulls while waiting for replies.
    seed : int | None (default: None)
        Seed of the node sampling.
    weighted_by_key : str (default: "num-examples")
        MetricRecord key holding each reply's sample count.
    arrayrecord_key : str (default: "arrays")
        Key of the ArrayRecord in messages.
    configrecord_key : str (default: "config")
        Key of the ConfigRecord in messages.
    """

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        min_clients: int = 1,
        max_clients: int | None = None,
        schedule_timeout: float = 30.0,
        calculation_timeout: float = 300.0,
        weighted: bool = True,
        max_num_examples: float = DEFAULT_MAX_NUM_EXAMPLES,
        max_round_retries: int = 3,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        seed: int | None = None,
        weighted_by_key: str = NUM_EXAMPLES,
        arrayrecord_key: str = ARRAYS,
        configrecord_key: str = CONFIG,
    ) -> None:
        super().__init__(
            min_train_nodes=1,
            min_evaluate_nodes=1,
            min_available_nodes=1,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
        )
        self.driver_config = DriverConfig(
            min_clients=min_clients,
            max_clients=max_clients,
            schedule_timeout=schedule_timeout,
            calculation_timeout=calculation_timeout,
            weighted=weighted,
            max_num_examples=max_num_examples,
            max_round_retries=max_round_retries,
            poll_interval=poll_interval,
            seed=seed,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
        )

    def admit_nodes(self, grid: Grid, nodes: list[int]) -> None:
        """Check sampled nodes before they train (nothing to check for FedAvg)."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Weighted mean (float64, dtypes kept) of the replies' arrays and metrics."""
        valid, _ = self._check_and_log_replies(list(replies), is_train=True)
        if not valid:
            return None, None
        contents = [msg.content for msg in valid]
        updates = [c.array_records[self.arrayrecord_key] for c in contents]
        arrays = weighted_mean(updates[0], updates, weights_of(contents, self.weighted_by_key))
        return arrays, self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    # pylint: disable=too-many-arguments
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float | None = None,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        *,
        hooks: FederatedHooks | None = None,
        first_round: int = 1,
    ) -> Result:
        """Run rounds ``first_round..num_rounds`` through ``RoundDriver``.

        Parameters are those of Flower's ``Strategy.start`` (``timeout``, if given,
        replaces ``calculation_timeout``), plus ``hooks`` (application callbacks: tests,
        checkpoints, early stop, server-side training) and ``first_round`` (after a resume).
        """
        config = self.driver_config
        if timeout is not None:
            config = replace(config, calculation_timeout=float(timeout))
        driver = RoundDriver(self, config, admit_nodes=self._admission())
        return driver.run(
            grid,
            initial_arrays,
            num_rounds,
            first_round=first_round,
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=evaluate_fn,
            hooks=hooks,
        )

    def _admission(self) -> AdmitNodes | None:
        overridden = type(self).admit_nodes is not FedAvgWithClientLimits.admit_nodes
        return self.admit_nodes if overridden else None
