"""FedAvgWithClientLimits and FedSGD against hand-computed expectations (in-process grid)."""

from __future__ import annotations

import numpy as np
import pytest
from fakegrid import FakeGrid
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from alphafed_flwr.strategies import (
    FULL_BATCH_QUERY,
    FedAvgWithClientLimits,
    FedSGD,
    FullBatchRefused,
    NodesUnavailable,
    RoundFailed,
)


def arrays(w: float, count: int = 0, dtype: str = "float32") -> ArrayRecord:
    return ArrayRecord(
        {
            "w": Array(np.full((2, 2), w, dtype=dtype)),
            "count": Array(np.array(count, dtype=np.int64)),
        }
    )


def replier(w: float, n: int, count: int = 0):
    """A node that answers TRAIN with weights ``w`` (everywhere) and ``n`` samples."""

    def handle(msg: Message, context) -> Message:  # noqa: ANN001
        return Message(
            RecordDict({"arrays": arrays(w, count), "metrics": MetricRecord({"num-examples": n})}),
            reply_to=msg,
        )

    return handle


def run(strategy, handlers, rounds=1, initial=None, **kw):  # noqa: ANN001, ANN201
    grid = FakeGrid(handlers)
    result = strategy.start(grid, initial or arrays(0.0), num_rounds=rounds, **kw)
    return result, grid


def test_weighted_mean_by_sample_count_keeps_integer_buffers_integer() -> None:
    strategy = FedAvgWithClientLimits(min_clients=2, schedule_timeout=1)
    result, _ = run(strategy, {1: replier(1.0, 10, count=3), 2: replier(4.0, 30, count=4)})
    # (1*10 + 4*30) / 40 = 3.25; counts (3*10 + 4*30)/40 = 3.75 -> 4, int64 kept
    np.testing.assert_allclose(result.arrays["w"].numpy(), np.full((2, 2), 3.25))
    count = result.arrays["count"].numpy()
    assert count.dtype == np.int64 and int(count) == 4


def test_unweighted_mean_is_available() -> None:
    strategy = FedAvgWithClientLimits(min_clients=2, schedule_timeout=1, weighted=False)
    result, _ = run(strategy, {1: replier(1.0, 10), 2: replier(4.0, 30)})
    np.testing.assert_allclose(result.arrays["w"].numpy(), np.full((2, 2), 2.5))


def test_sampling_stays_between_min_and_max_clients() -> None:
    strategy = FedAvgWithClientLimits(min_clients=2, max_clients=3, schedule_timeout=1, seed=1)
    handlers = {n: replier(1.0, 1) for n in range(1, 7)}
    _, grid = run(strategy, handlers, rounds=4)
    per_round: dict[str, set[int]] = {}
    for msg in (m for m in grid.sent if m.metadata.message_type == "train"):
        per_round.setdefault(msg.metadata.group_id, set()).add(msg.metadata.dst_node_id)
    assert sorted(len(v) for v in per_round.values()) == [3, 3, 3, 3]


def test_waits_for_min_clients_then_fails_clearly() -> None:
    strategy = FedAvgWithClientLimits(min_clients=3, schedule_timeout=0.3)
    with pytest.raises(NodesUnavailable, match="only 2 of the 3 clients"):
        run(strategy, {1: replier(1.0, 1), 2: replier(1.0, 1)})


def test_bad_updates_are_rejected_and_never_aggregated() -> None:
    def wrong_shape(msg, context):  # noqa: ANN001, ANN202
        bad = ArrayRecord({"w": Array(np.ones((3, 2), np.float32)), "count": Array(np.array(0))})
        return Message(RecordDict({"arrays": bad, "metrics": MetricRecord({"num-examples": 5})}), reply_to=msg)

    def nan(msg, context):  # noqa: ANN001, ANN202
        return Message(
            RecordDict({"arrays": arrays(float("nan")), "metrics": MetricRecord({"num-examples": 5})}),
            reply_to=msg,
        )

    def wrong_dtype(msg, context):  # noqa: ANN001, ANN202
        return Message(
            RecordDict({"arrays": arrays(9.0, dtype="float64"), "metrics": MetricRecord({"num-examples": 5})}),
            reply_to=msg,
        )

    strategy = FedAvgWithClientLimits(min_clients=1, schedule_timeout=1)
    result, _ = run(strategy, {1: replier(2.0, 5), 2: wrong_shape, 3: nan, 4: wrong_dtype})
    np.testing.assert_allclose(result.arrays["w"].numpy(), np.full((2, 2), 2.0))
    assert result.train_metrics_clientapp[1]["num-results"] == 1


