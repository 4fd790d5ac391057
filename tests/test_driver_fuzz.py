"""Property tests (hypothesis) of update validation: arbitrary replies are rejected clearly,
never raise, never reach a strategy unchecked and never change the global state."""

from __future__ import annotations

import io

import numpy as np
from fakegrid import FakeGrid
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from alphafed_flwr.strategies import DriverConfig, RoundDriver, RoundFailed
from alphafed_flwr.strategies.aggregation import reply_problem, update_problem


def reference() -> ArrayRecord:
    return ArrayRecord({"w": Array(np.ones((2, 3), np.float32)), "count": Array(np.array(4, np.int64))})


DTYPES = st.sampled_from(["float16", "float32", "float64", "int8", "int32", "int64", "uint8", "bool"])
KEYS = st.sampled_from(["w", "count", "x", "", "w.bias"])


@st.composite
def numpy_arrays(draw: st.DrawFn) -> Array:
    dtype = draw(DTYPES)
    shape = draw(st.sampled_from([(), (2, 3), (3, 2), (2,), (0,), (2, 3, 1)]))
    return Array(draw(hnp.arrays(np.dtype(dtype), shape)))


@st.composite
def raw_arrays(draw: st.DrawFn) -> Array:
    """Arrays whose metadata may lie and whose bytes may be anything (or another format)."""
    data = draw(st.one_of(st.binary(max_size=64), st.just(_npz_bytes())))
    shape = draw(st.sampled_from([(2, 3), (), (1, 2, 3)]))
    return Array(dtype=draw(st.sampled_from(["float32", "int64", "object", "<U3"])), shape=shape,
                 stype=draw(st.sampled_from(["numpy.ndarray", "torch", ""])), data=data)


def _npz_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, a=np.ones((2, 3), np.float32))
    return buffer.getvalue()


METRIC_VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.floats(), max_size=3),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)


@st.composite
def metric_records(draw: st.DrawFn) -> MetricRecord:
    values = draw(st.dictionaries(st.sampled_from(["num-examples", "loss", "train_loss", "acc"]), METRIC_VALUES))
    record = MetricRecord()
    record.__dict__["_data"] = values  # as if a peer's bytes decoded to anything
    return record


@st.composite
def matching_arrays(draw: st.DrawFn) -> dict[str, Array]:
    """The global keys, dtypes and shapes with any values (NaN, inf, huge), sometimes one off."""
    arrays = {
        "w": Array(draw(hnp.arrays(np.float32, (2, 3)))),
        "count": Array(draw(hnp.arrays(np.int64, ()))),
    }
    if draw(st.integers(0, 3)) == 0:
        arrays[draw(KEYS)] = draw(st.one_of(numpy_arrays(), raw_arrays()))
    return arrays


@st.composite
def contents(draw: st.DrawFn) -> RecordDict:
    if draw(st.booleans()):  # the right structure, so that the deeper checks are reached
        weight = draw(st.one_of(st.integers(1, 100), METRIC_VALUES))
        metrics = draw(metric_records())
        metrics.__dict__["_data"]["num-examples"] = weight
        return RecordDict({"arrays": ArrayRecord(draw(matching_arrays())), "metrics": metrics})
    arrays = draw(st.dictionaries(KEYS, st.one_of(numpy_arrays(), raw_arrays()), max_size=3))
    record = RecordDict()
    for name in draw(st.lists(st.sampled_from(["arrays", "other"]), max_size=2, unique=True)):
        record[name] = ArrayRecord(arrays)
    for name in draw(st.lists(st.sampled_from(["metrics", "m2"]), max_size=2, unique=True)):
        record[name] = draw(metric_records())
    if draw(st.booleans()):
        record["config"] = ConfigRecord({"x": 1})
    return record


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(contents())
def test_reply_problem_never_raises_and_accepts_only_matching_updates(content: RecordDict) -> None:
    ref = reference()
    problem = reply_problem(content, ref)
    assert problem is None or (isinstance(problem, str) and problem)
    if problem is None:
        assert list(content.array_records) == ["arrays"]
        assert update_problem(ref, content.array_records["arrays"]) is None
        weight = next(iter(content.metric_records.values()))["num-examples"]
        assert isinstance(weight, (int, float)) and 0 < weight <= 1_000_000


class Spy(FedAvg):
    def __init__(self) -> None:
        super().__init__(min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1)
        self.seen: list[RecordDict] = []

    def aggregate_train(self, server_round, replies):  # noqa: ANN001, ANN201
        replies = list(replies)
        self.seen.extend(m.content for m in replies)
        return super().aggregate_train(server_round, replies)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile=contents(), weighted=st.booleans())
def test_a_round_with_a_hostile_reply_never_corrupts_the_global_state(hostile: RecordDict, weighted: bool) -> None:
    ref = reference()
    before = {k: v.numpy().copy() for k, v in ref.items()}
    good = RecordDict({"arrays": reference(), "metrics": MetricRecord({"num-examples": 3})})
    handlers = {1: lambda m, c: Message(good, reply_to=m), 2: lambda m, c: Message(hostile, reply_to=m)}
    spy = Spy()
    driver = RoundDriver(spy, DriverConfig(schedule_timeout=1, calculation_timeout=0.2, weighted=weighted,
                                           max_round_retries=0))
    try:
        result = driver.run(FakeGrid(handlers), ref, 1)
    except RoundFailed as exc:  # a refused aggregate is a clear failure, never another exception
        assert "failed in 1 attempts" in str(exc)
    else:
        for key, value in result.arrays.items():
            assert value.dtype == ref[key].dtype and np.all(np.isfinite(value.numpy()))
    for key, value in before.items():
        np.testing.assert_array_equal(ref[key].numpy(), value)
    for content in spy.seen:
        assert reply_problem(content, reference(), max_num_examples=1_000_000) is None
