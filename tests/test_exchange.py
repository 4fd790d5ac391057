"""The bounded pull loop: back-off of its polls, timeouts, replies by node."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from alphafed_flwr.strategies import exchange
from alphafed_flwr.strategies.exchange import MAX_POLL_INTERVAL, poll_delay, pull


def test_poll_delay_starts_at_the_floor_grows_with_the_wait_and_is_capped() -> None:
    assert poll_delay(0.0, 0.005) == 0.005
    assert poll_delay(0.02, 0.005) == 0.005
    assert poll_delay(0.5, 0.005) == pytest.approx(0.05)
    assert poll_delay(60.0, 0.005) == MAX_POLL_INTERVAL
    assert poll_delay(60.0, 0.5) == 0.5  # a floor above the cap wins
    delays = [poll_delay(t / 10, 0.005) for t in range(200)]
    assert delays == sorted(delays)


class _Grid:
    """Answers message ``m1`` on the ``answer_at``-th pull; records every pull."""

    def __init__(self, answer_at: int) -> None:
        self.pulls, self.answer_at = 0, answer_at

    def pull_messages(self, ids: list[str]) -> list[Any]:
        self.pulls += 1
        if self.pulls < self.answer_at:
            return []
        meta = SimpleNamespace(reply_to_message_id="m1")
        return [SimpleNamespace(metadata=meta)]


def test_pull_sleeps_by_poll_delay_and_returns_the_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = {"now": 0.0}
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock["now"] += seconds

    monkeypatch.setattr(exchange.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(exchange.time, "sleep", sleep)
    grid = _Grid(answer_at=40)
    result = pull(grid, {"m1": 7}, timeout=600.0)  # type: ignore[arg-type]
    assert list(result.replies) == [7] and result.missing == []
    assert slept == [poll_delay(sum(slept[:i]), 0.005) for i in range(len(slept))]
    assert slept[0] == 0.005 and slept[-1] > 0.005


def test_pull_reports_the_nodes_that_missed_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = {"now": 0.0}
    monkeypatch.setattr(exchange.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(exchange.time, "sleep", lambda s: clock.__setitem__("now", clock["now"] + s))
    grid = _Grid(answer_at=10**9)
    result = pull(grid, {"m1": 3}, timeout=5.0)  # type: ignore[arg-type]
    assert result.replies == {} and result.missing == [3]
    assert grid.pulls < 5.0 / 0.005 / 4  # backed off, not 1,000 pulls


def test_meanwhile_runs_between_push_and_pull_and_is_not_transport_time(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = {"now": 0.0}
    order: list[str] = []
    monkeypatch.setattr(exchange.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(exchange.time, "sleep", lambda s: clock.__setitem__("now", clock["now"] + s))

    class Grid(_Grid):
        def push_messages(self, messages: list[Any]) -> list[str]:
            order.append("push")
            return ["m1"]

        def pull_messages(self, ids: list[str]) -> list[Any]:
            order.append("pull")
            return super().pull_messages(ids)

    def meanwhile() -> None:
        order.append("meanwhile")
        clock["now"] += 2.0  # the host's own work: not the exchange's

    message = SimpleNamespace(metadata=SimpleNamespace(dst_node_id=7))
    result = exchange.exchange(Grid(answer_at=1), [message], timeout=5.0, meanwhile=meanwhile)  # type: ignore[arg-type]
    assert order == ["push", "meanwhile", "pull"]
    assert list(result.replies) == [7] and result.seconds == 0.0


def test_pull_waits_on_the_reply_event_instead_of_sleeping(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    class Wake:
        def clear(self) -> None:
            waits.append(-1.0)

        def wait(self, seconds: float) -> bool:
            waits.append(seconds)
            return True

    monkeypatch.setattr(exchange.time, "sleep", lambda s: pytest.fail("slept"))
    result = pull(_Grid(answer_at=3), {"m1": 7}, timeout=600.0, wake=Wake())  # type: ignore[arg-type]
    assert list(result.replies) == [7]
    assert waits[::2] == [-1.0] * 3 and len(waits) == 5  # cleared before each of the 3 pulls, 2 waits
