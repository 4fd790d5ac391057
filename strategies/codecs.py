"""Codecs of the arrays that split learning exchanges (features up, gradients down).

Pure numpy. A codec turns a float array into a few plain arrays (the *parts*) and back:

==========  ==================================================  ======================
name        parts (per array)                                   bytes per float32 value
==========  ==================================================  ======================
``float32``  the array itself, unchanged (the default)            4
``fp16``     the array as float16                                2
``int8``     int8 values ``round(x / scale)``, ``scale`` =       1 (+ 4 per array)
             max|x| / 127 as one float32
``topk:F``   the ``ceil(F * size)`` largest-magnitude values     ~ 4 F (uint16 positions)
             (float16), their flat positions (uint16 when the    or 6 F (uint32)
             array has at most 65,536 values, else uint32) and
             the shape (int64); the rest decode as zeros
==========  ==================================================  ======================

``pack`` puts a list of encoded arrays into a payload (``name``, ``name.scale``,
``name.index``, ``name.shape`` lists, and ``name.codec``), ``unpack`` reads them back.
Decoding treats its input as hostile: the codec must be known, every part must have the
exact dtype and shape it implies, positions must be in range and strictly increasing,
shapes bounded (``MAX_VALUES``); decoded arrays then pass the exchanged-array checks of
``checks.check_array`` (floating, finite, bounded). Nothing is ever pickled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .checks import DEFAULT_MAX_ABS, ArrayRejected, check_array
from .protocol import FEATURE_CODEC, FEATURES, GRADS, TEST_FEATURES

MAX_VALUES = 1 << 27  # largest decoded array (values): 512 MiB of float32
MAX_NDIM = 8
_FP16_MAX = float(np.finfo(np.float16).max)
_SMALLEST_SCALE = float(np.finfo(np.float32).smallest_subnormal)
CODEC_KEY, SCALE, INDEX, SHAPE = ".codec", ".scale", ".index", ".shape"


class CodecError(ArrayRejected):
    """An encoded payload is malformed, or a value cannot be encoded."""


@dataclass(frozen=True)
class Codec:
    """One codec: ``float32``, ``fp16``, ``int8`` or ``topk`` (with ``fraction`` kept).

    Parameters
    ----------
    name : str
        ``float32``, ``fp16``, ``int8`` or ``topk``.
    fraction : float (default: 1.0)
        ``topk``: the share of values kept, in (0, 1].
    """

    name: str = "float32"
    fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in ("float32", "fp16", "int8", "topk"):
            raise ValueError(f"unknown codec '{self.name}': use float32, fp16, int8 or topk:FRACTION")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"top-k fraction must be in (0, 1], got {self.fraction}")

    def __str__(self) -> str:
        return f"topk:{self.fraction:g}" if self.name == "topk" else self.name

    @classmethod
    def parse(cls, text: str | Codec | None) -> Codec:
        """``None``/``"none"``/``"float32"``, ``"fp16"``, ``"int8"`` or ``"topk:0.1"``."""
        if isinstance(text, Codec):
            return text
        value = (text or "float32").strip().lower()
        if value in ("none", "float32", "fp32"):
            return cls()
        if value in ("fp16", "float16"):
            return cls("fp16")
        if value == "int8":
            return cls("int8")
        if value.startswith("topk:"):
            try:
                return cls("topk", float(value[5:]))
            except ValueError as exc:
                raise ValueError(f"bad top-k codec '{text}': {exc} (example: topk:0.1)") from exc
        raise ValueError(f"unknown codec '{text}': use float32, fp16, int8 or topk:FRACTION (e.g. topk:0.1)")

    def encode(self, array: np.ndarray) -> dict[str, np.ndarray]:
        """The parts of one array (keys ``""``, ``SCALE``, ``INDEX``, ``SHAPE``)."""
        if self.name == "float32":
            return {"": np.asarray(array)}
        x = np.asarray(array, dtype=np.float32)
        if x.size and not np.all(np.isfinite(x)):
            raise CodecError("cannot encode NaN or infinite values")
        if self.name == "fp16":
            if x.size and float(np.max(np.abs(x))) > _FP16_MAX:
                raise CodecError(f"values beyond float16's range ({_FP16_MAX:g}): use int8 or float32")
            return {"": x.astype(np.float16)}
        if self.name == "int8":
            top = float(np.max(np.abs(x))) if x.size else 0.0
            # float32 as sent; a tiny top must not round the scale to 0 (the decoder refuses it)
            scale = np.float32(max(top / 127.0, _SMALLEST_SCALE)) if top > 0 else np.float32(1.0)
            q = np.clip(np.rint(x / scale), -127, 127).astype(np.int8)
            return {"": q, SCALE: np.array([scale], dtype=np.float32)}
        if x.size and float(np.max(np.abs(x))) > _FP16_MAX:
            raise CodecError(f"values beyond float16's range ({_FP16_MAX:g}): use int8 or float32")
        flat = x.ravel()
        keep = min(flat.size, math.ceil(self.fraction * flat.size))
        index = np.sort(np.argpartition(np.abs(flat), flat.size - keep)[flat.size - keep :]) if keep else np.zeros(0, int)
        return {
            "": flat[index].astype(np.float16),
            INDEX: index.astype(_index_dtype(flat.size)),
            SHAPE: np.array(x.shape, dtype=np.int64),
        }


def _index_dtype(size: int) -> np.dtype:
    return np.dtype(np.uint16) if size <= 1 << 16 else np.dtype(np.uint32)


def decode(codec_name: str, parts: Mapping[str, Any]) -> np.ndarray:
    """One float32 array from its parts (``CodecError`` on anything malformed)."""
    main = parts.get("")
    if codec_name == "float32":  # uncompressed: any array; check_array judges it
        if not isinstance(main, np.ndarray):
            raise CodecError(f"expected an array, got {type(main).__name__}")
        return main
    if codec_name == "fp16":
        return _typed(main, np.float16, "values").astype(np.float32)
    if codec_name == "int8":
        q = _typed(main, np.int8, "values")
        scale = _typed(parts.get(SCALE), np.float32, "scale")
        if scale.shape != (1,) or not np.isfinite(scale[0]) or not scale[0] > 0:
            raise CodecError(f"int8 scale must be one positive finite float32, got {scale!r}")
        if q.size and int(np.min(q)) < -127:
            raise CodecError("int8 values must lie in [-127, 127]")
        return q.astype(np.float32) * scale[0]
    if codec_name == "topk":
        return _decode_topk(parts)
    raise CodecError(f"unknown codec {codec_name!r}")


def _decode_topk(parts: Mapping[str, Any]) -> np.ndarray:
    shape_arr = _typed(parts.get(SHAPE), np.int64, "shape")
    if shape_arr.ndim != 1 or not 1 <= shape_arr.size <= MAX_NDIM or np.any(shape_arr < 0):
        raise CodecError(f"top-k shape must list 1..{MAX_NDIM} non-negative sizes, got {shape_arr.tolist()}")
    shape = tuple(int(s) for s in shape_arr)
    size = math.prod(shape)
    if size > MAX_VALUES:
        raise CodecError(f"top-k shape {shape} holds {size} values, more than {MAX_VALUES}")
    index = _typed(parts.get(INDEX), _index_dtype(size), "positions")
    values = _typed(parts.get(""), np.float16, "values")
    if index.ndim != 1 or values.shape != index.shape:
        raise CodecError(f"top-k needs as many positions as values (1-D), got {index.shape} and {values.shape}")
    if index.size and (int(index[-1]) >= size or np.any(np.diff(index.astype(np.int64)) <= 0)):
        raise CodecError("top-k positions must be strictly increasing and inside the shape")
    out = np.zeros(size, dtype=np.float32)
    out[index] = values.astype(np.float32)
    return out.reshape(shape)


def _typed(value: Any, dtype: Any, what: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype != np.dtype(dtype):
        got = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
        raise CodecError(f"encoded {what} must be a {np.dtype(dtype)} array, got {got}")
    return value


def pack(name: str, arrays: list[np.ndarray], codec: Codec) -> dict[str, Any]:
    """Payload entries carrying ``arrays`` encoded with ``codec`` under ``name``.

    ``float32`` gives ``{name: arrays}`` (the uncompressed payload); other codecs add
    ``name.codec`` and their parts' lists (``name.scale``, ``name.index``, ``name.shape``).
    """
    encoded = [codec.encode(a) for a in arrays]
    if codec.name == "float32":
        return {name: [e[""] for e in encoded]}
    out: dict[str, Any] = {name + CODEC_KEY: codec.name}
    for part in encoded[0] if encoded else {"": None}:
        out[name + part] = [e[part] for e in encoded]
    return out


def unpack(
    payload: Mapping[str, Any], name: str, party: str, max_abs: float = DEFAULT_MAX_ABS, max_items: int = 1 << 16
) -> list[np.ndarray]:
    """The arrays that ``pack`` put under ``name`` (``[]`` if absent), decoded and checked.

    Parameters
    ----------
    payload : Mapping[str, Any]
        A decoded message payload (see ``payload.decode``).
    name : str
        The entry, for example ``"features"`` or ``"grads"``.
    party : str
        The sender, named in errors.
    max_abs : float (default: checks.DEFAULT_MAX_ABS)
        Largest absolute value accepted in a decoded array.
    max_items : int (default: 65536)
        Most arrays accepted in one list.

    Raises
    ------
    CodecError
        If the entries are malformed; ``ArrayRejected`` if a decoded array fails the checks.
    """
    codec_name = payload.get(name + CODEC_KEY, "float32")
    if not isinstance(codec_name, str):
        raise CodecError(f"{name} from {party}: codec name must be text, got {type(codec_name).__name__}")
    parts = {"": payload.get(name)}
    parts.update({p: payload.get(name + p) for p in (SCALE, INDEX, SHAPE) if name + p in payload})
    if parts[""] is None or (isinstance(parts[""], list) and not parts[""]):
        return []
    lengths = {p: len(v) if isinstance(v, list) else -1 for p, v in parts.items()}
    count = lengths[""]
    if count < 0 or count > max_items or any(n != count for n in lengths.values()):
        raise CodecError(f"{name} from {party}: parts must be lists of one length <= {max_items}, got {lengths}")
    out = []
    for i in range(count):
        try:
            array = decode(codec_name, {p: v[i] for p, v in parts.items()})
        except CodecError as exc:
            raise CodecError(f"{name}[{i}] from {party} ({codec_name}) rejected: {exc}") from None
        out.append(check_array(array, party, f"{name}[{i}] ({codec_name})", max_abs=max_abs))
    return out


def payload_bytes(payload: Mapping[str, Any], name: str) -> int:
    """Bytes of the arrays under ``name`` and its parts (what the arrays weigh, not the wire)."""
    total = 0
    for part in ("", SCALE, INDEX, SHAPE):
        value = payload.get(name + part)
        for array in value if isinstance(value, list) else [value]:
            if isinstance(array, np.ndarray):
                total += array.nbytes
    return total


@dataclass(frozen=True)
class ExchangeCodecs:
    """The codec of each direction: ``features`` (collaborators to host) and
    ``gradients`` (host to collaborators).

    Parameters
    ----------
    features : Codec (default: float32)
        Codec of the features (training and test) collaborators send.
    gradients : Codec (default: float32)
        Codec of the gradients the host sends.
    """

    features: Codec = Codec()
    gradients: Codec = Codec()

    @classmethod
    def parse(cls, spec: str | Mapping[str, str] | ExchangeCodecs | None) -> ExchangeCodecs:
        """From ``None``, one codec name for both ways (``"int8"``) or
        ``{"features": "fp16", "gradients": "topk:0.1"}``."""
        if isinstance(spec, ExchangeCodecs):
            return spec
        if spec is None or isinstance(spec, (str, Codec)):
            return cls(Codec.parse(spec), Codec.parse(spec))
        unknown = set(spec) - {"features", "gradients"}
        if unknown:
            raise ValueError(f"exchange codecs take 'features' and 'gradients', not {sorted(unknown)}")
        return cls(Codec.parse(spec.get("features")), Codec.parse(spec.get("gradients")))

    def __str__(self) -> str:
        return f"features {self.features}, gradients {self.gradients}"

    # ----- the exchange: host side (strategy) -------------------------------------------
    def encode_request(self, payload: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
        """A host request with its ``grads`` encoded and the features codec asked for;
        also ``{"bytes-gradients": n}`` (the encoded gradients' array bytes)."""
        out = {k: v for k, v in payload.items() if k != GRADS}
        grads = payload.get(GRADS)
        if grads:
            out.update(pack(GRADS, list(grads), self.gradients))
        if self.features.name != "float32":
            out[FEATURE_CODEC] = str(self.features)
        return out, {"bytes-gradients": payload_bytes(out, GRADS)}

    def decode_reply(
        self, reply: Mapping[str, Any], party: str, max_abs: float = DEFAULT_MAX_ABS
    ) -> tuple[dict[str, Any], dict[str, int]]:
        """A collaborator reply with its (test) features decoded and checked (``max_abs``);
        also their array bytes as sent (``bytes-features``, ``bytes-test-features``).

        Raises ``CodecError`` if the features use another codec than the one asked for.
        """
        counts = {f"bytes-{name}": payload_bytes(reply, name) for name in FEATURE_ENTRIES}
        out = {k: v for k, v in reply.items() if not k.startswith(tuple(f"{n}." for n in FEATURE_ENTRIES))}
        for name in FEATURE_ENTRIES:
            sent = reply.get(name + CODEC_KEY, "float32")
            if name in reply and (not isinstance(sent, str) or sent != self.features.name):
                raise CodecError(
                    f"{name} from {party} rejected: encoded with {str(sent)[:40]!r}, the host asked for {self.features}"
                )
            if name in reply:
                out[name] = unpack(reply, name, party, max_abs)
        return out, counts


FEATURE_ENTRIES = (FEATURES, TEST_FEATURES)


# ----- the exchange: collaborator side -----------------------------------------------------
def decode_request(
    payload: Mapping[str, Any], party: str = "the host", max_abs: float = DEFAULT_MAX_ABS
) -> dict[str, Any]:
    """A host request with its ``grads`` decoded and checked (``CodecError`` if malformed,
    ``ArrayRejected`` beyond ``max_abs``)."""
    out = {k: v for k, v in payload.items() if not k.startswith(f"{GRADS}.")}
    if GRADS in payload:
        out[GRADS] = unpack(payload, GRADS, party, max_abs)
    return out


def encode_reply(reply: Mapping[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
    """A collaborator reply with its (test) features encoded as the request asks."""
    requested = request.get(FEATURE_CODEC)
    if requested is not None and not isinstance(requested, str):
        raise CodecError(f"the requested feature codec must be text, got {type(requested).__name__}")
    codec = Codec.parse(requested)
    out = {k: v for k, v in reply.items() if k not in FEATURE_ENTRIES}
    for name in FEATURE_ENTRIES:
        if name in reply:
            out.update(pack(name, list(reply[name]), codec))
    return out
