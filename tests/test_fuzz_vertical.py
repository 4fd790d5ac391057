"""Property-based fuzzing of what split learning decodes from peers (issue 10 §9).

- ``payload.decode`` of arbitrary RecordDicts: a dict of plain values, or ``PayloadError``;
- the host's handling of arbitrary collaborator replies (hello and exchanges): the run
  completes or stops with a ``StrategyError``; no other exception escapes the host loop, and
  nothing unchecked reaches the host's models (a stub host asserts every array it is given;
  the real host's models and checkpoints stay untouched when the first reply is refused).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from fakegrid import FakeGrid
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_vertical import TASK, fresh_process
from vertical_tasks import Collaborator, Host

from alphafed_flwr.adapters.templates import PickledTemplate
from alphafed_flwr.adapters.vertical_client import CollaboratorSettings, collaborator_client_app
from alphafed_flwr.adapters.vertical_host import VerticalHost, VerticalSettings, run_vertical_host
from alphafed_flwr.api import TaskFailed
from alphafed_flwr.api.errors import UserCodeError
from alphafed_flwr.strategies.checks import ArrayLedger, ArrayRejected, array_problem
from alphafed_flwr.strategies.errors import StrategyError
from alphafed_flwr.strategies import payload as payload_module
from alphafed_flwr.strategies.payload import PACKED, PayloadError, decode, encode
from alphafed_flwr.strategies.split_learning import EXCHANGE, HELLO, HostBatch, SplitLearning

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # generating arrays
FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))

# ----- generators ---------------------------------------------------------------------------
INT64 = st.integers(-(2**63), 2**63 - 1)
SCALAR = st.one_of(INT64, st.floats(), st.text(max_size=8), st.binary(max_size=8), st.booleans())
CONFIG_VALUE = st.one_of(
    SCALAR,
    *(st.lists(s, max_size=4) for s in (INT64, st.floats(), st.text(max_size=8), st.binary(max_size=8), st.booleans())),
)
DTYPES = st.one_of(
    hnp.floating_dtypes(), hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(), hnp.boolean_dtypes(),
    hnp.complex_number_dtypes(), hnp.unicode_string_dtypes(max_len=3), hnp.datetime64_dtypes(),
)
ARRAYS = hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
FEATURE_SHAPES = st.sampled_from([(4, 3), (4, 4), (2, 3), (4, 3, 1), (4,), (0, 3)])
FEATURE_LIKE = st.one_of(
    hnp.arrays(st.sampled_from([np.float32, np.float64, np.float16]), FEATURE_SHAPES,
               elements=st.one_of(st.floats(-10, 10, width=16), st.sampled_from([np.nan, np.inf, 1e30]))),
    hnp.arrays(np.int64, FEATURE_SHAPES, elements=st.integers(-5, 5)),
)


@st.composite
def raw_arrays(draw: st.DrawFn) -> Array:
    """Flower Arrays: valid, with tampered bytes, or with metadata that lies."""
    value = draw(ARRAYS)
    array = Array(value)
    how = draw(st.sampled_from(["valid", "truncate", "extend", "flip", "metadata", "stype", "garbage"]))
    data = array.data
    if how == "truncate":
        data = data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    elif how == "extend":
        data = data + draw(st.binary(min_size=1, max_size=16))
    elif how == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
    elif how == "garbage":
        data = draw(st.binary(max_size=200))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3))) if how == "metadata" else tuple(array.shape)
    stype = draw(st.text(max_size=12)) if how == "stype" else array.stype
    return Array(dtype=array.dtype, shape=shape, stype=stype, data=data)


NAMES = st.one_of(
    st.sampled_from(["scalars", "packed", "array.features", "seq.features", "map.features", "seq.test-features",
                     "array.grads", "seq.digests", "features"]),
    st.builds(lambda p, s: p + s, st.sampled_from(["array.", "map.", "seq.", ""]), st.text(max_size=6)),
)
PACKED_KEYS = st.one_of(st.text(max_size=8), st.builds(lambda p, s: p + s, st.sampled_from(["s.", "a.", "q."]),
                                                       st.sampled_from(["features", "x", ""])))
NPY_BYTES = st.builds(lambda a: a.data, raw_arrays())
PACKED_VALUE = st.one_of(CONFIG_VALUE, NPY_BYTES, st.lists(NPY_BYTES, max_size=3))
ARRAY_KEYS = st.one_of(st.sampled_from(["v", "0", "1", "2"]), st.text(max_size=4))


@st.composite
def record_dicts(draw: st.DrawFn) -> RecordDict:
    """Arbitrary RecordDicts of the three record kinds, under names ``encode`` uses and others."""
    content = RecordDict()
    for name in draw(st.lists(NAMES, max_size=4, unique=True)):
        kind = draw(st.sampled_from(["array", "config", "metric"]))
        if kind == "array":
            content[name] = ArrayRecord(draw(st.dictionaries(ARRAY_KEYS, raw_arrays(), max_size=3)))
        elif kind == "config" and name == "packed":
            content[name] = ConfigRecord(draw(st.dictionaries(PACKED_KEYS, PACKED_VALUE, max_size=4)))
        elif kind == "config":
            content[name] = ConfigRecord(draw(st.dictionaries(st.text(max_size=8), CONFIG_VALUE, max_size=4)))
        else:
            content[name] = MetricRecord(draw(st.dictionaries(st.text(max_size=8), st.floats(allow_nan=False), max_size=2)))
    return content


REPLY_KEYS = ["batches", "features", "digests", "test-features", "test-digests", "time-model", "time-handler",
              "role", "feature-key", "features.codec", "features.scale", "features.index", "features.shape"]
REPLY_VALUES = st.one_of(
    CONFIG_VALUE, ARRAYS, st.lists(FEATURE_LIKE, min_size=1, max_size=3), st.lists(ARRAYS, min_size=1, max_size=2),
    st.dictionaries(st.text(max_size=3), FEATURE_LIKE, min_size=1, max_size=2), st.integers(-3, 6),
)


@st.composite
def replies(draw: st.DrawFn) -> RecordDict:
    """Reply contents: arbitrary RecordDicts, or protocol-shaped payloads with hostile values."""
    if draw(st.booleans()):
        return draw(record_dicts())
    payload = draw(st.dictionaries(st.sampled_from(REPLY_KEYS), REPLY_VALUES, max_size=6))
    if draw(st.booleans()):  # often a plausible start of a round
        payload.setdefault("batches", draw(st.sampled_from([2, 1, 3, 0, -1, True, 2**62])))
        payload.setdefault("features", draw(st.lists(FEATURE_LIKE, min_size=1, max_size=2)))
    return encode(payload)


# ----- payload decoding ---------------------------------------------------------------------
def _plain(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return not value.dtype.hasobject
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return isinstance(value, (int, float, str, bytes, bool))


@FUZZ
@given(record_dicts())
def test_decoding_arbitrary_record_dicts_returns_plain_values_or_a_payload_error(content: RecordDict) -> None:
    try:
        out = decode(content)
    except PayloadError as exc:
        assert str(exc)
        return
    assert isinstance(out, dict) and all(_plain(v) for v in out.values())


@FUZZ
@pytest.mark.parametrize("pack_limit", [payload_module.PACK_LIMIT, -1], ids=["packed", "array-records"])
@given(st.dictionaries(st.text(max_size=8), st.one_of(CONFIG_VALUE, ARRAYS, st.lists(ARRAYS, min_size=1, max_size=3),
                                                       st.dictionaries(st.text(max_size=3), ARRAYS, max_size=2))))
def test_decode_inverts_encode(monkeypatch: pytest.MonkeyPatch, pack_limit: int, payload: dict[str, Any]) -> None:
    monkeypatch.setattr(payload_module, "PACK_LIMIT", pack_limit)
    content = encode(payload)
    assert (PACKED in content) == (pack_limit >= 0)
    out = decode(content)
    assert set(out) == set(payload)
    for key, value in payload.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(out[key], value)
            assert out[key].dtype == value.dtype
        elif isinstance(value, list) and value and isinstance(value[0], np.ndarray):
            assert len(out[key]) == len(value)
            for a, b in zip(out[key], value, strict=True):
                np.testing.assert_array_equal(a, b)
        elif isinstance(value, dict):
            assert set(out[key]) == set(value)
        elif not (isinstance(value, float) and np.isnan(value)):
            assert out[key] == value


def test_an_array_whose_header_announces_more_than_it_carries_is_refused() -> None:
    array = Array(np.zeros(3, dtype=np.float32))
    bomb = array.data.replace(b"(3,)", b"(10000000000,)")
    content = RecordDict({"array.x": ArrayRecord({"v": Array(dtype="float32", shape=(3,), stype=array.stype, data=bomb)})})
    with pytest.raises(PayloadError, match="announces 40000000000 bytes"):
        decode(content)
    with pytest.raises(PayloadError, match="announces 40000000000 bytes"):
        decode(RecordDict({PACKED: ConfigRecord({"a.x": bomb})}))


def test_small_arrays_travel_packed_and_large_ones_in_array_records() -> None:
    small = [np.ones((128, 64), np.float32)]
    large = [np.ones((payload_module.PACK_LIMIT // 4 + 1,), np.float32)]
    assert sorted(encode({"round": 1, "grads": small, "maps": {"w": np.zeros(2)}})) == ["map.maps", PACKED]
    assert sorted(encode({"round": 1, "grads": large})) == ["scalars", "seq.grads"]
    for arrays in (small, large):
        out = decode(encode({"round": 1, "grads": arrays}))
        assert out["round"] == 1
        np.testing.assert_array_equal(out["grads"][0], arrays[0])


def test_a_packed_record_may_not_send_a_key_twice_or_alongside_scalars() -> None:
    array = encode({"x": np.ones(2)})[PACKED]["a.x"]
    with pytest.raises(PayloadError, match="twice"):
        decode(RecordDict({PACKED: ConfigRecord({"a.x": array, "s.x": 1})}))
    with pytest.raises(PayloadError, match="unexpected records"):
        decode(RecordDict({PACKED: ConfigRecord({"s.x": 1}), "scalars": ConfigRecord({"y": 2})}))


# ----- the host's handling of arbitrary replies ---------------------------------------------
class StubHost:
    """A SplitLearningHost (two float32 batches of 4) that asserts every array it is given:
    float32 like its own, 4 rows, finite, bounded, and the trailing shape of the party's
    first array (which is the reference: no party declares its width beforehand)."""

    feature_key = "host"

    def __init__(self) -> None:
        self.trained: list[dict[str, np.ndarray]] = []
        self.batches = 0
        self.ended: list[int] = []
        self.tails: dict[str, tuple[int, ...]] = {}

    def _assert_checked(self, key: str, value: np.ndarray) -> None:
        assert value.dtype == np.float32 and value.ndim >= 1 and value.shape[0] == 4
        assert np.isfinite(value).all() and np.abs(value).max() <= 1e6
        assert self.tails.setdefault(key, value.shape[1:]) == value.shape[1:]

    def hello(self) -> dict[str, Any]:
        return {}

    def prepare(self, collaborators: dict, exchange: Any) -> int:
        return 1

    def begin_round(self, server_round: int) -> dict[str, Any]:
        self.batches = 0
        return {}

    def next_batch(self) -> HostBatch | None:
        self.batches += 1
        return HostBatch(4, "", "float32") if self.batches <= 2 else None

    def train_batch(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for key, value in features.items():
            self._assert_checked(key, value)
        self.trained.append(features)
        return {key: np.ones_like(value) for key, value in features.items()}

    def is_test_round(self, server_round: int) -> bool:
        return True

    def test_batches(self) -> list[HostBatch]:
        return [HostBatch(4, "", "float32")]

    def test(self, features: dict[str, list[np.ndarray]]) -> dict[str, float]:
        for key, batches in features.items():
            for value in batches:
                self._assert_checked(key, value)
        return {"accuracy": 1.0}

    def is_finished(self, server_round: int) -> bool:
        return False

    def end_round(self, server_round: int, test: dict, seconds: float, stats: dict) -> None:
        self.ended.append(server_round)


def honest_reply(request: dict[str, Any]) -> dict[str, Any]:
    """What a well-behaved collaborator with two training batches of 4 answers."""
    reply: dict[str, Any] = {"time-model": 0.0, "time-handler": 0.0}
    if request.get("begin"):
        reply["batches"] = 2
    send = request.get("send") or []
    if send:
        reply["features"] = [np.full((4, 3), 0.5, np.float32) for _ in send]
        reply["digests"] = ["" for _ in send]
    if request.get("test"):
        reply["test-features"], reply["test-digests"] = [np.full((4, 3), 0.5, np.float32)], [""]
    return reply


def stub_grid(fuzzed: RecordDict, at: int) -> FakeGrid:
    """One collaborator 'c1' that answers honestly, except the ``at``-th message (0: the
    hello), whose reply content is ``fuzzed``."""
    count = {"n": -1}

    def handler(message: Message, context: Context) -> Message:
        count["n"] += 1
        if count["n"] == at:
            return Message(fuzzed, reply_to=message)
        if message.metadata.message_type == HELLO:
            return Message(encode({"role": "collaborator", "feature-key": "c1"}), reply_to=message)
        assert message.metadata.message_type == EXCHANGE
        return Message(encode(honest_reply(decode(message.content))), reply_to=message)

    return FakeGrid({7: handler})


@FUZZ
@given(replies(), st.integers(0, 3))
@example(encode({"role": np.zeros(0, np.float16)}), 0)  # found by this test: an array as the role
@example(encode({"role": "collaborator", "feature-key": np.ones(2)}), 0)
@example(encode({"batches": 2, "features": [np.zeros((4, 3), np.float32)], "features.codec": np.zeros(0)}), 1)
def test_arbitrary_replies_are_refused_cleanly_and_never_reach_the_host(fuzzed: RecordDict, at: int) -> None:
    host = StubHost()
    strategy = SplitLearning(1, schedule_timeout=0.5, calculation_timeout=0.5)
    try:
        strategy.start(stub_grid(fuzzed, at), host, 1)
    except StrategyError as exc:
        assert str(exc)
        assert host.ended == []  # a refused round is never recorded (nor checkpointed)
        if at == 0:  # a refused hello: nothing was trained
            assert host.trained == []
        return
    assert host.ended == [1]


# ----- the real host --------------------------------------------------------------------------
@settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(replies())
def test_a_refused_first_reply_leaves_the_real_host_untouched(tmp_path_factory: pytest.TempPathFactory,
                                                              fuzzed: RecordDict) -> None:
    out = tmp_path_factory.mktemp("fuzz")
    sources = [PickledTemplate(Collaborator())]
    app = collaborator_client_app(lambda ctx: sources[0], lambda ctx: CollaboratorSettings(TASK, str(out)))

    def hostile(message: Message, context: Context) -> Message | None:
        reply = app(message, context)
        if message.metadata.message_type == EXCHANGE and decode(message.content).get("begin"):
            reply.content = fuzzed
        return reply

    grid = FakeGrid({100: hostile}, {100: {"partition-id": 0}})
    grid.before_message = fresh_process
    vertical = VerticalHost(Host(), VerticalSettings(out_dir=out, task_id=TASK, rounds=1))
    before = {k: v.clone() for m in (vertical.scheduler.feature_model, vertical.scheduler.infer_model)
              for k, v in m.state_dict().items()}
    trained: list[int] = []
    train_batch = vertical.train_batch
    vertical.train_batch = lambda features: trained.append(1) or train_batch(features)  # type: ignore[method-assign]
    try:
        run_vertical_host(grid, vertical, SplitLearning(1, schedule_timeout=2, calculation_timeout=5))
    except (TaskFailed, UserCodeError) as exc:
        # UserCodeError: a first batch of another width (the party's reference) fails in
        # train_a_batch, named with the batch and every party's shape
        assert isinstance(exc, TaskFailed) or "training batch 1; features" in str(exc)
        assert vertical.checkpoints.rounds() == []
        if not trained:
            after = {k: v for m in (vertical.scheduler.feature_model, vertical.scheduler.infer_model)
                     for k, v in m.state_dict().items()}
            assert all(torch.equal(before[k], after[k]) for k in before)
        return
    for model in (vertical.scheduler.feature_model, vertical.scheduler.infer_model):
        assert all(torch.isfinite(p).all() for p in model.parameters())


# ----- the shared array checks ----------------------------------------------------------------
@FUZZ
@given(hnp.arrays(st.one_of(hnp.floating_dtypes(), hnp.integer_dtypes(), hnp.boolean_dtypes(),
                            hnp.complex_number_dtypes()),
                  hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3)))
def test_check_array_accepts_exactly_finite_bounded_floating_arrays(array: np.ndarray) -> None:
    floating = np.issubdtype(array.dtype, np.floating) and array.ndim >= 1
    acceptable = floating and (array.size == 0 or (np.isfinite(array).all() and np.abs(array).max() <= 1e6))
    assert (array_problem(array) is None) == acceptable


def test_a_ledger_learns_only_from_accepted_arrays() -> None:
    ledger = ArrayLedger(max_abs=10)
    with pytest.raises(ArrayRejected, match=r"batch 1 from collaborator 'c1' rejected: absolute values up to 11"):
        ledger.check("collaborator 'c1'", "features", "batch 1", np.full((2, 5), 11, np.float32))
    ledger.check("collaborator 'c1'", "features", "batch 2", np.zeros((2, 3), np.float32))  # the reference
    ledger.check("collaborator 'c2'", "features", "batch 2", np.zeros((2, 4), np.float64))  # per party
    with pytest.raises(ArrayRejected, match=r"shape \(2, 5\) does not match \(batch, 3\)"):
        ledger.check("collaborator 'c1'", "features", "batch 3", np.zeros((2, 5), np.float32))
    with pytest.raises(ArrayRejected, match="dtype float64 differs from float32"):
        ledger.check("collaborator 'c1'", "features", "batch 3", np.zeros((7, 3), np.float64))
    with pytest.raises(ValueError, match="max_abs must be a positive number"):
        ArrayLedger(max_abs=float("nan"))
