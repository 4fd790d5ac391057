"""Checks on arrays that peers exchange (vertical features and gradients, decoded payloads).

Pure numpy. One place for the rules, called by the split-learning strategy (features from
collaborators, the host's outgoing gradients), the collaborator adapter (gradients from the
host) and by any codec or decoder that turns peer bytes into arrays:

- the dtype is floating point (float16/32/64);
- the array has at least ``min_ndim`` dimensions (the batch first);
- the dtype and the trailing shape (all but the batch dimension) stay what the party's
  first array of that stream had (``ArrayLedger``), or what the caller expects;
- every value is finite and at most ``max_abs`` in absolute value.

``max_abs`` defaults to ``DEFAULT_MAX_ABS`` (1e6): far above what a feature model's
activations or a loss gradient reach, far below what overflows float32 arithmetic in the
host's infer model (1e30 squared is inf in float32). Pass a larger bound if your features
are legitimately larger.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import StrategyError

DEFAULT_MAX_ABS = 1e6


class ArrayRejected(StrategyError):
    """An exchanged array failed a check; the message names the party and the batch."""


def array_problem(
    array: Any,
    max_abs: float = DEFAULT_MAX_ABS,
    tail: tuple[int, ...] | None = None,
    dtype: Any = None,
    min_ndim: int = 1,
) -> str | None:
    """Why ``array`` is not acceptable, or ``None`` if it is.

    Parameters
    ----------
    array : Any
        The decoded value (anything a peer may have sent).
    max_abs : float (default: DEFAULT_MAX_ABS)
        Largest absolute value allowed.
    tail : tuple[int, ...] | None (default: None)
        Required shape after the first (batch) dimension; ``None`` accepts any.
    dtype : Any (default: None)
        Required dtype; ``None`` accepts any floating dtype.
    min_ndim : int (default: 1)
        Fewest dimensions allowed.
    """
    if not isinstance(array, np.ndarray):
        return f"expected an array, got {type(array).__name__}"
    if not np.issubdtype(array.dtype, np.floating):
        return f"dtype {array.dtype} is not floating point"
    if dtype is not None and array.dtype != np.dtype(dtype):
        return f"dtype {array.dtype} differs from {np.dtype(dtype)} (the party's first batch)"
    if array.ndim < min_ndim:
        return f"{array.ndim} dimension(s), at least {min_ndim} needed (the batch first)"
    if tail is not None and tuple(array.shape[1:]) != tuple(tail):
        return (
            f"shape {tuple(array.shape)} does not match ({', '.join(['batch', *map(str, tail)])}) "
            "(the party's first batch)"
        )
    if array.size == 0:
        return None
    finite = np.isfinite(array)
    if not finite.all():
        return f"{int(array.size - finite.sum())} value(s) are NaN or infinite"
    largest = float(np.max(np.abs(array)))
    if largest > max_abs:
        return (
            f"absolute values up to {largest:.3g} exceed the bound {max_abs:.3g} "
            "(rescale the values or raise max_abs)"
        )
    return None


def check_array(array: Any, party: str, what: str, **limits: Any) -> np.ndarray:
    """``array`` if ``array_problem(array, **limits)`` finds nothing, else ``ArrayRejected``.

    Parameters
    ----------
    array : Any
        The decoded value.
    party : str
        Who sent it, for the error (for example ``"collaborator 'c1'"``).
    what : str
        Which array, for the error (for example ``"features of training batch 3"``).
    **limits : Any
        ``max_abs``, ``tail``, ``dtype``, ``min_ndim`` of ``array_problem``.
    """
    problem = array_problem(array, **limits)
    if problem is not None:
        raise ArrayRejected(f"{what} from {party} rejected: {problem}")
    return array


class ArrayLedger:
    """Remembers the dtype and trailing shape of each (party, stream)'s first array and
    checks every later array against them (plus finiteness and ``max_abs``).

    Parameters
    ----------
    max_abs : float (default: DEFAULT_MAX_ABS)
        Largest absolute value allowed.
    min_ndim : int (default: 1)
        Fewest dimensions allowed (the batch first).
    """

    def __init__(self, max_abs: float = DEFAULT_MAX_ABS, min_ndim: int = 1) -> None:
        if not max_abs > 0:
            raise ValueError(f"max_abs must be a positive number, got {max_abs}")
        self.max_abs = float(max_abs)
        self.min_ndim = min_ndim
        self.first: dict[tuple[str, str], tuple[np.dtype, tuple[int, ...]]] = {}

    def check(self, party: str, stream: str, what: str, array: Any) -> np.ndarray:
        """Check ``array`` (raise ``ArrayRejected`` naming ``party`` and ``what``).

        Parameters
        ----------
        party : str
            Who sent it (for example ``"collaborator 'c1'"``).
        stream : str
            What kind of array it is (for example ``"features"``); each (party, stream)
            keeps its own dtype and trailing shape.
        what : str
            Which array, for the error (for example ``"features of training batch 3"``).
        array : Any
            The decoded value.
        """
        known = self.first.get((party, stream))
        check_array(
            array,
            party,
            what,
            max_abs=self.max_abs,
            min_ndim=self.min_ndim,
            dtype=None if known is None else known[0],
            tail=None if known is None else known[1],
        )
        if known is None:
            self.first[(party, stream)] = (array.dtype, tuple(array.shape[1:]))
        return array
