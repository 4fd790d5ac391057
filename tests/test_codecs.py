"""Codecs of exchanged arrays: round trips, sizes, and hostile encoded payloads."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from alphafed_flwr.strategies.checks import ArrayRejected
from alphafed_flwr.strategies.codecs import (
    Codec,
    CodecError,
    ExchangeCodecs,
    decode_request,
    encode_reply,
    pack,
    payload_bytes,
    unpack,
)
from alphafed_flwr.strategies.payload import decode, encode

RNG = np.random.default_rng(0)
BATCH = [RNG.normal(size=(128, 64)).astype(np.float32) for _ in range(3)]


def wire(payload: dict) -> dict:
    """Through Flower records and back, as on the network."""
    return decode(encode(payload))


@pytest.mark.parametrize(
    ("spec", "ratio", "tolerance"),
    [("float32", 1.0, 0.0), ("fp16", 2.0, 2e-3), ("int8", 8192 / 2049, None), ("topk:1", 1.0, 2e-3)],
)
def test_round_trips_and_sizes(spec: str, ratio: float, tolerance: float | None) -> None:
    codec = Codec.parse(spec)
    got = unpack(wire(pack("grads", BATCH, codec)), "grads", "the host")
    raw = sum(a.nbytes for a in BATCH)
    assert raw / payload_bytes(pack("grads", BATCH, codec), "grads") == pytest.approx(ratio, rel=1e-3)
    for want, have in zip(BATCH, got, strict=True):
        assert have.dtype == np.float32 and have.shape == want.shape
        # int8: within half a quantisation step of the per-tensor scale
        bound = np.abs(want).max() / 127 / 2 + 1e-7 if tolerance is None else tolerance
        assert np.abs(have - want).max() <= bound


def test_topk_keeps_the_largest_values_and_zeroes_the_rest() -> None:
    x = np.array([[0.1, -5.0, 0.2], [3.0, 0.0, -0.3]], dtype=np.float32)
    (got,) = unpack(wire(pack("f", [x], Codec("topk", 0.33))), "f", "c")
    np.testing.assert_array_equal(got, [[0, -5.0, 0], [3.0, 0, 0]])
    big = np.ones((300, 300), dtype=np.float32)  # more than 65,536 values: uint32 positions
    assert pack("f", [big], Codec("topk", 0.01))["f.index"][0].dtype == np.uint32


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
               elements=st.floats(-1e4, 1e4, width=32)),
    st.sampled_from(["float32", "fp16", "int8", "topk:0.3", "topk:1"]),
)
def test_any_array_round_trips_within_its_codec_error(x: np.ndarray, spec: str) -> None:
    (got,) = unpack(wire(pack("f", [x], Codec.parse(spec))), "f", "c")
    assert got.shape == x.shape and got.dtype == np.float32
    if spec == "float32":
        np.testing.assert_array_equal(got, x)
    elif spec == "topk:1":
        np.testing.assert_array_equal(got, x.astype(np.float16).astype(np.float32))
    elif spec == "int8":
        assert np.abs(got - x).max(initial=0) <= np.abs(x).max(initial=0) / 254 * 1.001 + 1e-6


@pytest.mark.parametrize("values", [[1e-45, 0.0], [1e-40], [-1e-38, 2e-39]])
def test_int8_keeps_tiny_values_decodable(values: list[float]) -> None:
    """A top value below 127 x the smallest float32 once made a scale of 0, refused on decoding."""
    x = np.array(values, dtype=np.float32)
    (got,) = unpack(wire(pack("f", [x], Codec("int8"))), "f", "c")
    step = np.abs(x).max() / 127 + np.finfo(np.float32).smallest_subnormal  # subnormal scales round
    assert np.all(np.isfinite(got)) and np.abs(got - x).max() <= step


def test_exchange_requests_and_replies_use_the_asked_codecs() -> None:
    codecs = ExchangeCodecs.parse({"features": "int8", "gradients": "fp16"})
    request, sent = codecs.encode_request({"round": 1, "grads": BATCH, "apply": [0, 1, 2]})
    assert sent == {"bytes-gradients": sum(a.nbytes for a in BATCH) // 2}
    grads = decode_request(wire(request))["grads"]
    assert [g.dtype for g in grads] == [np.float32] * 3
    reply = encode_reply({"features": BATCH, "test-features": BATCH[:1], "batches": 3}, wire(request))
    back, sizes = codecs.decode_reply(wire(reply), "collaborator 'c'")
    assert back["batches"] == 3 and len(back["features"]) == 3 and len(back["test-features"]) == 1
    assert sizes["bytes-features"] == 3 * (128 * 64 + 4)
    assert not [k for k in back if k.startswith("features.")]


def int8_reply() -> dict:
    return wire(pack("features", BATCH[:2], Codec("int8")))


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda p: p.update({"features.codec": "zip"}), "unknown codec"),
        (lambda p: p.update({"features.codec": 7}), "must be text"),
        (lambda p: p["features.scale"].pop(), "one length"),
        (lambda p: p["features.scale"].__setitem__(0, np.array([np.nan], np.float32)), "positive finite"),
        (lambda p: p["features.scale"].__setitem__(0, np.array([-1.0], np.float32)), "positive finite"),
        (lambda p: p["features.scale"].__setitem__(0, np.array([1.0, 2.0], np.float32)), "one positive"),
        (lambda p: p["features"].__setitem__(0, p["features"][0].astype(np.int16)), "int8 array"),
        (lambda p: p["features"].__setitem__(0, np.full((2, 2), -128, np.int8)), "[-127, 127]"),
        (lambda p: p.update({"features": "not arrays"}), "lists of one length"),
    ],
)
def test_hostile_int8_payloads_are_rejected(tamper, message: str) -> None:  # noqa: ANN001
    payload = int8_reply()
    tamper(payload)
    with pytest.raises(CodecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        unpack(payload, "features", "collaborator 'c'")


def topk_reply() -> dict:
    return wire(pack("g", [BATCH[0]], Codec("topk", 0.1)))


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda p: p["g.shape"].__setitem__(0, np.array([1 << 20, 1 << 20], np.int64)), "more than"),
        (lambda p: p["g.shape"].__setitem__(0, np.array([-1, 8], np.int64)), "non-negative"),
        (lambda p: p["g.shape"].__setitem__(0, np.ones(9, np.int64)), "1..8"),
        (lambda p: p["g.index"].__setitem__(0, p["g.index"][0][::-1].copy()), "strictly increasing"),
        (lambda p: p["g.index"].__setitem__(0, np.full(2, 3, np.uint16)), "as many positions"),
        (lambda p: p["g.index"].__setitem__(0, p["g.index"][0].astype(np.int64)), "uint16 array"),
        (lambda p: p["g.shape"].__setitem__(0, np.array([4, 4], np.int64)), "inside the shape"),
        (lambda p: p["g"].__setitem__(0, p["g"][0].astype(np.float32)), "float16 array"),
        (lambda p: p.pop("g.shape"), "shape must be a int64"),
    ],
)
def test_hostile_topk_payloads_are_rejected(tamper, message: str) -> None:  # noqa: ANN001
    payload = topk_reply()
    tamper(payload)
    with pytest.raises(CodecError, match=message):
        unpack(payload, "g", "the host")


def test_decoded_values_pass_the_exchanged_array_checks() -> None:
    payload = wire(pack("f", [BATCH[0]], Codec("fp16")))
    payload["f"][0] = np.full((2, 3), np.inf, np.float16)
    with pytest.raises(ArrayRejected, match="NaN or infinite"):
        unpack(payload, "f", "collaborator 'c'")
    payload = wire(pack("f", [BATCH[0]], Codec("int8")))
    payload["f.scale"][0] = np.array([1e9], np.float32)  # finite, but beyond the checks' max_abs
    with pytest.raises(ArrayRejected, match="exceed the bound"):
        unpack(payload, "f", "collaborator 'c'")


def test_a_reply_in_another_codec_than_asked_is_rejected() -> None:
    codecs = ExchangeCodecs.parse("int8")
    reply = wire(pack("features", BATCH[:1], Codec("fp16")))
    with pytest.raises(CodecError, match="asked for int8"):
        codecs.decode_reply(reply, "collaborator 'c'")


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="topk:FRACTION"):
        Codec.parse("gzip")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        Codec.parse("topk:1.5")
    with pytest.raises(ValueError, match="'features' and 'gradients'"):
        ExchangeCodecs.parse({"grads": "int8"})
    with pytest.raises(CodecError, match="float16's range"):
        Codec("fp16").encode(np.array([1e6], np.float32))