def test_too_few_results_retry_from_the_unchanged_global_state_then_fail() -> None:
    calls: list[float] = []

    def flaky(msg, context):  # noqa: ANN001, ANN202
        calls.append(float(msg.content["arrays"]["w"].numpy().mean()))
        return None  # never answers

    strategy = FedAvgWithClientLimits(
        min_clients=2, schedule_timeout=1, calculation_timeout=0.05, max_round_retries=2
    )
    with pytest.raises(RoundFailed, match="fewer than 2 valid results"):
        run(strategy, {1: replier(5.0, 1), 2: flaky}, initial=arrays(0.5))
    assert calls == [0.5, 0.5, 0.5]  # every attempt started from the same global state


def test_a_round_recovers_when_a_retry_gets_enough_results() -> None:
    attempts = {"n": 0}

    def second_time_lucky(msg, context):  # noqa: ANN001, ANN202
        attempts["n"] += 1
        return replier(3.0, 1)(msg, context) if attempts["n"] > 1 else None

    strategy = FedAvgWithClientLimits(min_clients=2, schedule_timeout=1, calculation_timeout=0.05)
    result, _ = run(strategy, {1: replier(1.0, 1), 2: second_time_lucky})
    np.testing.assert_allclose(result.arrays["w"].numpy(), np.full((2, 2), 2.0))


class StopAfter:
    """Hooks that stop after ``n`` rounds and ask for client evaluation on the last."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.ends: list[int] = []
        self.evaluated: list[int] = []

    def on_round_end(self, server_round, arrays, train_metrics):  # noqa: ANN001, ANN201
        from alphafed_flwr.strategies import RoundOutcome

        self.ends.append(server_round)
        return RoundOutcome(stop=server_round >= self.n, evaluate_clients=server_round >= self.n)

    def on_client_evaluation(self, server_round, replies):  # noqa: ANN001, ANN201
        self.evaluated.append(server_round)

    def local_train(self, server_round, arrays, config):  # noqa: ANN001, ANN201
        return None


def test_hooks_stop_early_and_trigger_evaluation() -> None:
    def node(msg, context):  # noqa: ANN001, ANN202
        if msg.metadata.message_type == "evaluate":
            return Message(RecordDict({"m": MetricRecord({"accuracy": 0.5, "num-examples": 3})}), reply_to=msg)
        return replier(1.0, 1)(msg, context)

    hooks = StopAfter(2)
    strategy = FedAvgWithClientLimits(min_clients=1, schedule_timeout=1)
    result, _ = run(strategy, {1: node}, rounds=10, hooks=hooks)
    assert hooks.ends == [1, 2] and hooks.evaluated == [2]
    assert result.evaluate_metrics_clientapp[2]["accuracy"] == pytest.approx(0.5)


def fedsgd_node(batch: int, size: int, w: float):
    def handle(msg, context):  # noqa: ANN001, ANN202
        if msg.metadata.message_type == FULL_BATCH_QUERY:
            ok = batch == size
            answer = ConfigRecord(
                {"ok": ok, "batch-size": batch, "dataset-size": size,
                 "reason": "" if ok else f"batch_size={batch} but its dataset has {size} samples"}
            )
            return Message(RecordDict({"full_batch": answer}), reply_to=msg)
        return replier(w, size)(msg, context)

    return handle


def test_fedsgd_uses_every_node_after_checking_full_batch_loaders() -> None:
    result, grid = run(FedSGD(min_clients=2, schedule_timeout=1), {1: fedsgd_node(10, 10, 1.0), 2: fedsgd_node(30, 30, 2.0)})
    np.testing.assert_allclose(result.arrays["w"].numpy(), np.full((2, 2), 1.75))
    types = [m.metadata.message_type for m in grid.sent if m.metadata.message_type != "evaluate"]
    assert types == [FULL_BATCH_QUERY, FULL_BATCH_QUERY, "train", "train"]


def test_fedsgd_refuses_a_non_full_batch_node_before_any_training() -> None:
    strategy = FedSGD(min_clients=2, schedule_timeout=1)
    grid = FakeGrid({1: fedsgd_node(10, 10, 1.0), 2: fedsgd_node(64, 300, 1.0)})
    with pytest.raises(FullBatchRefused, match="batch_size=64 but its dataset has 300"):
        strategy.start(grid, arrays(0.0), num_rounds=1)
    assert all(m.metadata.message_type == FULL_BATCH_QUERY for m in grid.sent)
