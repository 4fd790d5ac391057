"""FedAvg with client limits, reply checks, bounded retries and early stop."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.supercore import log

from .aggregation import update_problem, weighted_mean
from .errors import RoundFailed
from .exchange import DEFAULT_POLL_INTERVAL, ExchangeResult, exchange, push, pull, wait_for_nodes

SERVER_NODE = 0  # key of the server's own result when it trains as a participant


@dataclass(frozen=True)
class RoundOutcome:
    """What the adapter decides after a round's aggregation.

    Parameters
    ----------
    stop : bool
        End the run after this round.
    evaluate_clients : bool
        Send the new global arrays to clients for federated evaluation.
    """

    stop: bool = False
    evaluate_clients: bool = False


class FederatedHooks(Protocol):
    """Narrow callbacks through which a strategy reaches the application."""

    def on_round_end(
        self, server_round: int, arrays: ArrayRecord, train_metrics: MetricRecord | None
    ) -> RoundOutcome:
        """Called after each successful aggregation (test, checkpoint, stop decision)."""

    def on_client_evaluation(self, server_round: int, replies: dict[int, RecordDict]) -> None:
        """Called with each node's evaluation reply (its MetricRecord and any other record)."""

    def local_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord
    ) -> RecordDict | None:
        """Train on the server's own data as one more participant (``None``: do not)."""


