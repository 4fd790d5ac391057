"""A round driver that runs any Flower Message-API strategy with AlphaFed's semantics.

Flower's ``Strategy.start`` is a fixed loop: no retries, no early stop, and its
``sample_nodes`` waits forever with the unseeded global ``random``. ``RoundDriver`` calls a
strategy's public hooks (``configure_train``, ``aggregate_train``, ``configure_evaluate``,
``aggregate_evaluate``) itself and adds around them:

- ``min_clients``..``max_clients`` nodes per round, waited for at most ``schedule_timeout``
  and sampled with a seeded RNG; the strategy configures a view of the grid
  (``SampledGrid``) that offers exactly those nodes;
- replies pulled until ``calculation_timeout`` (later ones are dropped);
- every reply checked before the strategy sees it (``aggregation.reply_problem``: keys,
  shapes, dtypes, finite values, a finite positive sample count within
  ``max_num_examples``), rejected ones logged; metric records reduced to the finite
  scalars every accepted reply holds, so Flower's consistency checks cannot fail;
- ``aggregate_train`` called only for a round with enough valid replies (FedAdam, FedYogi,
  FedAdagrad and FedAvgM change their server state there); a round that fails is retried
  from the unchanged global arrays and strategy state, at most ``max_round_retries`` times;
- the aggregate cast back to the global arrays' dtypes (``aggregation.cast_like``);
- ``FederatedHooks``: the application tests, checkpoints and stops early after a round,
  asks for a federated evaluation, and may train on the server's data
  (``involve_aggregator``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any, Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Bulyan, MultiKrum, QFedAvg, Result, Strategy
from flwr.supercore import log

from alphafed_flwr import compat

from .aggregation import (
    DEFAULT_MAX_NUM_EXAMPLES,
    cast_like,
    clean_metrics,
    common_metric_keys,
    reply_problem,
    weight_problem,
)
from .errors import RoundFailed, StrategyConfigError, StrategyError
from .exchange import DEFAULT_POLL_INTERVAL, exchange, pull, push, wait_for_nodes
from .protocol import ARRAYS, METRICS, NUM_EXAMPLES

SERVER_NODE = 0  # node id of the server's own update when it trains as a participant

#: Called with the grid and each round's sampled nodes before they get a message; raises
#: to stop the run (FedSGD's full-batch check).
AdmitNodes = Callable[[Grid, list[int]], None]


@dataclass(frozen=True)
class RoundOutcome:
    """What the application decides after a round's aggregation.

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
    """Narrow callbacks through which the driver reaches the application."""

    def on_round_end(
        self, server_round: int, arrays: ArrayRecord, train_metrics: MetricRecord | None
    ) -> RoundOutcome:
        """Called after each accepted aggregation (test, checkpoint, stop decision)."""

    def on_client_evaluation(self, server_round: int, replies: dict[int, RecordDict]) -> None:
        """Called with each node's evaluation reply (its MetricRecord and any other record)."""

    def local_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord
    ) -> RecordDict | None:
        """Train on the server's own data as one more participant (``None``: do not)."""


