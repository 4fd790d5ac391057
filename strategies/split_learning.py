"""Split learning (vertical FL) between a label-holding host in the ServerApp and
feature-holding collaborator nodes.

Per training round and collaborator, the strategy needs one message exchange per
``batches_per_exchange`` (K) batches: the gradients of batches i..i+K-1 travel with the
request for the features of batches i+K..i+2K-1. Testing gathers every test batch's
features in one exchange (merged into the round's last exchange). Batch counts, sizes and,
when parties yield sample IDs, sample order are checked for every batch, and so is every
array that crosses the wire (``checks``: floating dtype, the party's first trailing shape,
finite, at most ``max_abs``): collaborators' features before they reach the host, and the
host's gradients before they leave. A malformed reply, a mismatch or a rejected array stops
the run with an error naming the party and the batch, before the host's models see it.

The strategy speaks Flower records only. It reaches the host's user code through the
``SplitLearningHost`` callbacks that the adapter supplies, and the collaborators through
three message types (``query.hello``, ``query.psi``, ``train.exchange``) whose payloads are
plain arrays and scalars (``payload.encode``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from logging import INFO
from typing import Any, Protocol

import numpy as np
from flwr.app import Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore import log

from .checks import DEFAULT_MAX_ABS, ArrayLedger, ArrayRejected, check_array
from .codecs import ExchangeCodecs
from .errors import ExchangeTimeout, NodesUnavailable, StrategyError
from .exchange import DEFAULT_POLL_INTERVAL, exchange, pull, push
from .payload import PayloadError, decode, encode
from .protocol import (
    APPLY,
    BATCHES,
    BEGIN,
    COLLABORATOR,
    DIGESTS,
    EXCHANGE,
    FEATURE_KEY,
    FEATURES,
    FINISH,
    GRADS,
    HELLO,
    PSI,
    ROLE,
    ROUND,
    SEND,
    TEST,
    TEST_DIGESTS,
    TEST_FEATURES,
    TIME_HANDLER,
    TIME_MODEL,
)


PayloadExchange = Callable[[dict[str, dict[str, Any]]], dict[str, dict[str, Any]]]


class BatchMismatch(StrategyError):
    """Parties' batches do not line up (count, size or samples)."""


class MalformedReply(StrategyError):
    """A collaborator's reply cannot be decoded or lacks what the protocol requires."""


@dataclass(frozen=True)
class HostBatch:
    """The host's view of one batch: its size, (if IDs were yielded) the IDs' digest, and
    (if known) the dtype of the host's own features, which collaborators' must share."""

    size: int
    digest: str = ""
    dtype: str = ""


