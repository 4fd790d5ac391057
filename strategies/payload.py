"""Plain payloads (numpy arrays, numbers, strings, bytes) to and from Flower records.

Used by the split-learning strategy and its ClientApp for control and data messages;
nothing is pickled. A payload whose arrays (single arrays and lists of arrays) hold at most
``PACK_LIMIT`` bytes travels in one ConfigRecord, ``packed``: scalars, and each array as
its ``.npy`` bytes. Larger payloads send those arrays in ArrayRecords and the rest in the
``scalars`` ConfigRecord; ``{name: array}`` maps always travel in ArrayRecords. In
deployment each record is an object of its own, and every object crosses each hop (ServerApp,
SuperLink, SuperNode, ClientApp) as a request of its own: a packed K=1 exchange message is 3
objects (message, record dict, record) where ArrayRecords make it 6 (record, array and array
chunk per list of arrays).
``decode`` accepts only what ``encode`` produces and raises ``PayloadError`` for anything
else (unknown records, malformed or inconsistent arrays, object dtypes): peers' bytes never
reach numpy's loader unchecked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from io import BytesIO
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from .errors import StrategyError

SCALARS = "scalars"
PACKED = "packed"
PACK_LIMIT = 1 << 20  # array bytes a payload may carry packed: a packed record is one object, never chunked
_ARRAY, _MAP, _SEQ = "array.", "map.", "seq."
_P_SCALAR, _P_ARRAY, _P_SEQ = "s.", "a.", "q."
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class PayloadError(StrategyError):
    """Content that ``encode`` cannot have produced (a malformed or hostile message)."""


def encode(payload: Mapping[str, Any]) -> RecordDict:
    """Arrays, ``{name: array}`` maps and lists of arrays become ArrayRecords; scalars and
    lists of scalars go into the ``scalars`` ConfigRecord; ``None`` values are left out.
    Packed instead (the module's docstring) if the arrays are small: then single arrays and
    lists of arrays go into the ``packed`` ConfigRecord as ``.npy`` bytes, with the scalars."""
    packed = _array_bytes(payload) <= PACK_LIMIT
    content = RecordDict()
    config = ConfigRecord()
    for key, value in payload.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            content[_MAP + key] = _array_record(value.items())
        elif isinstance(value, np.ndarray) and packed:
            config[_P_ARRAY + key] = _npy_bytes(value)
        elif isinstance(value, np.ndarray):
            content[_ARRAY + key] = _array_record([("v", value)])
        elif _is_array_list(value) and packed:
            config[_P_SEQ + key] = [_npy_bytes(v) for v in value]
        elif _is_array_list(value):
            content[_SEQ + key] = _array_record(enumerate(value))
        else:
            config[_P_SCALAR + key if packed else key] = value
    content[PACKED if packed else SCALARS] = config
    return content


def _array_record(items: Iterable[tuple[Any, np.ndarray]]) -> ArrayRecord:
    return ArrayRecord({str(k): Array(np.asarray(v, order="C")) for k, v in items})


def _is_array_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, np.ndarray) for v in value)


def _array_bytes(payload: Mapping[str, Any]) -> int:
    """Bytes of the payload's single arrays and lists of arrays (what packing would carry)."""
    total = 0
    for value in payload.values():
        if isinstance(value, np.ndarray):
            total += value.nbytes
        elif _is_array_list(value):
            total += sum(v.nbytes for v in value)
    return total


def _npy_bytes(value: np.ndarray) -> bytes:
    buffer = BytesIO()
    np.lib.format.write_array(buffer, np.asarray(value, order="C"), allow_pickle=False)
    return buffer.getvalue()


def decode(content: RecordDict) -> dict[str, Any]:
    """The inverse of ``encode``; ``PayloadError`` for content it cannot have produced."""
    if not isinstance(content, RecordDict):
        raise PayloadError(f"expected a RecordDict, got {type(content).__name__}")
    configs = [n for n in (SCALARS, PACKED) if n in content]
    unknown = [n for n in content if n not in (SCALARS, PACKED) and n not in content.array_records]
    if unknown or len(configs) > 1 or any(n not in content.config_records for n in configs):
        raise PayloadError(f"unexpected records {sorted(unknown)[:5] or configs}")
    if PACKED in content:
        out = _decode_packed(content.config_records[PACKED])
    else:
        out = dict(content.config_records.get(SCALARS, ConfigRecord()))
    for name, record in content.array_records.items():
        key, value = _decode_record(name, record)
        if key in out:
            raise PayloadError(f"'{key}' is sent twice")
        out[key] = value
    return out


def _decode_packed(record: ConfigRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in record.items():
        prefix, key = name[:2], name[2:]
        if prefix == _P_SCALAR:
            out[key] = value
        elif prefix == _P_ARRAY and isinstance(value, bytes):
            out[key] = from_npy(value, name)
        elif prefix == _P_SEQ and value and isinstance(value, list) and all(isinstance(v, bytes) for v in value):
            out[key] = [from_npy(v, f"{name}/{i}") for i, v in enumerate(value)]
        else:
            raise PayloadError(f"unexpected entry '{name[:100]}' in record '{PACKED}'")
    if len(out) != len(record):
        raise PayloadError(f"record '{PACKED}' sends a key twice")
    return out


def _decode_record(name: str, record: ArrayRecord) -> tuple[str, Any]:
    if name.startswith(_ARRAY):
        if list(record.keys()) != ["v"]:
            raise PayloadError(f"record '{name}' must hold one array 'v'")
        return name[len(_ARRAY) :], to_numpy(record["v"], name)
    if name.startswith(_MAP):
        return name[len(_MAP) :], {k: to_numpy(v, f"{name}/{k}") for k, v in record.items()}
    if name.startswith(_SEQ):
        if sorted(record.keys()) != sorted(str(i) for i in range(len(record))) or not len(record):
            raise PayloadError(f"record '{name}' must hold arrays '0'..'n-1'")
        return name[len(_SEQ) :], [to_numpy(record[str(i)], f"{name}/{i}") for i in range(len(record))]
    raise PayloadError(f"unexpected record '{name}'")


def to_numpy(array: Array, name: str = "array") -> np.ndarray:
    """An ``Array``'s numpy value, checked against its own header and metadata.

    Raises
    ------
    PayloadError
        If it is not a plain ``.npy`` of a non-object dtype whose byte count, shape and dtype
        agree with its header and with the ``Array``'s metadata.
    """
    if not isinstance(array, Array) or array.stype != "numpy.ndarray" or not isinstance(array.data, bytes):
        raise PayloadError(f"'{name}' is not a numpy array")
    value = from_npy(array.data, name)
    if tuple(array.shape) != value.shape or array.dtype != str(value.dtype):
        raise PayloadError(
            f"'{name}' claims {array.dtype} {tuple(array.shape)} but holds {value.dtype} {value.shape}"
        )
    return value


def from_npy(data: bytes, name: str = "array") -> np.ndarray:
    """The array in ``.npy`` bytes; ``PayloadError`` unless it is a plain ``.npy`` of a
    non-object dtype whose byte count agrees with its header."""
    buffer = BytesIO(data)
    try:
        reader = _NPY_HEADERS.get(np.lib.format.read_magic(buffer))
        if reader is None:
            raise ValueError("unsupported .npy version")
        shape, fortran, dtype = reader(buffer)
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
            raise ValueError(f"dtype {dtype} is not a plain numeric dtype")
        size = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if size != len(data) - buffer.tell():
            raise ValueError(f"the header announces {size} bytes, {len(data) - buffer.tell()} follow")
        value = np.frombuffer(data, dtype=dtype, offset=buffer.tell()).reshape(shape, order="F" if fortran else "C")
    except (ValueError, TypeError, OverflowError) as exc:
        raise PayloadError(f"'{name}' is not a valid .npy array: {exc}") from exc
    return np.array(value, order="C")