@dataclass(frozen=True)
class DriverConfig:
    """AlphaFed's round semantics.

    Parameters
    ----------
    min_clients : int (default: 1)
        Fewest nodes per round and fewest valid results that make a round.
    max_clients : int | None (default: None)
        Most nodes per round; ``None`` uses every available node.
    schedule_timeout : float (default: 30)
        Seconds to wait for enough nodes to connect.
    calculation_timeout : float (default: 300)
        Seconds to wait for the replies of one round.
    weighted : bool (default: True)
        ``False`` gives every accepted reply the weight 1 before the strategy aggregates
        (AlphaFed's unweighted mean); the claimed count is still checked.
    max_num_examples : float (default: DEFAULT_MAX_NUM_EXAMPLES)
        Largest sample count one reply may claim; a reply claiming more is rejected.
    max_round_retries : int (default: 3)
        Retries of a round that failed (too few valid results, a refused aggregate).
    poll_interval : float (default: 0.005)
        Seconds between pulls while waiting for replies.
    seed : int | None (default: None)
        Seed of the node sampling.
    weighted_by_key : str (default: "num-examples")
        MetricRecord key holding each reply's sample count.
    arrayrecord_key : str (default: "arrays")
        Key of the ArrayRecord in replies.
    fraction : float (default: 1.0)
        Fraction of the available nodes sampled per round (rounded, at least the minimum
        and at most ``max_clients``): DP-FedAvg's q.
    """

    min_clients: int = 1
    max_clients: int | None = None
    schedule_timeout: float = 30.0
    calculation_timeout: float = 300.0
    weighted: bool = True
    max_num_examples: float = DEFAULT_MAX_NUM_EXAMPLES
    max_round_retries: int = 3
    poll_interval: float = DEFAULT_POLL_INTERVAL
    seed: int | None = None
    weighted_by_key: str = NUM_EXAMPLES
    arrayrecord_key: str = ARRAYS
    fraction: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise StrategyConfigError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.min_clients < 1:
            raise StrategyConfigError(f"min_clients must be >= 1, got {self.min_clients}")
        if self.max_clients is not None and self.max_clients < self.min_clients:
            raise StrategyConfigError(
                f"min_clients ({self.min_clients}) > max_clients ({self.max_clients})"
            )
        if self.max_round_retries < 0:
            raise StrategyConfigError(f"max_round_retries must be >= 0, got {self.max_round_retries}")
        if not self.max_num_examples > 0:
            raise StrategyConfigError(f"max_num_examples must be positive, got {self.max_num_examples}")


def required_replies(strategy: Strategy) -> tuple[int, str]:
    """Fewest replies ``strategy`` can aggregate, and why (empty when no constraint).

    Bulyan needs 4f+3 replies (f = ``num_malicious_nodes``); MultiKrum and Krum keep
    ``num_nodes_to_select`` of them.
    """
    if isinstance(strategy, Bulyan):
        f = int(strategy.num_malicious_nodes)
        return 4 * f + 3, f"Bulyan with num_malicious_nodes={f} needs 4f+3 = {4 * f + 3} replies per round"
    if isinstance(strategy, MultiKrum):
        k = int(strategy.num_nodes_to_select)
        return k, f"{type(strategy).__name__} keeps num_nodes_to_select={k} replies per round"
    return 1, ""


def required_metrics(strategy: Strategy) -> tuple[str, ...]:
    """Metric keys every TRAIN reply must carry for ``strategy`` (QFedAvg: the train loss)."""
    if isinstance(strategy, QFedAvg):
        return (strategy.train_loss_key,)
    return ()