class FedAvgWithClientLimits(FedAvg):
    """Federated averaging between ``min_clients`` and ``max_clients`` nodes per round.

    Flower's ``Strategy.start`` is a fixed loop without retries or early stop and its
    ``sample_nodes`` waits without a timeout, so ``start`` is overridden:

    - each round waits up to ``schedule_timeout`` for ``min_clients`` nodes, then samples
      between ``min_clients`` and ``max_clients`` of them;
    - replies are pulled with short polls until ``calculation_timeout``; later replies are
      dropped (their messages carry that TTL);
    - replies whose arrays differ from the global state in keys, shapes or dtypes, or that
      hold NaN/inf, are rejected and logged, never aggregated;
    - with fewer than ``min_clients`` valid results, the round is retried from the
      unchanged previous global arrays, at most ``max_round_retries`` times, then the
      run fails with ``RoundFailed``;
    - ``hooks.on_round_end`` may stop the run early and ask for a federated evaluation.

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
        max_round_retries: int = 3,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        seed: int | None = None,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
    ) -> None:
        if min_clients < 1:
            raise ValueError(f"min_clients must be >= 1, got {min_clients}")
        if max_clients is not None and max_clients < min_clients:
            raise ValueError(f"min_clients ({min_clients}) > max_clients ({max_clients})")
        super().__init__(
            min_train_nodes=min_clients,
            min_evaluate_nodes=min_clients,
            min_available_nodes=min_clients,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
        )
        self.min_clients = min_clients
        self.max_clients = max_clients
        self.schedule_timeout = schedule_timeout
        self.calculation_timeout = calculation_timeout
        self.weighted = weighted
        self.max_round_retries = max_round_retries
        self.poll_interval = poll_interval
        self._rng = random.Random(seed)
        self._reference: ArrayRecord | None = None

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(
            INFO,
            "\t├──> Clients per round: %d..%s | schedule_timeout %gs | calculation_timeout %gs",
            self.min_clients,
            self.max_clients if self.max_clients is not None else "all",
            self.schedule_timeout,
            self.calculation_timeout,
        )
        log(
            INFO,
            "\t└──> Mean: %s | retries per round: %d",
            f"weighted by '{self.weighted_by_key}'" if self.weighted else "unweighted",
            self.max_round_retries,
        )

    # ----- sampling and messages -------------------------------------------------------
    def sample(self, grid: Grid) -> list[int]:
        """Wait for ``min_clients`` nodes, then sample up to ``max_clients`` of them."""
        nodes = wait_for_nodes(grid, self.min_clients, self.schedule_timeout)
        count = len(nodes) if self.max_clients is None else min(self.max_clients, len(nodes))
        return sorted(self._rng.sample(nodes, count))

    def _messages(
        self, node_ids: Iterable[int], record: RecordDict, message_type: str, server_round: int
    ) -> list[Message]:
        return [
            Message(
                content=record,
                dst_node_id=node,
                message_type=message_type,
                group_id=str(server_round),
                ttl=self.calculation_timeout + self.schedule_timeout,
            )
            for node in node_ids
        ]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes and build one TRAIN message per node."""
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        nodes = self.sample(grid)
        log(INFO, "configure_train: %d clients sampled", len(nodes))
        return self._messages(nodes, record, MessageType.TRAIN, server_round)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes and build one EVALUATE message per node."""
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._messages(self.sample(grid), record, MessageType.EVALUATE, server_round)

    # ----- checking and aggregating replies --------------------------------------------
    def valid_train_replies(self, replies: Iterable[Message]) -> dict[int, RecordDict]:
        """The replies that can be averaged, by node; the others are logged and dropped."""
        reference = self._reference
        valid: dict[int, RecordDict] = {}
        for msg in replies:
            node = msg.metadata.src_node_id
            reason = self._reply_problem(msg, reference)
            if reason:
                log(WARNING, "Rejected the update of node %s: %s", node, reason)
                continue
            valid[node] = msg.content
        return valid

    def _reply_problem(self, msg: Message, reference: ArrayRecord | None) -> str | None:
        if msg.has_error():
            return f"the client failed: {msg.error.reason}"
        content = msg.content
        arrays = content.array_records.get(self.arrayrecord_key)
        if arrays is None:
            return f"no ArrayRecord '{self.arrayrecord_key}' in the reply"
        metrics = next(iter(content.metric_records.values()), None)
        weight = None if metrics is None else metrics.get(self.weighted_by_key)
        if self.weighted and (not isinstance(weight, (int, float)) or weight <= 0):
            return f"'{self.weighted_by_key}' must be a positive number, got {weight!r}"
        if reference is not None:
            return update_problem(reference, arrays)
        return None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average the valid replies (weighted or not) and their numeric metrics."""
        valid = self.valid_train_replies(replies)
        return self._aggregate(list(valid.values()))

    def _aggregate(
        self, contents: list[RecordDict]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if not contents:
            return None, None
        reference = self._reference or contents[0].array_records[self.arrayrecord_key]
        weights = [self._weight(c) for c in contents]
        updates = [c.array_records[self.arrayrecord_key] for c in contents]
        arrays = weighted_mean(reference, updates, weights if self.weighted else [1.0] * len(updates))
        metrics = mean_metrics(contents, weights, self.weighted_by_key) or MetricRecord()
        metrics["num-results"] = len(contents)
        return arrays, metrics

    def _weight(self, content: RecordDict) -> float:
        metrics = next(iter(content.metric_records.values()), MetricRecord())
        return float(metrics.get(self.weighted_by_key, 1.0))  # type: ignore[arg-type]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Weighted mean of the numeric evaluation metrics."""
        return self.aggregate_evaluate_contents([m.content for m in replies if not m.has_error()])

    def aggregate_evaluate_contents(self, contents: list[RecordDict]) -> MetricRecord | None:
        """Weighted mean of the numeric metrics of evaluation replies."""
        if not contents:
            return None
        return mean_metrics(contents, [self._weight(c) for c in contents], self.weighted_by_key)

    # ----- the loop ----------------------------------------------------------------------
    # pylint: disable=too-many-arguments,too-many-locals
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
        """Run rounds ``first_round..num_rounds`` (see the class docstring).

        Parameters
        ----------
        grid : Grid
            The Grid used to reach the nodes.
        initial_arrays : ArrayRecord
            Global arrays to start from (a resumed run passes its checkpoint).
        num_rounds : int (default: 3)
            Last round to run.
        timeout : float | None (default: None)
            Reply timeout per round; ``None`` uses ``calculation_timeout``.
        train_config, evaluate_config : ConfigRecord | None
            Configuration sent with TRAIN / EVALUATE messages.
        evaluate_fn : Callable | None
            Flower-style central evaluation, called before the first round and after each.
        hooks : FederatedHooks | None
            Application callbacks; without them every round ends with a federated
            evaluation and the run never stops early (Flower's behaviour).
        first_round : int (default: 1)
            Round to start with (after a resume).

        Returns
        -------
        Result
            Final arrays and the metrics of every round.
        """
        if timeout is not None:
            self.calculation_timeout = timeout
        log(INFO, "Starting %s strategy:", type(self).__name__)
        self.summary()
        result = Result()
        result.arrays = initial_arrays
        arrays = initial_arrays
        train_config = train_config or ConfigRecord()
        evaluate_config = evaluate_config or ConfigRecord()
        t_start = time.monotonic()
        if evaluate_fn is not None:
            res = evaluate_fn(first_round - 1, arrays)
            if res is not None:
                result.evaluate_metrics_serverapp[first_round - 1] = res
        self.prepare(grid)
        for server_round in range(first_round, num_rounds + 1):
            log(INFO, "")
            log(INFO, "[ROUND %s/%s]", server_round, num_rounds)
            arrays, train_metrics = self.run_train_round(
                grid, server_round, arrays, train_config, hooks
            )
            result.arrays = arrays
            if train_metrics is not None:
                result.train_metrics_clientapp[server_round] = train_metrics
            outcome = (
                hooks.on_round_end(server_round, arrays, train_metrics)
                if hooks is not None
                else RoundOutcome(evaluate_clients=True)
            )
            if outcome.evaluate_clients:
                replies = self.run_evaluate_round(grid, server_round, arrays, evaluate_config)
                if hooks is not None:
                    hooks.on_client_evaluation(server_round, replies)
                aggregated = self.aggregate_evaluate_contents(list(replies.values()))
                if aggregated is not None:
                    result.evaluate_metrics_clientapp[server_round] = aggregated
            if evaluate_fn is not None:
                res = evaluate_fn(server_round, arrays)
                if res is not None:
                    result.evaluate_metrics_serverapp[server_round] = res
            if outcome.stop:
                log(INFO, "The task is finished after round %d", server_round)
                break
        log(INFO, "Strategy execution finished in %.2fs", time.monotonic() - t_start)
        return result

    def prepare(self, grid: Grid) -> None:
        """Hook run once before the first round (FedSGD checks its nodes here)."""

    def run_train_round(
        self,
        grid: Grid,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        hooks: FederatedHooks | None,
    ) -> tuple[ArrayRecord, MetricRecord | None]:
        """One training round, retried from ``arrays`` while it gets too few results."""
        self._reference = arrays
        for attempt in range(self.max_round_retries + 1):
            messages = list(self.configure_train(server_round, arrays, ConfigRecord(dict(config)), grid))
            pending = push(grid, messages)
            own = None
            if hooks is not None:
                own = hooks.local_train(server_round, arrays, ConfigRecord(dict(config)))
            res = pull(grid, pending, self.calculation_timeout, self.poll_interval)
            valid = self.valid_train_replies(res.replies.values())
            self._log_round(server_round, len(messages), res, len(valid))
            if len(valid) >= self.min_clients:
                contents = list(valid.values())
                if own is not None:
                    problem = update_problem(arrays, own.array_records[self.arrayrecord_key])
                    if problem:
                        log(WARNING, "Rejected the server's own update: %s", problem)
                    else:
                        contents.append(own)
                agg_arrays, agg_metrics = self._aggregate(contents)
                assert agg_arrays is not None
                return agg_arrays, agg_metrics
            if attempt < self.max_round_retries:
                log(
                    WARNING,
                    "Round %d got %d valid results, %d needed: retrying from the previous "
                    "global state (retry %d/%d)",
                    server_round,
                    len(valid),
                    self.min_clients,
                    attempt + 1,
                    self.max_round_retries,
                )
        raise RoundFailed(
            f"round {server_round} got fewer than {self.min_clients} valid results "
            f"(min_clients) in {self.max_round_retries + 1} attempts: check the clients' "
            "logs, lower min_clients or raise calculation_timeout"
        )

    def _log_round(
        self, server_round: int, sent: int, res: ExchangeResult, valid: int
    ) -> None:
        log(
            INFO,
            "aggregate_train: round %d: %d/%d results in %.2fs, %d valid%s",
            server_round,
            len(res.replies),
            sent,
            res.seconds,
            valid,
            f"; no answer within {self.calculation_timeout:g}s from nodes {res.missing}"
            if res.missing
            else "",
        )

    def run_evaluate_round(
        self, grid: Grid, server_round: int, arrays: ArrayRecord, config: ConfigRecord
    ) -> dict[int, RecordDict]:
        """Federated evaluation; returns each answering node's reply content."""
        messages = self.configure_evaluate(server_round, arrays, ConfigRecord(dict(config)), grid)
        res = exchange(grid, messages, self.calculation_timeout, self.poll_interval)
        contents: dict[int, RecordDict] = {}
        for node, msg in res.replies.items():
            if msg.has_error():
                log(WARNING, "Evaluation failed on node %s: %s", node, msg.error.reason)
            elif msg.content.metric_records:
                contents[node] = msg.content
        if res.missing:
            log(
                WARNING,
                "No evaluation result within %gs from nodes %s",
                self.calculation_timeout,
                res.missing,
            )
        return contents


def mean_metrics(
    contents: list[RecordDict], weights: list[float], weight_key: str
) -> MetricRecord | None:
    """Weighted mean of the numeric metrics that every content carries."""
    records = [next(iter(c.metric_records.values()), None) for c in contents]
    records = [r for r in records if r is not None]
    if not records or len(records) != len(weights):
        return None
    total = sum(weights) or 1.0
    common = set.intersection(*(set(r.keys()) for r in records)) - {weight_key}
    out = MetricRecord()
    for key in sorted(common):
        values = [r[key] for r in records]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[key] = float(sum(w * v for w, v in zip(weights, values, strict=True)) / total)  # type: ignore[operator]
    out[weight_key] = int(sum(weights))
    return out