class SplitLearningHost(Protocol):
    """Callbacks through which the strategy reaches the host (implemented by the adapter)."""

    feature_key: str

    def hello(self) -> dict[str, Any]:
        """Payload of the hello message (for example, the salt of batch digests)."""

    def prepare(self, collaborators: dict[str, dict[str, Any]], exchange: PayloadExchange) -> int:
        """Agree on the samples (PSI, split) or resume; return the first round to run.

        ``collaborators`` maps each feature key to its hello reply; ``exchange`` sends
        ``query.psi`` payloads to collaborators by feature key.
        """

    def begin_round(self, server_round: int) -> dict[str, Any]:
        """Start a round's training; extra payload for the round's first request."""

    def next_batch(self) -> HostBatch | None:
        """Advance the host's own training batches (``None`` when exhausted)."""

    def train_batch(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Train the current batch on all features; return each collaborator's gradient."""

    def is_test_round(self, server_round: int) -> bool:
        """Whether the round is tested on schedule."""

    def test_batches(self) -> list[HostBatch]:
        """Run the host's test generator; describe its batches."""

    def test(self, features: dict[str, list[np.ndarray]]) -> dict[str, float]:
        """Test on the host's and the collaborators' test features."""

    def is_finished(self, server_round: int) -> bool:
        """Whether the task ends after this round."""

    def end_round(
        self, server_round: int, test: dict[str, float], seconds: float, stats: dict[str, float]
    ) -> None:
        """Record the round (checkpoint, summary, progress line); ``stats`` holds the
        round's exchange count and timings (see ``SplitLearning.round_stats``)."""


class SplitLearning:
    """Split-learning strategy on Flower's Message API.

    Parameters
    ----------
    num_collaborators : int
        Collaborator nodes expected.
    schedule_timeout : float (default: 30)
        Seconds to wait for collaborators to connect and to answer control messages.
    calculation_timeout : float (default: 300)
        Seconds a collaborator may take to answer one exchange.
    batches_per_exchange : int (default: 1)
        K: batches whose features (and then gradients) travel in one exchange. K=1 is
        AlphaFed's exact semantics; K>1 trains K batches on features computed with the same
        collaborator parameters (FedBCD-style), with K times fewer messages.
    poll_interval : float (default: 0.005)
        Seconds between pulls while waiting for replies.
    progress_every : float (default: 10)
        Seconds between progress lines (round r, batch i/M).
    max_abs : float (default: checks.DEFAULT_MAX_ABS, 1e6)
        Largest absolute value accepted in a collaborator's features and in the host's
        gradients; larger values stop the run (they would overflow the infer model).
    codecs : ExchangeCodecs | None (default: None)
        Codecs of the features (collaborators to host) and gradients (host to
        collaborators); ``None``: float32 both ways (see ``codecs``).
    """

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        num_collaborators: int,
        schedule_timeout: float = 30.0,
        calculation_timeout: float = 300.0,
        batches_per_exchange: int = 1,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        progress_every: float = 10.0,
        max_abs: float = DEFAULT_MAX_ABS,
        codecs: ExchangeCodecs | None = None,
    ) -> None:
        if num_collaborators < 1:
            raise ValueError("split learning needs at least one collaborator")
        if batches_per_exchange < 1:
            raise ValueError(f"batches_per_exchange must be >= 1, got {batches_per_exchange}")
        self.num_collaborators = num_collaborators
        self.schedule_timeout = schedule_timeout
        self.calculation_timeout = calculation_timeout
        self.batches_per_exchange = batches_per_exchange
        self.poll_interval = poll_interval
        self.progress_every = progress_every
        self.nodes: dict[str, int] = {}
        self.round_stats: dict[str, float] = {}
        self.ledger = ArrayLedger(max_abs)
        self.codecs = codecs or ExchangeCodecs()

    def summary(self) -> None:
        """Log the configuration."""
        log(
            INFO,
            "\t├──> %d collaborator(s) | %d batch(es) per exchange | schedule_timeout %gs | "
            "calculation_timeout %gs | codecs: %s",
            self.num_collaborators,
            self.batches_per_exchange,
            self.schedule_timeout,
            self.calculation_timeout,
            self.codecs,
        )

    # ----- messaging ---------------------------------------------------------------------
    def send(
        self,
        grid: Grid,
        message_type: str,
        payloads: Mapping[str, Mapping[str, Any]],
        what: str,
        timeout: float | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """One exchange: a payload per collaborator (by feature key) in, their replies out;
        ``meanwhile`` runs while the collaborators compute (see ``exchange.exchange``).

        Raises ``ExchangeTimeout`` naming the silent parties and ``StrategyError`` with a
        collaborator's own error.
        """
        timeout = self.calculation_timeout if timeout is None else timeout
        sizes: list[dict[str, int]] = []  # array bytes each way (bytes-gradients, bytes-features)
        if message_type == EXCHANGE:  # codecs: the gradients out (the features in, below)
            encoded = {key: self.codecs.encode_request(payload) for key, payload in payloads.items()}
            payloads, sizes = {k: e[0] for k, e in encoded.items()}, [e[1] for e in encoded.values()]
        messages = [
            Message(encode(payload), self.nodes[key], message_type, ttl=timeout + self.schedule_timeout)
            for key, payload in payloads.items()
        ]
        res = exchange(grid, messages, timeout, self.poll_interval, meanwhile)
        by_node = {node: key for key, node in self.nodes.items()}
        # a reply whose objects never arrived whole: its sender died while sending it
        cut_off = [
            node for node, reply in res.replies.items()
            if reply.has_error() and reply.error.code == ErrorCode.MESSAGE_UNAVAILABLE
        ]
        if res.missing or cut_off:
            silent = ", ".join(f"'{by_node[n]}' (node {n})" for n in sorted([*res.missing, *cut_off]))
            raise ExchangeTimeout(
                f"no answer from collaborator {silent} within {timeout:g}s during {what}: "
                "the party disappeared or is too slow (calculation_timeout)"
            )
        out: dict[str, dict[str, Any]] = {}
        for node, reply in res.replies.items():
            key = by_node[node]
            if reply.has_error():
                reason = str(reply.error.reason)[:2000]
                raise StrategyError(f"collaborator '{key}' failed during {what}: {reason}")
            out[key] = _decode_reply(key, reply, what)
            if message_type == EXCHANGE:
                try:
                    out[key], size = self.codecs.decode_reply(out[key], f"collaborator '{key}'", self.ledger.max_abs)
                except ArrayRejected as exc:  # name the batches
                    raise ArrayRejected(f"{what}: {exc}") from exc
                sizes.append(size)
        if message_type == EXCHANGE:
            stats = self.round_stats
            stats["exchanges"] = stats.get("exchanges", 0) + 1
            stats["exchange-seconds"] = stats.get("exchange-seconds", 0.0) + res.seconds
            for size in sizes:
                for name, count in size.items():
                    stats[name] = stats.get(name, 0) + count
            for name in (TIME_HANDLER, TIME_MODEL):  # collaborators work in parallel: max
                slowest = max(_seconds(r.get(name)) for r in out.values())
                stats[name] = stats.get(name, 0.0) + slowest
        return out

    def connect(self, grid: Grid, host: SplitLearningHost) -> dict[str, dict[str, Any]]:
        """Greet connected nodes until ``num_collaborators`` have answered; learn their keys.

        Nodes that do not answer (for example, a collaborator that died before a restart
        and that the SuperLink still lists) are skipped; the wait is bounded by
        ``schedule_timeout``.
        """
        deadline = time.monotonic() + self.schedule_timeout
        pending: dict[str, int] = {}
        greeted: set[int] = set()
        info: dict[str, dict[str, Any]] = {}
        keys: dict[str, int] = {}
        while len(keys) < self.num_collaborators:
            new = [n for n in grid.get_node_ids() if n not in greeted]
            if new:
                greeted.update(new)
                pending.update(push(grid, [
                    Message(encode(host.hello()), n, HELLO, ttl=self.schedule_timeout) for n in new
                ]))
            res = pull(grid, pending, 0.5, self.poll_interval)
            for mid in [m for m, n in pending.items() if n in res.replies]:
                del pending[mid]
            for node, reply in res.replies.items():
                if reply.has_error():
                    log(INFO, "Node %s did not answer the hello (%s); ignoring it", node, reply.error.reason)
                    continue
                payload = _decode_reply(f"node {node}", reply, "the hello")
                key, role = payload.get(FEATURE_KEY), payload.get(ROLE)
                if not isinstance(role, str) or role != COLLABORATOR:
                    raise StrategyError(f"node {node} is not a collaborator (role {str(role)[:100]!r})")
                if not isinstance(key, str) or not key:
                    raise MalformedReply(f"node {node} sent no feature_key in its hello")
                if key == host.feature_key or key in keys:
                    raise StrategyError(f"feature_key '{key}' is used by more than one party; keys must be unique")
                keys[key], info[key] = node, payload
            if len(keys) < self.num_collaborators and time.monotonic() >= deadline:
                raise NodesUnavailable(
                    f"{len(keys)} of the {self.num_collaborators} collaborators answered within "
                    f"{self.schedule_timeout:g}s (schedule_timeout): start the missing "
                    "collaborators or raise schedule_timeout"
                )
        self.nodes = dict(sorted(keys.items()))
        log(INFO, "Collaborators: %s", ", ".join(f"'{k}' (node {n})" for k, n in self.nodes.items()))
        return info

    # ----- the run -----------------------------------------------------------------------
    def start(self, grid: Grid, host: SplitLearningHost, num_rounds: int) -> int:
        """Run the task; return the last round run."""
        log(INFO, "Starting %s strategy:", type(self).__name__)
        self.summary()
        info = self.connect(grid, host)

        def psi_exchange(payloads: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
            return self.send(grid, PSI, payloads, "the private set intersection")

        first_round = host.prepare(info, psi_exchange)
        last = first_round - 1
        for server_round in range(first_round, num_rounds + 1):
            log(INFO, "")
            log(INFO, "[ROUND %s/%s]", server_round, num_rounds)
            start = time.monotonic()
            self.round_stats = {}
            test = self.run_round(grid, host, server_round)
            finished = server_round >= num_rounds or host.is_finished(server_round)
            if finished and not test:
                test = self.run_test(grid, host, server_round, {})
            host.end_round(server_round, test, time.monotonic() - start, dict(self.round_stats))
            last = server_round
            if finished:
                break
        return last

    def run_round(self, grid: Grid, host: SplitLearningHost, server_round: int) -> dict[str, float]:
        """Train one round; test it if scheduled. Returns the test metrics (or ``{}``)."""
        k = self.batches_per_exchange
        extra = host.begin_round(server_round)
        test_now = host.is_test_round(server_round)
        ahead: list[HostBatch | None] = []  # the host's next batch, pulled while collaborators compute
        replies = self.send(
            grid,
            EXCHANGE,
            {key: {ROUND: server_round, BEGIN: True, SEND: list(range(k)), **extra} for key in self.nodes},
            f"round {server_round}, the start and the features of {_span(list(range(k)))}",
            meanwhile=lambda: ahead.append(host.next_batch()),
        )
        total = self._batch_count(replies)
        log(INFO, "Round %d: %d training batches per party, %d per exchange", server_round, total, k)
        first, last_log = 0, time.monotonic()
        while True:
            batches = list(range(first, min(first + k, total)))
            grads: dict[str, list[np.ndarray]] = {key: [] for key in self.nodes}
            for offset, index in enumerate(batches):
                features = self._batch_features(replies, index, offset, ahead.pop() if ahead else host.next_batch())
                for key, grad in self._host_gradients(host.train_batch(features), features, index).items():
                    grads[key].append(grad)
                if time.monotonic() - last_log >= self.progress_every:
                    log(INFO, "Round %d: batch %d/%d", server_round, index + 1, total)
                    last_log = time.monotonic()
            first += k
            finish = first >= total
            payload = {
                ROUND: server_round,
                APPLY: batches,
                GRADS: None,
                SEND: [] if finish else list(range(first, min(first + k, total))),
                FINISH: finish,
                TEST: finish and test_now,
            }
            what = f"round {server_round}, the gradients of {_span(batches)} " + (
                ("and the test features" if test_now else "(last of the round)")
                if finish
                else f"and the features of {_span(payload[SEND])}"
            )
            replies = self.send(grid, EXCHANGE, {key: {**payload, GRADS: grads[key]} for key in self.nodes}, what,
                                meanwhile=None if finish else lambda: ahead.append(host.next_batch()))
            if finish:
                break
        if host.next_batch() is not None:
            raise BatchMismatch(
                f"round {server_round}: the host yields more than the {total} training batches "
                f"of its collaborators ({', '.join(self.nodes)})"
            )
        log(INFO, "Round %d: batch %d/%d", server_round, total, total)
        return self._test_from(host, replies, server_round) if test_now else {}

    def run_test(
        self, grid: Grid, host: SplitLearningHost, server_round: int, extra: dict[str, Any]
    ) -> dict[str, float]:
        """A test outside the training exchanges (one exchange)."""
        replies = self.send(
            grid,
            EXCHANGE,
            {key: {ROUND: server_round, TEST: True, **extra} for key in self.nodes},
            f"round {server_round}, the test",
        )
        return self._test_from(host, replies, server_round)

    # ----- checks ---------------------------------------------------------------------------
    def _batch_count(self, replies: dict[str, dict[str, Any]]) -> int:
        counts = {}
        for key, reply in replies.items():
            count = reply.get(BATCHES)
            if not isinstance(count, int) or isinstance(count, bool):
                raise MalformedReply(
                    f"collaborator '{key}' answered the round's start without a batch count "
                    f"(got {type(count).__name__})"
                )
            counts[key] = count
        if len(set(counts.values())) != 1:
            raise BatchMismatch(f"collaborators yield different numbers of training batches: {counts}")
        total = next(iter(counts.values()))
        if total <= 0:
            raise BatchMismatch(f"collaborators yield no training batches: {counts}")
        return total

    def _batch_features(
        self, replies: dict[str, dict[str, Any]], index: int, offset: int, mine: HostBatch | None
    ) -> dict[str, np.ndarray]:
        """Collaborators' checked features of batch ``index`` (``offset`` in their replies),
        matched against ``mine``, the host's batch (``None``: its generator has ended)."""
        what = f"training batch {index + 1}"
        features: dict[str, np.ndarray] = {}
        for key, reply in replies.items():  # every array is checked before the host's models run
            feats = _list_of(key, reply, FEATURES, what)
            if offset >= len(feats):
                raise BatchMismatch(f"{what}: collaborator '{key}' sent no features")
            features[key] = self.ledger.check(f"collaborator '{key}'", "features", f"the features of {what}", feats[offset])
        if mine is None:
            raise BatchMismatch(
                f"{what}: the host's generator ended after {index} batches, its collaborators yield more"
            )
        for key, reply in replies.items():
            check_batch(what, key, mine, features[key], _list_of(key, reply, DIGESTS, what, str), offset)
        return features

    def _host_gradients(
        self, grads: dict[str, Any], features: dict[str, np.ndarray], index: int
    ) -> dict[str, np.ndarray]:
        """The host's gradients, checked like features before they leave (same shapes)."""
        if set(grads) != set(features):
            raise StrategyError(
                f"training batch {index + 1}: the host computed gradients for {sorted(grads)}, "
                f"its collaborators are {sorted(features)}"
            )
        for key, grad in grads.items():
            what = f"the gradient for collaborator '{key}' of training batch {index + 1}"
            check_array(grad, "the host", what, max_abs=self.ledger.max_abs)
            if grad.shape != features[key].shape:
                raise ArrayRejected(
                    f"{what} from the host rejected: shape {grad.shape}, its features have {features[key].shape}"
                )
        return grads

    def _test_from(
        self, host: SplitLearningHost, replies: dict[str, dict[str, Any]], server_round: int
    ) -> dict[str, float]:
        what = f"round {server_round} test"
        checked: dict[str, list[np.ndarray]] = {}
        for key, reply in replies.items():
            feats = _list_of(key, reply, TEST_FEATURES, what)
            checked[key] = [
                self.ledger.check(f"collaborator '{key}'", "features", f"the features of test batch {i + 1}", f)
                for i, f in enumerate(feats)
            ]
        mine = host.test_batches()
        for key, reply in replies.items():
            feats = checked[key]
            if len(feats) != len(mine):
                raise BatchMismatch(
                    f"{what}: the host has {len(mine)} test batches, collaborator '{key}' {len(feats)}"
                )
            digests = _list_of(key, reply, TEST_DIGESTS, what, str)
            for i, batch in enumerate(mine):
                check_batch(f"test batch {i + 1}", key, batch, feats[i], digests, i)
        return host.test(checked)


def _span(indices: list[int]) -> str:
    """Zero-based batch indices as one-based text: "batch 3" or "batches 3..4"."""
    if len(indices) == 1:
        return f"batch {indices[0] + 1}"
    return f"batches {indices[0] + 1}..{indices[-1] + 1}"


def _decode_reply(party: str, reply: Message, what: str) -> dict[str, Any]:
    try:
        return decode(reply.content)
    except PayloadError as exc:
        raise MalformedReply(f"the reply of {party} during {what} cannot be decoded: {exc}") from exc


def _list_of(key: str, reply: dict[str, Any], name: str, what: str, kind: type | None = None) -> list[Any]:
    """``reply[name]`` as a list (missing: empty); ``kind`` checks the items' type."""
    value = reply.get(name, [])
    if not isinstance(value, list) or (kind is not None and not all(isinstance(v, kind) for v in value)):
        raise MalformedReply(
            f"{what}: collaborator '{key}' sent a malformed '{name}' ({type(value).__name__}; "
            f"a list{f' of {kind.__name__}' if kind else ''} is expected)"
        )
    return value


def _seconds(value: Any) -> float:
    """A reported duration (anything else counts as 0: it only feeds the statistics)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf"):
        return float(value)
    return 0.0


def check_batch(
    what: str, key: str, host: HostBatch, features: np.ndarray, digests: list[str], offset: int
) -> None:
    """Raise ``BatchMismatch`` unless a collaborator's (checked) batch matches the host's.

    Sample order is checked when the parties yield sample IDs; either both sides do or
    neither does.
    """
    size = int(features.shape[0]) if features.ndim else 0
    if size != host.size:
        raise BatchMismatch(
            f"{what}: collaborator '{key}' sent {size} samples, the host's batch has {host.size}"
        )
    if host.dtype and str(features.dtype) != host.dtype:
        raise ArrayRejected(
            f"the features of {what} from collaborator '{key}' rejected: dtype {features.dtype}, "
            f"the host's own features are {host.dtype} (make every feature model output {host.dtype})"
        )
    theirs = digests[offset] if offset < len(digests) else ""
    if bool(host.digest) != bool(theirs):
        who, other = ("the host", f"collaborator '{key}'") if host.digest else (f"collaborator '{key}'", "the host")
        raise BatchMismatch(
            f"{what}: {who} yields sample IDs with its batches and {other} does not: yield "
            "(features, ids) on every party, or IDs on none"
        )
    if theirs != host.digest:
        raise BatchMismatch(
            f"{what}: collaborator '{key}' holds other samples (or another order) than the host"
        )