class SampledGrid(Grid):
    """A view of ``grid`` that offers exactly ``nodes`` (what the driver sampled).

    Flower's ``sample_nodes`` then returns these nodes at once (it never sleeps), and a
    strategy cannot address any other node.
    """

    def __init__(self, grid: Grid, nodes: Iterable[int], timeout: float) -> None:
        self._grid = grid
        self._nodes = list(nodes)
        self._timeout = timeout

    def set_run(self, run: Any) -> None:
        """Delegated."""
        self._grid.set_run(run)

    @property
    def run(self) -> Any:
        """Delegated."""
        return self._grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        """Delegated."""
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        """The sampled nodes."""
        return list(self._nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Push, refusing messages to nodes outside the sample."""
        messages = list(messages)
        self.check(messages)
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Delegated."""
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push and pull, never waiting longer than the driver's ``calculation_timeout``."""
        wait = self._timeout if timeout is None else min(timeout, self._timeout)
        return exchange(self, messages, wait).replies.values()

    def check(self, messages: Iterable[Message]) -> None:
        """Raise ``StrategyError`` if a message goes to a node outside the sample."""
        outside = sorted({m.metadata.dst_node_id for m in messages} - set(self._nodes))
        if outside:
            raise StrategyError(f"the strategy addressed nodes {outside} that the driver did not sample")


@dataclass
class _Attempt:
    """One try at a round: the accepted aggregate, or why the try failed."""

    arrays: ArrayRecord | None = None
    metrics: MetricRecord | None = None
    failure: str = ""


class RoundDriver:
    """Runs ``strategy``'s hooks round by round with AlphaFed's semantics (module docstring).

    Parameters
    ----------
    strategy : Strategy
        Any Flower Message-API strategy.
    config : DriverConfig
        Sampling, timeouts, retries and reply checks.
    admit_nodes : AdmitNodes | None (default: None)
        Called with each round's sampled nodes before they get a message.
    """

    def __init__(
        self, strategy: Strategy, config: DriverConfig, admit_nodes: AdmitNodes | None = None
    ) -> None:
        self.strategy = strategy
        self.config = config
        self.admit_nodes = admit_nodes
        self._rng = random.Random(config.seed)
        self.min_replies, self._replies_reason = required_replies(strategy)
        self.required_metrics = required_metrics(strategy)
        self.min_nodes = max(config.min_clients, self.min_replies, _strategy_min_nodes(strategy))
        if config.max_clients is not None and config.max_clients < self.min_nodes:
            raise StrategyConfigError(
                f"max_clients={config.max_clients} is below the {self.min_nodes} nodes per round "
                f"that {type(strategy).__name__} needs"
                f"{' (' + self._replies_reason + ')' if self._replies_reason else ''}: raise max_clients"
            )
        self._weight_key = config.weighted_by_key
        self._arrays_key = str(getattr(strategy, "arrayrecord_key", config.arrayrecord_key))
        #: Why the run ended before its last round without failing (a privacy budget).
        self.stop_reason = ""

    # ----- the loop ----------------------------------------------------------------------
    # pylint: disable=too-many-arguments
    def run(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int,
        *,
        first_round: int = 1,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        hooks: FederatedHooks | None = None,
    ) -> Result:
        """Run rounds ``first_round..num_rounds``; return the final arrays and metrics.

        Parameters
        ----------
        grid : Grid
            The Grid used to reach the nodes.
        initial_arrays : ArrayRecord
            Global arrays to start from (a resumed run passes its checkpoint).
        num_rounds : int
            Last round to run.
        first_round : int (default: 1)
            Round to start with; a resumed run passes the true round (FedAdam's bias
            correction depends on it).
        train_config, evaluate_config : ConfigRecord | None
            Configuration sent with TRAIN / EVALUATE messages.
        evaluate_fn : Callable | None
            Flower-style central evaluation, called before the first round and after each.
        hooks : FederatedHooks | None
            Application callbacks; without them every round ends with a federated
            evaluation and the run never stops early (Flower's behaviour).
        """
        log(INFO, "Starting %s under the AlphaFed round driver:", type(self.strategy).__name__)
        self.summary()
        result = Result()
        result.arrays = arrays = initial_arrays
        train_config = train_config or ConfigRecord()
        evaluate_config = evaluate_config or ConfigRecord()
        start = time.monotonic()
        self._central(evaluate_fn, first_round - 1, arrays, result)
        for server_round in range(first_round, num_rounds + 1):
            log(INFO, "")
            log(INFO, "[ROUND %s/%s]", server_round, num_rounds)
            try:
                arrays, train_metrics = self.train_round(grid, server_round, arrays, train_config, hooks)
            except compat.privacy_pieces().PrivacyBudgetExhausted as exc:  # from DP configure_train
                self.stop_reason = f"privacy budget: round {server_round} not run: {exc}"
                log(WARNING, "Stopping before round %d: %s", server_round, exc)
                break
            result.arrays = arrays
            result.train_metrics_clientapp[server_round] = train_metrics
            outcome = (
                hooks.on_round_end(server_round, arrays, train_metrics)
                if hooks is not None
                else RoundOutcome(evaluate_clients=True)
            )
            if outcome.evaluate_clients:
                self._evaluate(grid, server_round, arrays, evaluate_config, hooks, result)
            self._central(evaluate_fn, server_round, arrays, result)
            if outcome.stop:
                log(INFO, "The task is finished after round %d", server_round)
                break
        log(INFO, "Strategy execution finished in %.2fs", time.monotonic() - start)
        return result

    def summary(self) -> None:
        """Log the driver's settings, then the strategy's own summary."""
        cfg = self.config
        log(
            INFO,
            "\t├──> Clients per round: %d..%s | schedule_timeout %gs | calculation_timeout %gs",
            self.min_nodes,
            cfg.max_clients if cfg.max_clients is not None else "all",
            cfg.schedule_timeout,
            cfg.calculation_timeout,
        )
        log(
            INFO,
            "\t├──> Replies: %s, '%s' <= %g | retries per round: %d",
            "weighted" if cfg.weighted else "unweighted (weight 1 each)",
            cfg.weighted_by_key,
            cfg.max_num_examples,
            cfg.max_round_retries,
        )
        self.strategy.summary()

    def _central(
        self,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None,
        server_round: int,
        arrays: ArrayRecord,
        result: Result,
    ) -> None:
        if evaluate_fn is None:
            return
        res = evaluate_fn(server_round, arrays)
        if res is not None:
            result.evaluate_metrics_serverapp[server_round] = res

    # ----- sampling ------------------------------------------------------------------------
    def sample(self, grid: Grid) -> list[int]:
        """Wait for enough nodes, then sample up to ``max_clients`` of them (seeded)."""
        what = "clients" if not self._replies_reason else f"clients ({self._replies_reason})"
        nodes = sorted(wait_for_nodes(grid, self.min_nodes, self.config.schedule_timeout, what))
        limit = self.config.max_clients
        count = len(nodes) if limit is None else min(limit, len(nodes))
        if self.config.fraction < 1:
            count = min(count, max(self.min_nodes, round(self.config.fraction * len(nodes))))
        return sorted(self._rng.sample(nodes, count))

    def _configure(
        self,
        grid: Grid,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        train: bool,
    ) -> list[Message]:
        nodes = self.sample(grid)
        if train and self.admit_nodes is not None:
            self.admit_nodes(grid, nodes)
        view = SampledGrid(grid, nodes, self.config.calculation_timeout)
        hook = self.strategy.configure_train if train else self.strategy.configure_evaluate
        messages = list(hook(server_round, arrays, ConfigRecord(dict(config)), view))
        view.check(messages)
        for msg in messages:
            msg.metadata.ttl = self.config.calculation_timeout + self.config.schedule_timeout
            msg.metadata.group_id = str(server_round)
        log(INFO, "Round %d: %d of %d sampled nodes configured", server_round, len(messages), len(nodes))
        return messages

    # ----- training ------------------------------------------------------------------------
    def train_round(
        self,
        grid: Grid,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        hooks: FederatedHooks | None,
    ) -> tuple[ArrayRecord, MetricRecord]:
        """One training round, retried from ``arrays`` while it fails."""
        retries = self.config.max_round_retries
        failure = ""
        for attempt in range(retries + 1):
            outcome = self._attempt(grid, server_round, arrays, config, hooks)
            if outcome.arrays is not None and outcome.metrics is not None:
                return outcome.arrays, outcome.metrics
            failure = outcome.failure
            if attempt < retries:
                log(
                    WARNING,
                    "Round %d: %s: retrying from the previous global state (retry %d/%d)",
                    server_round,
                    failure,
                    attempt + 1,
                    retries,
                )
        raise RoundFailed(
            f"round {server_round} failed in {retries + 1} attempts (last: {failure}): check "
            "the clients' logs, lower min_clients or raise calculation_timeout"
        )

    def _attempt(
        self,
        grid: Grid,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        hooks: FederatedHooks | None,
    ) -> _Attempt:
        if hasattr(self.strategy, "train_exchange"):  # e.g. SecAgg+: the strategy runs the exchange
            return self._own_exchange(grid, server_round, arrays, config)
        messages = self._configure(grid, server_round, arrays, config, train=True)
        pending = push(grid, messages)
        own = hooks.local_train(server_round, arrays, ConfigRecord(dict(config))) if hooks else None
        res = pull(grid, pending, self.config.calculation_timeout, self.config.poll_interval)
        accepted = self.accept_train_replies(res.replies, arrays)
        log(
            INFO,
            "Round %d: %d/%d results in %.2fs, %d valid%s",
            server_round,
            len(res.replies),
            len(messages),
            res.seconds,
            len(accepted),
            f"; no answer within {self.config.calculation_timeout:g}s from nodes {res.missing}"
            if res.missing
            else "",
        )
        if len(accepted) < self.config.min_clients:
            return _Attempt(
                failure=f"got {len(accepted)} valid results, fewer than {self.config.min_clients} "
                "valid results needed (min_clients)"
            )
        if own is not None:
            accepted.update(self.accept_train_replies({SERVER_NODE: _as_reply(own)}, arrays, "the server's own update"))
        if len(accepted) < self.min_replies:
            return _Attempt(failure=f"{len(accepted)} valid results: {self._replies_reason}")
        return self.aggregate(server_round, arrays, accepted)

    def _own_exchange(
        self, grid: Grid, server_round: int, arrays: ArrayRecord, config: ConfigRecord
    ) -> _Attempt:
        """A round whose messages the strategy exchanges itself on the sampled nodes
        (``train_exchange(grid, nodes, round, arrays, config) -> (arrays, metrics, failure)``)."""
        nodes = self.sample(grid)
        if self.admit_nodes is not None:
            self.admit_nodes(grid, nodes)
        view = SampledGrid(grid, nodes, self.config.calculation_timeout)
        log(INFO, "Round %d: %s exchanges with %d sampled nodes", server_round,
            type(self.strategy).__name__, len(nodes))
        new, metrics, failure = self.strategy.train_exchange(  # type: ignore[attr-defined]
            view, nodes, server_round, arrays, ConfigRecord(dict(config))
        )
        if new is None or metrics is None:
            return _Attempt(failure=failure or "the exchange returned no arrays")
        results = int(metrics.get("num-results", 0))  # type: ignore[arg-type]
        if results < self.config.min_clients:
            return _Attempt(failure=f"{results} results, fewer than min_clients={self.config.min_clients}")
        cast, problem = cast_like(arrays, new)
        if cast is None:
            return _Attempt(failure=f"refused the aggregate: {problem}")
        return _Attempt(arrays=cast, metrics=MetricRecord(dict(clean_metrics(metrics))))

    def accept_train_replies(
        self, replies: Mapping[int, Message], reference: ArrayRecord, what: str = ""
    ) -> dict[int, RecordDict]:
        """Clean contents of the replies that may reach the strategy, by node.

        Rejected replies are logged with the reason; an accepted content holds only the
        ArrayRecord and a MetricRecord of finite scalars (its weight 1 when unweighted).
        """
        cfg = self.config
        accepted: dict[int, RecordDict] = {}
        for node, msg in sorted(replies.items()):
            label = what or f"the update of node {node}"
            if msg.has_error():
                log(WARNING, "Rejected %s: the client failed: %s", label, msg.error.reason)
                continue
            problem = reply_problem(
                msg.content,
                reference,
                arrayrecord_key=self._arrays_key,
                weight_key=self._weight_key,
                max_num_examples=cfg.max_num_examples,
                required_metrics=self.required_metrics,
            )
            if problem:
                log(WARNING, "Rejected %s: %s", label, problem)
                continue
            content = msg.content
            metrics = clean_metrics(next(iter(content.metric_records.values())))
            if not cfg.weighted:
                metrics["claimed-" + self._weight_key] = metrics[self._weight_key]
                metrics[self._weight_key] = 1
            # a new ArrayRecord of the same Arrays: strategies such as FedMedian pop from it
            update = ArrayRecord(dict(content.array_records[self._arrays_key].items()))
            accepted[node] = RecordDict({self._arrays_key: update, METRICS: metrics})
        return accepted

    def aggregate(
        self, server_round: int, reference: ArrayRecord, accepted: dict[int, RecordDict]
    ) -> _Attempt:
        """Let the strategy aggregate the accepted replies; refuse a bad aggregate.

        The strategy's server state is restored if its aggregation fails or is refused.
        """
        contents = _harmonized(list(accepted.values()))
        count_key = self._weight_key if self.config.weighted else "claimed-" + self._weight_key
        examples = sum(float(next(iter(c.metric_records.values()))[count_key]) for c in contents)  # type: ignore[arg-type]
        replies = [_as_reply(c, node) for node, c in zip(accepted, contents, strict=True)]
        snapshot = compat.get_strategy_state(self.strategy)
        name = type(self.strategy).__name__
        try:
            new_arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        except Exception as exc:  # noqa: BLE001 - a failed aggregation fails the round
            compat.set_strategy_state(self.strategy, snapshot, reset_absent=True)
            return _Attempt(failure=f"{name}.aggregate_train raised {type(exc).__name__}: {exc}")
        if new_arrays is None:
            compat.set_strategy_state(self.strategy, snapshot, reset_absent=True)
            return _Attempt(failure=f"{name}.aggregate_train returned no arrays")
        cast, problem = cast_like(reference, new_arrays)
        if cast is None:
            compat.set_strategy_state(self.strategy, snapshot, reset_absent=True)
            return _Attempt(failure=f"refused {name}'s aggregate: {problem}")
        out = MetricRecord(dict(clean_metrics(metrics))) if isinstance(metrics, MetricRecord) else MetricRecord()
        out.pop("claimed-" + self._weight_key, None)
        out[self._weight_key] = int(examples) if float(examples).is_integer() else examples
        out["num-results"] = len(contents)
        return _Attempt(arrays=cast, metrics=out)

    # ----- evaluation ----------------------------------------------------------------------
    def _evaluate(
        self,
        grid: Grid,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        hooks: FederatedHooks | None,
        result: Result,
    ) -> None:
        replies = self.evaluate_round(grid, server_round, arrays, config)
        if hooks is not None:
            hooks.on_client_evaluation(server_round, replies)
        aggregated = self.aggregate_evaluate(server_round, replies)
        if aggregated is not None:
            result.evaluate_metrics_clientapp[server_round] = aggregated

    def evaluate_round(
        self, grid: Grid, server_round: int, arrays: ArrayRecord, config: ConfigRecord
    ) -> dict[int, RecordDict]:
        """Federated evaluation; returns each answering node's reply content."""
        messages = self._configure(grid, server_round, arrays, config, train=False)
        if not messages:
            return {}
        res = exchange(grid, messages, self.config.calculation_timeout, self.config.poll_interval)
        contents: dict[int, RecordDict] = {}
        for node, msg in sorted(res.replies.items()):
            if msg.has_error():
                log(WARNING, "Evaluation failed on node %s: %s", node, msg.error.reason)
            elif msg.content.metric_records:
                contents[node] = msg.content
        if res.missing:
            log(WARNING, "No evaluation result within %gs from nodes %s",
                self.config.calculation_timeout, res.missing)
        return contents

    def aggregate_evaluate(
        self, server_round: int, replies: Mapping[int, RecordDict]
    ) -> MetricRecord | None:
        """The strategy's aggregate of the evaluation replies with a valid sample count."""
        clean: dict[int, RecordDict] = {}
        for node, content in replies.items():
            metrics = clean_metrics(next(iter(content.metric_records.values())))
            problem = weight_problem(metrics.get(self._weight_key), self._weight_key, self.config.max_num_examples)
            if problem:
                log(WARNING, "Left the evaluation of node %s out of the mean: %s", node, problem)
                continue
            clean[node] = RecordDict({METRICS: metrics})
        if not clean:
            return None
        contents = _harmonized(list(clean.values()))
        messages = [_as_reply(c, node, MessageType.EVALUATE) for node, c in zip(clean, contents, strict=True)]
        try:
            return self.strategy.aggregate_evaluate(server_round, messages)
        except Exception as exc:  # noqa: BLE001 - a failed metric mean never stops the run
            log(WARNING, "%s.aggregate_evaluate failed: %s", type(self.strategy).__name__, exc)
            return None


def _strategy_min_nodes(strategy: Strategy) -> int:
    """Nodes Flower's ``sample_nodes`` would wait for (it would wait forever for more)."""
    wanted = [getattr(strategy, name, 0) for name in ("min_available_nodes", "min_train_nodes")]
    return max(int(v) for v in wanted if isinstance(v, (int, float)))


def _harmonized(contents: list[RecordDict]) -> list[RecordDict]:
    """The contents with only the metric keys that all of them hold (Flower requires it)."""
    records = [next(iter(c.metric_records.values())) for c in contents]
    keep = common_metric_keys(records)
    out = []
    for content, record in zip(contents, records, strict=True):
        new = RecordDict(dict(content.array_records))
        new[METRICS] = MetricRecord({k: v for k, v in record.items() if k in keep})
        out.append(new)
    return out


def _as_reply(content: RecordDict, node: int = SERVER_NODE, message_type: str = MessageType.TRAIN) -> Message:
    """``content`` as a reply from ``node`` (what strategies' aggregate hooks take)."""
    instruction = Message(RecordDict(), dst_node_id=node, message_type=message_type)
    return Message(content, reply_to=instruction)
