"""Secure split learning: the collaborators' features reach the host only as CKKS ciphertexts.

The exchange of ``SplitLearning`` (hello, PSI, rounds, tests, checks, timeouts) with a
``train.secure`` step per message instead of ``train.exchange``. Per training batch and
collaborator, two round trips (the collaborator must decrypt in between):

- **features**: the request carries the previous batch's gradients (if any) and asks for
  the encrypted features of the next K batches (``batches_per_exchange``; computed with the
  same feature-model parameters, as in ``SplitLearning``);
- **projection**, once per batch: the host's forward ciphertexts go out, the masked
  projection part and the collaborator's encrypted share come back; the host trains the
  batch, and its gradient ciphertexts travel with the next request.

So a round of M batches costs M + ceil(M / K) + 1 exchanges: K only batches the feature
requests, since each batch's projection needs the shares that the previous batch updated.
Testing costs one exchange for the test features (merged into the round's last) and one
per test batch. Ciphertexts travel as ``bytes`` in the payload's ConfigRecord.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from logging import INFO
from typing import Any, Protocol

import numpy as np
from flwr.serverapp import Grid
from flwr.supercore import log

from .protocol import (
    ALPHA,
    ALPHA_COUNTS,
    BEGIN,
    CONTEXT,
    DIGESTS,
    FINISH,
    FORWARD,
    FORWARD_BATCH,
    ROUND,
    SECURE,
    SEND,
    SIZES,
    TEST,
    TEST_ALPHA,
    TEST_ALPHA_COUNTS,
    TEST_BATCH,
    TEST_DIGESTS,
    TEST_FORWARD,
    TEST_SIZES,
    TEST_Z,
    TIME_HANDLER,
)
from .split_learning import BatchMismatch, HostBatch, MalformedReply, SplitLearning, SplitLearningHost, _span


class SecureSplitLearningHost(SplitLearningHost, Protocol):
    """The host's callbacks for the secure protocol (on top of ``SplitLearningHost``)."""

    def secure_setup(self, key: str) -> dict[str, Any]:
        """Payload of a round's first request to ``key`` (learning rate, dims, CKKS parameters)."""

    def set_context(self, key: str, context: bytes) -> None:
        """The collaborator's public CKKS context (no secret key)."""

    def forward(self, key: str, index: int, cts: list[bytes]) -> list[bytes]:
        """Forward ciphertexts of training batch ``index`` from its feature ciphertexts."""

    def train_secure(self, parts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Unmask the projections, train the batch; return each collaborator's gradient payload."""

    def test_forward(self, key: str, index: int, cts: list[bytes]) -> list[bytes]:
        """Forward ciphertexts of test batch ``index``."""

    def test_secure(self, parts: dict[str, list[np.ndarray]]) -> dict[str, float]:
        """Unmask every test projection and run the user's test."""


def payload_bytes(payload: dict[str, Any]) -> int:
    """Bytes of the arrays and byte strings in a payload (what dominates a message)."""
    total = 0
    for value in payload.values():
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, bytes):
                total += len(item)
            elif isinstance(item, np.ndarray):
                total += item.nbytes
    return total


def split_counts(key: str, reply: dict[str, Any], name: str, counts_name: str, what: str) -> list[list[bytes]]:
    """``reply[name]`` (flat ciphertexts) cut by ``reply[counts_name]``, checked."""
    flat, counts = reply.get(name), reply.get(counts_name)
    ok = isinstance(flat, list) and isinstance(counts, list) and all(isinstance(b, bytes) for b in flat)
    ok = ok and all(isinstance(c, int) and c > 0 for c in counts) and sum(counts) == len(flat)
    if not ok:
        raise MalformedReply(f"{what}: collaborator '{key}' sent malformed '{name}' ciphertexts")
    out, start = [], 0
    for count in counts:
        out.append(flat[start : start + count])
        start += count
    return out


