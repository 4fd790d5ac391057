"""Checks on client updates and their claimed weights, and dtype-preserving averaging.

One place for the rules on horizontal updates: the round driver calls ``reply_problem``
on every TRAIN reply (and on the server's own update) before any strategy sees it, and
``cast_like`` on every aggregate before it becomes the global state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from .protocol import ARRAYS, NUM_EXAMPLES

#: Default cap on the sample count one reply may claim (``--max-num-examples``).
DEFAULT_MAX_NUM_EXAMPLES = 1_000_000


def update_problem(reference: ArrayRecord, update: Any) -> str | None:
    """Why ``update`` cannot be averaged with ``reference`` (``None`` if it can).

    Keys, shapes and dtypes must match exactly and floating-point values must be finite.
    Never raises, whatever ``update`` holds.
    """
    if not isinstance(update, ArrayRecord):
        return f"expected an ArrayRecord, got {type(update).__name__}"
    ref_keys, upd_keys = list(reference.keys()), list(update.keys())
    if set(ref_keys) != set(upd_keys) or len(upd_keys) != len(ref_keys):
        missing = sorted(set(ref_keys) - set(upd_keys))
        extra = sorted(set(upd_keys) - set(ref_keys))
        return f"keys differ from the global state (missing {missing[:5]}, unexpected {extra[:5]})"
    for key in ref_keys:
        problem = _array_problem(key, reference[key], update[key])
        if problem:
            return problem
    return None


def _array_problem(key: str, want: Array, got: Any) -> str | None:
    try:
        if tuple(got.shape) != tuple(want.shape) or str(got.dtype) != want.dtype:
            return (
                f"'{key}' is declared as {got.dtype} {tuple(got.shape)}, the global state has "
                f"{want.dtype} {tuple(want.shape)}"
            )
        got_np = got.numpy()
    except Exception as exc:  # noqa: BLE001 - a malformed array is a rejected update
        return f"'{key}' cannot be decoded as a numpy array ({type(exc).__name__}: {exc})"
    if not isinstance(got_np, np.ndarray):
        return f"'{key}' does not decode to a numpy array but to {type(got_np).__name__}"
    if tuple(got_np.shape) != tuple(want.shape):
        return f"'{key}' has shape {tuple(got_np.shape)}, the global state has {tuple(want.shape)}"
    if str(got_np.dtype) != want.dtype:
        return f"'{key}' has dtype {got_np.dtype}, the global state has {want.dtype}"
    if np.issubdtype(got_np.dtype, np.inexact) and not np.all(np.isfinite(got_np)):
        return f"'{key}' contains NaN or infinite values"
    return None


def weight_problem(value: Any, key: str, cap: float) -> str | None:
    """Why ``value`` is not an acceptable claimed sample count (``None`` if it is).

    It must be an int or float (not a bool, not a list), finite, positive and at most
    ``cap`` (``--max-num-examples``).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"'{key}' must be a number, got {type(value).__name__}"
    try:
        number = float(value)
    except OverflowError:
        return f"'{key}' is too large to be a sample count"
    if not math.isfinite(number):
        return f"'{key}' is {number}, not a finite number"
    if number <= 0:
        return f"'{key}' must be positive, got {value!r}"
    if number > cap:
        return (
            f"'{key}' claims {number:g} examples, more than the server allows ({cap:g}; "
            "raise --max-num-examples if that is genuine)"
        )
    return None


def reply_problem(
    content: Any,
    reference: ArrayRecord,
    *,
    arrayrecord_key: str = ARRAYS,
    weight_key: str = NUM_EXAMPLES,
    max_num_examples: float = DEFAULT_MAX_NUM_EXAMPLES,
    required_metrics: Iterable[str] = (),
) -> str | None:
    """Why a TRAIN reply's content cannot reach a strategy (``None`` if it can).

    The content must hold exactly one ArrayRecord (``arrayrecord_key``) that matches
    ``reference`` (``update_problem``) and exactly one MetricRecord whose ``weight_key``
    passes ``weight_problem`` and that holds every finite ``required_metrics`` value.
    Never raises, whatever ``content`` holds.
    """
    if not isinstance(content, RecordDict):
        return f"expected a RecordDict, got {type(content).__name__}"
    try:
        array_records = dict(content.array_records)
        metric_records = list(content.metric_records.values())
    except Exception as exc:  # noqa: BLE001 - hostile content is rejected, never raised
        return f"unreadable records ({type(exc).__name__}: {exc})"
    if list(array_records) != [arrayrecord_key]:
        return f"expected exactly one ArrayRecord '{arrayrecord_key}', got {sorted(array_records)[:5]}"
    if len(metric_records) != 1:
        return f"expected exactly one MetricRecord, got {len(metric_records)}"
    metrics = metric_records[0]
    problem = weight_problem(metrics.get(weight_key), weight_key, max_num_examples)
    if problem:
        return problem
    for key in required_metrics:
        if _finite_number(metrics.get(key)) is None:
            return f"the metric '{key}' is missing or not a finite number"
    return update_problem(reference, array_records[arrayrecord_key])


