"""Waiting for nodes and exchanging messages with bounded, reported timeouts.

Flower's ``Grid.send_and_receive`` sleeps 3 s between pulls in deployment and
``sample_nodes`` waits forever; these helpers poll briefly and always end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO

from flwr.app import Message
from flwr.serverapp import Grid
from flwr.supercore import log

from alphafed_flwr import compat

from .errors import NodesUnavailable

DEFAULT_POLL_INTERVAL = 0.005
MAX_POLL_INTERVAL = 0.1
POLL_BACKOFF = 0.1  # a reply is seen at most ~10% (or one floor interval) after it arrives


def wait_for_nodes(
    grid: Grid, min_nodes: int, timeout: float, what: str = "clients"
) -> list[int]:
    """Return the connected node ids once at least ``min_nodes`` are connected.

    Raises
    ------
    NodesUnavailable
        If fewer than ``min_nodes`` are connected after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last_logged = -1.0
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= min_nodes:
            return nodes
        now = time.monotonic()
        if now >= deadline:
            raise NodesUnavailable(
                f"only {len(nodes)} of the {min_nodes} {what} needed connected within "
                f"{timeout:g} s (schedule_timeout): start more clients, lower min_clients "
                "or raise schedule_timeout"
            )
        if now - last_logged >= 5.0:
            log(INFO, "Waiting for %s: %d connected, %d needed", what, len(nodes), min_nodes)
            last_logged = now
        time.sleep(min(0.2, max(deadline - now, 0.0)))


@dataclass
class ExchangeResult:
    """Replies by destination node, and the nodes that did not answer in time."""

    replies: dict[int, Message] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)
    seconds: float = 0.0


def push(grid: Grid, messages: Iterable[Message]) -> dict[str, int]:
    """Push messages; return ``{message id: destination node}``."""
    messages = list(messages)
    ids = list(grid.push_messages(messages))
    return {
        mid: msg.metadata.dst_node_id
        for mid, msg in zip(ids, messages, strict=True)
        if mid
    }


def poll_delay(waited: float, floor: float, cap: float = MAX_POLL_INTERVAL) -> float:
    """The pause before the next pull after ``waited`` seconds of waiting.

    ``floor`` at first, then ``POLL_BACKOFF`` of the time waited, at most ``cap`` (and never
    below ``floor``): quick replies are seen within ``floor``, and a long wait (a PSI chunk,
    a slow node) costs the link a pull every ``cap`` seconds rather than every ``floor``. In
    deployment each pull is a query of the SuperLink's database: at 5 ms it took 0.4 core.
    """
    return max(floor, min(cap, waited * POLL_BACKOFF))


def pull(
    grid: Grid,
    pending: dict[str, int],
    timeout: float,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    wake: threading.Event | None = None,
) -> ExchangeResult:
    """Pull the replies to ``pending`` until all arrived or ``timeout`` seconds passed.

    ``wake``: an event set when a reply may have arrived (``compat.reply_event`` in
    simulation); the loop then pulls at once instead of at its next poll.
    """
    start = time.monotonic()
    deadline = start + timeout
    pending = dict(pending)
    result = ExchangeResult()
    while pending:
        if wake is not None:
            wake.clear()  # before the pull: a reply stored during it ends the next wait at once
        for reply in grid.pull_messages(list(pending)):
            node = pending.pop(reply.metadata.reply_to_message_id, None)
            if node is not None:
                result.replies[node] = reply
        now = time.monotonic()
        if not pending or now >= deadline:
            break
        if wake is None:
            time.sleep(poll_delay(now - start, poll_interval))
        else:
            wake.wait(poll_delay(now - start, poll_interval))
    result.missing = sorted(pending.values())
    result.seconds = time.monotonic() - start
    return result


def exchange(
    grid: Grid,
    messages: Iterable[Message],
    timeout: float,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    meanwhile: Callable[[], None] | None = None,
) -> ExchangeResult:
    """Push ``messages`` and pull their replies (at most ``timeout`` seconds of pulling).

    ``meanwhile`` runs between the push and the first pull (work that needs no reply, done
    while the nodes compute). The result's ``seconds`` covers the push too (Flower's
    transport in deployment), not ``meanwhile``.
    """
    start = time.monotonic()
    pending = push(grid, messages)
    busy = 0.0
    if meanwhile is not None:
        tick = time.monotonic()
        meanwhile()
        busy = time.monotonic() - tick
    result = pull(grid, pending, timeout, poll_interval, compat.reply_event(grid))
    result.seconds = time.monotonic() - start - busy
    return result
