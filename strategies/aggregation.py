"""Checking client updates against the global arrays, and averaging them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord


def update_problem(reference: ArrayRecord, update: ArrayRecord) -> str | None:
    """Why ``update`` cannot be averaged with ``reference`` (``None`` if it can).

    Keys, shapes and dtypes must match exactly and floating-point values must be finite.
    """
    ref_keys, upd_keys = list(reference.keys()), list(update.keys())
    if set(ref_keys) != set(upd_keys):
        missing = sorted(set(ref_keys) - set(upd_keys))
        extra = sorted(set(upd_keys) - set(ref_keys))
        return f"keys differ from the global state (missing {missing[:5]}, unexpected {extra[:5]})"
    for key in ref_keys:
        want, got = reference[key], update[key]
        try:
            got_np = got.numpy()
        except Exception as exc:  # noqa: BLE001 - a malformed array is a rejected update
            return f"'{key}' cannot be decoded as a numpy array ({exc})"
        if tuple(got_np.shape) != tuple(want.shape):
            return f"'{key}' has shape {tuple(got_np.shape)}, the global state has {tuple(want.shape)}"
        if str(got_np.dtype) != want.dtype:
            return f"'{key}' has dtype {got_np.dtype}, the global state has {want.dtype}"
        if np.issubdtype(got_np.dtype, np.inexact) and not np.all(np.isfinite(got_np)):
            return f"'{key}' contains NaN or infinite values"
    return None


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
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    factors = [float(w) / total for w in weights]
    out = ArrayRecord()
    for key in reference.keys():
        dtype = np.dtype(reference[key].dtype)
        acc = np.zeros(reference[key].shape, dtype=np.float64)
        for update, factor in zip(updates, factors, strict=True):
            acc += update[key].numpy().astype(np.float64) * factor
        if dtype == np.bool_:
            value = acc >= 0.5
        elif np.issubdtype(dtype, np.integer):
            value = np.rint(acc).astype(dtype)
        else:
            value = acc.astype(dtype)
        out[key] = Array(np.asarray(value, order="C"))
    return out