def clean_metrics(metrics: MetricRecord) -> MetricRecord:
    """The finite scalar numbers of ``metrics`` (lists, NaN, inf, bools dropped)."""
    out = MetricRecord()
    for key, value in metrics.items():
        number = _finite_number(value)
        if number is not None:
            out[key] = value
    return out


def _finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def common_metric_keys(records: Sequence[MetricRecord]) -> set[str]:
    """Keys that every record holds (what Flower's metric aggregation requires)."""
    if not records:
        return set()
    return set.intersection(*(set(r.keys()) for r in records))


def cast_like(reference: ArrayRecord, result: Any) -> tuple[ArrayRecord | None, str | None]:
    """``result`` with ``reference``'s keys, order and dtypes, or ``(None, why)``.

    Flower's FedAdam, FedYogi and FedAvgM return float64 (also for int64 buffers);
    integers are rounded to the nearest integer, booleans take the majority (>= 0.5).
    Non-finite values or integers out of range refuse the aggregate.
    """
    if not isinstance(result, ArrayRecord):
        return None, f"the strategy returned {type(result).__name__}, not an ArrayRecord"
    if set(result.keys()) != set(reference.keys()):
        return None, "the aggregate's keys differ from the global state's"
    out = ArrayRecord()
    for key in reference.keys():
        dtype = np.dtype(reference[key].dtype)
        try:
            value = np.asarray(result[key].numpy())
        except Exception as exc:  # noqa: BLE001
            return None, f"the aggregate's '{key}' cannot be decoded ({exc})"
        if tuple(value.shape) != tuple(reference[key].shape):
            return None, f"the aggregate's '{key}' has shape {value.shape}, not {tuple(reference[key].shape)}"
        if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
            return None, f"the aggregate's '{key}' holds NaN or infinite values"
        cast = _cast(value, dtype)
        if cast is None:
            return None, f"the aggregate's '{key}' does not fit {dtype}"
        out[key] = Array(np.asarray(cast, order="C"))
    return out, None


def _cast(value: np.ndarray, dtype: np.dtype) -> np.ndarray | None:
    if value.dtype == dtype:
        return value
    if dtype == np.bool_:
        return value.astype(np.float64) >= 0.5
    if np.issubdtype(dtype, np.integer):
        rounded = np.rint(value.astype(np.float64))
        info = np.iinfo(dtype)
        if rounded.size and (rounded.min() < info.min or rounded.max() > info.max):
            return None
        return rounded.astype(dtype)
    with np.errstate(over="ignore"):
        cast = value.astype(dtype)
    if cast.dtype.kind in "fc" and not np.all(np.isfinite(cast)):
        return None  # finite in float64, out of range in float32/float16
    return cast


def weighted_mean(
    reference: ArrayRecord, updates: Sequence[ArrayRecord], weights: Sequence[float]
) -> ArrayRecord:
    """Average ``updates`` with ``weights`` (normalised), key by key, in float64.

    The result keeps each array's dtype: integer arrays (such as BatchNorm's
    ``num_batches_tracked``) are rounded to the nearest integer, booleans take the
    weighted majority. The inputs are not modified.
    """
    if not updates:
        raise ValueError("nothing to average")
    total = float(sum(weights))
    if not math.isfinite(total) or total <= 0:
        raise ValueError("weights must sum to a positive finite number")
    factors = [float(w) / total for w in weights]
    out = ArrayRecord()
    for key in reference.keys():
        dtype = np.dtype(reference[key].dtype)
        acc = np.zeros(reference[key].shape, dtype=np.float64)
        for update, factor in zip(updates, factors, strict=True):
            acc += update[key].numpy().astype(np.float64) * factor
        value = _cast(acc, dtype)
        if value is None:
            raise ValueError(f"the mean of '{key}' does not fit {dtype}")
        out[key] = Array(np.asarray(value, order="C"))
    return out


def weights_of(contents: Iterable[RecordDict], key: str) -> list[float]:
    """Each content's ``key`` from its (single) MetricRecord, as floats."""
    return [float(next(iter(c.metric_records.values()))[key]) for c in contents]  # type: ignore[arg-type]

