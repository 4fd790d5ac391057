"""Plain payloads (numpy arrays, numbers, strings, bytes) to and from Flower records.

Used by the split-learning strategy and its ClientApp for control and data messages:
arrays travel in ArrayRecords, everything else in one ConfigRecord; nothing is pickled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

SCALARS = "scalars"
_ARRAY, _MAP, _SEQ = "array.", "map.", "seq."


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
    """The inverse of ``encode``."""
    out: dict[str, Any] = dict(content.config_records.get(SCALARS, ConfigRecord()))
    for name, record in content.array_records.items():
        if name.startswith(_ARRAY):
            out[name[len(_ARRAY) :]] = record["v"].numpy()
        elif name.startswith(_MAP):
            out[name[len(_MAP) :]] = {k: v.numpy() for k, v in record.items()}
        elif name.startswith(_SEQ):
            out[name[len(_SEQ) :]] = [record[str(i)].numpy() for i in range(len(record))]
    return out