class SecureSplitLearning(SplitLearning):
    """Split learning with the host's view of collaborators' features limited to projections
    computed under CKKS (``alphafed_flwr.secure_layer``). Parameters: as ``SplitLearning``."""

    def secure_send(self, grid: Grid, payloads: dict[str, dict[str, Any]], what: str) -> dict[str, dict[str, Any]]:
        """One ``train.secure`` exchange; counts it, its seconds and its bytes each way."""
        start = time.monotonic()
        replies = self.send(grid, SECURE, payloads, what)
        stats = self.round_stats
        stats["exchanges"] = stats.get("exchanges", 0) + 1
        stats["exchange-seconds"] = stats.get("exchange-seconds", 0.0) + time.monotonic() - start
        stats["bytes-to-collaborators"] = stats.get("bytes-to-collaborators", 0) + sum(map(payload_bytes, payloads.values()))
        stats["bytes-to-host"] = stats.get("bytes-to-host", 0) + sum(map(payload_bytes, replies.values()))
        stats[TIME_HANDLER] = stats.get(TIME_HANDLER, 0.0) + max(
            float(r.get(TIME_HANDLER, 0.0)) if isinstance(r.get(TIME_HANDLER), float) else 0.0
            for r in replies.values()
        )
        return replies

    def run_round(self, grid: Grid, host: Any, server_round: int) -> dict[str, float]:
        """Train one round (two round trips per batch); test it if scheduled."""
        _require_secure(host)
        k = self.batches_per_exchange
        extra = host.begin_round(server_round)
        test_now = host.is_test_round(server_round)
        first_send = list(range(k))
        replies = self.secure_send(
            grid,
            {key: {ROUND: server_round, BEGIN: True, SEND: first_send, **extra, **host.secure_setup(key)} for key in self.nodes},
            f"round {server_round}, the start and the features of {_span(first_send)}",
        )
        for key, reply in replies.items():
            context = reply.get(CONTEXT)
            if not isinstance(context, bytes):
                raise MalformedReply(f"collaborator '{key}' sent no CKKS context")
            host.set_context(key, context)
        total = self._batch_count(replies)
        log(INFO, "Round %d: %d training batches per party, %d per feature exchange", server_round, total, k)
        pending: dict[str, dict[str, Any]] = {key: {} for key in self.nodes}
        last_log = time.monotonic()
        for group in _groups(total, k):
            if group[0] > 0:
                replies = self.secure_send(
                    grid,
                    {key: {ROUND: server_round, SEND: group, **pending[key]} for key in self.nodes},
                    f"round {server_round}, the gradients of batch {group[0]} and the features of {_span(group)}",
                )
                pending = {key: {} for key in self.nodes}
            alphas = {key: split_counts(key, r, ALPHA, ALPHA_COUNTS, f"round {server_round}") for key, r in replies.items()}
            for offset, index in enumerate(group):
                self._check_host_batch(host, replies, alphas, index, offset)
                forward = {
                    key: {ROUND: server_round, FORWARD: host.forward(key, index, alphas[key][offset]),
                          FORWARD_BATCH: index, **pending[key]}
                    for key in self.nodes
                }
                parts = self.secure_send(grid, forward, f"round {server_round}, the projection of batch {index + 1}")
                pending = host.train_secure(parts)
                if time.monotonic() - last_log >= self.progress_every:
                    log(INFO, "Round %d: batch %d/%d", server_round, index + 1, total)
                    last_log = time.monotonic()
        if host.next_batch() is not None:
            raise BatchMismatch(
                f"round {server_round}: the host yields more than the {total} training batches "
                f"of its collaborators ({', '.join(self.nodes)})"
            )
        final = {key: {ROUND: server_round, FINISH: True, TEST: test_now, **pending[key]} for key in self.nodes}
        replies = self.secure_send(grid, final, f"round {server_round}, the gradients of batch {total}" + (
            " and the test features" if test_now else " (last of the round)"))
        log(INFO, "Round %d: batch %d/%d", server_round, total, total)
        return self._secure_test(grid, host, replies, server_round) if test_now else {}

    def run_test(self, grid: Grid, host: SplitLearningHost, server_round: int, extra: dict[str, Any]) -> dict[str, float]:
        """A test outside the training exchanges."""
        replies = self.secure_send(
            grid, {key: {ROUND: server_round, TEST: True, **extra} for key in self.nodes}, f"round {server_round}, the test"
        )
        return self._secure_test(grid, host, replies, server_round)

    def _secure_test(
        self, grid: Grid, host: Any, replies: dict[str, dict[str, Any]], server_round: int
    ) -> dict[str, float]:
        _require_secure(host)
        what = f"round {server_round} test"
        alphas = {key: split_counts(key, r, TEST_ALPHA, TEST_ALPHA_COUNTS, what) for key, r in replies.items()}
        mine = host.test_batches()
        for key, reply in replies.items():
            if len(alphas[key]) != len(mine):
                raise BatchMismatch(f"{what}: the host has {len(mine)} test batches, collaborator '{key}' {len(alphas[key])}")
            for i, batch in enumerate(mine):
                _check_sizes(f"test batch {i + 1}", key, batch, reply, TEST_SIZES, TEST_DIGESTS, i)
        parts: dict[str, list[np.ndarray]] = {key: [] for key in self.nodes}
        for i in range(len(mine)):
            payloads = {
                key: {ROUND: server_round, TEST_FORWARD: host.test_forward(key, i, alphas[key][i]), TEST_BATCH: i}
                for key in self.nodes
            }
            for key, reply in self.secure_send(grid, payloads, f"{what}, the projection of test batch {i + 1}").items():
                parts[key].append(reply.get(TEST_Z))  # checked by the host before unmasking
        return host.test_secure(parts)

    def _check_host_batch(
        self,
        host: SplitLearningHost,
        replies: dict[str, dict[str, Any]],
        alphas: dict[str, list[list[bytes]]],
        index: int,
        offset: int,
    ) -> None:
        what = f"training batch {index + 1}"
        for key in replies:
            if offset >= len(alphas[key]):
                raise BatchMismatch(f"{what}: collaborator '{key}' sent no features")
        mine = host.next_batch()
        if mine is None:
            raise BatchMismatch(f"{what}: the host's generator ended after {index} batches, its collaborators yield more")
        for key, reply in replies.items():
            _check_sizes(what, key, mine, reply, SIZES, DIGESTS, offset)


def _require_secure(host: Any) -> None:
    if not hasattr(host, "train_secure"):
        raise TypeError("SecureSplitLearning needs a host adapter with the secure callbacks (SecureVerticalHost)")


def _groups(total: int, k: int) -> Iterator[list[int]]:
    for first in range(0, total, k):
        yield list(range(first, min(first + k, total)))


def _check_sizes(what: str, key: str, host: HostBatch, reply: dict[str, Any], sizes: str, digests: str, offset: int) -> None:
    """The collaborator's reported batch size and ID digest against the host's batch."""
    size_list, digest_list = reply.get(sizes), reply.get(digests, [])
    if not isinstance(size_list, list) or offset >= len(size_list) or not isinstance(size_list[offset], int):
        raise MalformedReply(f"{what}: collaborator '{key}' did not report its batch size")
    if size_list[offset] != host.size:
        raise BatchMismatch(f"{what}: collaborator '{key}' has {size_list[offset]} samples, the host's batch {host.size}")
    theirs = digest_list[offset] if isinstance(digest_list, list) and offset < len(digest_list) else ""
    if host.digest and theirs and theirs != host.digest:
        raise BatchMismatch(f"{what}: collaborator '{key}' holds other samples (or another order) than the host")
