"""Plain payloads (numpy arrays, numbers, strings, bytes) to and from Flower records.

Used by the split-learning strategy and its ClientApp for control and data messages:
arrays travel in ArrayRecords, everything else in one ConfigRecord; nothing is pickled.
``decode`` accepts only what ``encode`` produces and raises ``PayloadError`` for anything
else (unknown records, malformed or inconsistent arrays, object dtypes): peers' bytes never
reach numpy's loader unchecked.
"""

from __future__ import annotations

from collections.abc import Mapping
from io import BytesIO
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from .errors import StrategyError

SCALARS = "scalars"
_ARRAY, _MAP, _SEQ = "array.", "map.", "seq."
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class PayloadError(StrategyError):
    """Content that ``encode`` cannot have produced (a malformed or hostile message)."""


def encode(payload: Mapping[str, Any]) -> RecordDict:
    """Arrays, ``{name: array}`` maps and lists of arrays become ArrayRecords; scalars and
    lists of scalars go into the ``scalars`` ConfigRecord; ``None`` values are left out."""
    content = RecordDict()
    scalars = ConfigRecord()
    for key, value in payload.items():
        if value is None:
            continue
        if isinstance(value, np.ndarray):
            content[_ARRAY + key] = ArrayRecord({"v": Array(np.asarray(value, order="C"))})
        elif isinstance(value, Mapping):
            content[_MAP + key] = ArrayRecord(
                {str(k): Array(np.asarray(v, order="C")) for k, v in value.items()}
            )
        elif isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
            content[_SEQ + key] = ArrayRecord(
                {str(i): Array(np.asarray(v, order="C")) for i, v in enumerate(value)}
            )
        else:
            scalars[key] = value
    content[SCALARS] = scalars
    return content


def decode(content: RecordDict) -> dict[str, Any]:
    """The inverse of ``encode``; ``PayloadError`` for content it cannot have produced."""
    if not isinstance(content, RecordDict):
        raise PayloadError(f"expected a RecordDict, got {type(content).__name__}")
    unknown = [n for n in content if n != SCALARS and n not in content.array_records]
    if unknown or (SCALARS in content and SCALARS not in content.config_records):
        raise PayloadError(f"unexpected records {sorted(unknown)[:5] or [SCALARS]}")
    out: dict[str, Any] = dict(content.config_records.get(SCALARS, ConfigRecord()))
    for name, record in content.array_records.items():
        key, value = _decode_record(name, record)
        if key in out:
            raise PayloadError(f"'{key}' is sent twice")
        out[key] = value
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
    buffer = BytesIO(array.data)
    try:
        reader = _NPY_HEADERS.get(np.lib.format.read_magic(buffer))
        if reader is None:
            raise ValueError("unsupported .npy version")
        shape, fortran, dtype = reader(buffer)
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
            raise ValueError(f"dtype {dtype} is not a plain numeric dtype")
        size = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if size != len(array.data) - buffer.tell():
            raise ValueError(f"the header announces {size} bytes, {len(array.data) - buffer.tell()} follow")
        value = np.frombuffer(array.data, dtype=dtype, offset=buffer.tell()).reshape(
            shape, order="F" if fortran else "C"
        )
    except (ValueError, TypeError, OverflowError) as exc:
        raise PayloadError(f"'{name}' is not a valid .npy array: {exc}") from exc
    if tuple(array.shape) != value.shape or array.dtype != str(value.dtype):
        raise PayloadError(
            f"'{name}' claims {array.dtype} {tuple(array.shape)} but holds {value.dtype} {value.shape}"
        )
    return np.array(value, order="C")
