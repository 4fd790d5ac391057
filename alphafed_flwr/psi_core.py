"""Group, hash, randomness and one party's state for the PSI (see ``alphafed_flwr.psi``)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import secrets
import sys
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

DST = b"ALPHAFED-FLWR-PSI-V02-CS01-with-ristretto255_XMD:SHA-512_R255MAP_RO_"
POINT_SIZE = 32
CHUNK = 1 << 17  # points per message: 4 MiB
HOST_CHAIN = "h"
WORKERS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
_XMD_PAD = hashlib.sha512(bytes(128))  # expand_message_xmd's Z_pad block, hashed once


class PsiError(RuntimeError):
    """The protocol cannot complete (bad input, a malformed reply, disagreeing parties)."""


class PsiRefused(PsiError):
    """A collaborator refused a request that the protocol does not allow."""


# ----- group, hash, randomness -----------------------------------------------------------
@functools.cache
def _group() -> ModuleType:
    """libsodium's ristretto255, loaded once (rbcl writes its library to a temporary file,
    which can be removed once it is mapped)."""
    import rbcl  # pylint: disable=import-outside-toplevel

    if os.name == "posix":
        with contextlib.suppress(AttributeError, OSError):
            os.unlink(sys.modules["rbcl._sodium"].lib_path)
    return rbcl


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool() -> ThreadPoolExecutor:
    """Threads for the group operations (libsodium runs outside the GIL, so they use every
    core); one pool per process, so a forked child never waits on its parent's threads."""
    pid = os.getpid()
    if pid not in _POOLS:
        _POOLS.clear()
        _POOLS[pid] = ThreadPoolExecutor(WORKERS, thread_name_prefix="psi")
    return _POOLS[pid]


def expand_message_xmd(msg: bytes, dst: bytes, length: int) -> bytes:
    """RFC 9380 section 5.3.1 with SHA-512: ``length`` uniform bytes from ``msg``."""
    ell = -(-length // 64)
    if not 0 < length <= 65535 or ell > 255 or len(dst) > 255:
        raise ValueError("expand_message_xmd: length or DST out of range")
    dst_prime = dst + bytes([len(dst)])
    first = _XMD_PAD.copy()
    first.update(msg + length.to_bytes(2, "big") + b"\0" + dst_prime)
    b_0 = first.digest()
    blocks = [hashlib.sha512(b_0 + b"\1" + dst_prime).digest()]
    for i in range(2, ell + 1):
        chained = bytes(x ^ y for x, y in zip(b_0, blocks[-1], strict=True))
        blocks.append(hashlib.sha512(chained + bytes([i]) + dst_prime).digest())
    return b"".join(blocks)[:length]


def encode_id(sample_id: Any, position: int = 0) -> bytes:
    """``str(sample_id)`` as UTF-8; an unencodable ID is a ``PsiError`` naming its position."""
    try:
        return str(sample_id).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PsiError(
            f"sample ID at position {position} ({sample_id!r}) is not valid Unicode text "
            f"({exc.reason}, e.g. a lone surrogate): give IDs that encode as UTF-8"
        ) from None


def hash_to_point(sample_id: Any) -> bytes:
    """RFC 9380 ``hash_to_ristretto255`` of ``str(sample_id)`` (32 bytes)."""
    return _group().crypto_core_ristretto255_from_hash(expand_message_xmd(encode_id(sample_id), DST, 64))


def new_key() -> bytes:
    """A uniform nonzero scalar: 64 CSPRNG bytes reduced mod the group order."""
    while True:
        key = _group().crypto_core_ristretto255_scalar_reduce(secrets.token_bytes(64))
        if any(key):
            return key


def permutation(size: int) -> np.ndarray:
    """A uniformly random permutation: the argsort of CSPRNG keys."""
    keys = np.frombuffer(secrets.token_bytes(8 * size), dtype="<u8")
    return np.argsort(keys, kind="stable").astype(np.int64)


def _in_parallel(work: Callable[[Any], bytes], items: list[Any]) -> np.ndarray:
    """``work`` over contiguous slices of ``items`` on every core, as an (n, 32) array."""
    step = -(-len(items) // WORKERS) if items else 1
    parts = list(_pool().map(work, [items[i : i + step] for i in range(0, len(items), step)]))
    return np.frombuffer(b"".join(parts), dtype=np.uint8).reshape(-1, POINT_SIZE).copy()


def _hash_all(ids: list[str]) -> np.ndarray:
    group = _group()

    def work(part: list[str]) -> bytes:
        return b"".join(
            group.crypto_core_ristretto255_from_hash(expand_message_xmd(i.encode(), DST, 64)) for i in part
        )

    return _in_parallel(work, ids)


def multiply(key: bytes, points: np.ndarray) -> np.ndarray:
    """``key * P`` for every row of an (n, 32) array; rejects non-canonical encodings and
    the identity with ``PsiError``."""
    points = as_points(points)
    data = points.tobytes()
    mult = _group().crypto_scalarmult_ristretto255

    def work(offsets: list[int]) -> bytes:
        try:
            return b"".join(mult(key, data[i : i + POINT_SIZE]) for i in offsets)
        except RuntimeError:
            raise PsiError("a list holds something that is not a ristretto255 group element") from None

    return _in_parallel(work, list(range(0, len(data), POINT_SIZE)))


def as_points(points: Any, count: int | None = None) -> np.ndarray:
    """``points`` as a C-contiguous (n, 32) uint8 array (``n == count`` if given), else ``PsiError``."""
    if not isinstance(points, np.ndarray) or points.dtype != np.uint8 or points.shape[1:] != (POINT_SIZE,):
        shape = getattr(points, "shape", type(points).__name__)
        raise PsiError(f"expected an (n, {POINT_SIZE}) uint8 array of group elements, got {shape}")
    if count is not None and len(points) != count:
        raise PsiError(f"expected {count} group elements, got {len(points)}")
    return np.ascontiguousarray(points)


def canonical_ids(ids: Iterable[Any]) -> dict[str, Any]:
    """``str(id) -> id`` (the first of several IDs with the same string wins); an ID that is
    not valid Unicode is a ``PsiError`` naming its position."""
    ids = list(ids)
    out: dict[str, Any] = {}
    for sample_id in ids:
        out.setdefault(str(sample_id), sample_id)
    try:
        "".join(out).encode("utf-8")  # one pass in C; find the culprit only on failure
    except UnicodeEncodeError:
        for position, sample_id in enumerate(ids):
            encode_id(sample_id, position)
    return out


# ----- one party --------------------------------------------------------------------------
@dataclass
class PsiParty:
    """One party's side: its IDs, keys, secret order and (collaborators) protocol state.

    ``to_state()``/``from_state()`` turn it into arrays and bytes, so a collaborator whose
    process ends between messages keeps it in Flower's ``context.state``.
    """

    ids: list[str]
    keys: list[bytes] = field(default_factory=list)
    order: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def create(cls, ids: Iterable[Any], num_keys: int = 1) -> PsiParty:
        """A party with ``num_keys`` fresh keys over ``ids`` (as strings, duplicates dropped)."""
        return cls(ids=list(canonical_ids(ids)), keys=[new_key() for _ in range(num_keys)])

    def new_order(self) -> None:
        """Draw the secret order in which this party sends its own set."""
        self.order = permutation(len(self.ids))

    def own_points(self, start: int, stop: int, key_indices: Iterable[int]) -> np.ndarray:
        """Positions ``start:stop`` of this party's own list, hashed and blinded with its keys."""
        if self.order is None:
            raise PsiError("own_points() before new_order()")
        points = _hash_all([self.ids[i] for i in self.order[start:stop]])
        for index in key_indices:
            points = self.blind(points, index)
        return points

    def blind(self, points: np.ndarray, key_index: int = 0) -> np.ndarray:
        """Multiply every point by one of this party's keys (counted in ``meta``)."""
        out = multiply(self.keys[key_index], points)
        self.meta["multiplications"] = self.meta.get("multiplications", 0) + len(out)
        return out

    def shuffle(self, chain: str, points: np.ndarray) -> np.ndarray:
        """Shuffle a chain's list, remembering the permutation for ``unshuffle``."""
        perm = permutation(len(points))
        self.arrays[f"perm:{chain}"] = perm
        return points[perm]

    def unshuffle(self, chain: str, positions: np.ndarray) -> np.ndarray:
        """Positions in this party's shuffled output of ``chain`` -> positions in its input."""
        perm = self.arrays.get(f"perm:{chain}", np.zeros(0, dtype=np.int64))
        return np.sort(perm[np.asarray(positions, dtype=np.int64)])

    def resolve(self, positions: np.ndarray) -> list[str]:
        """Positions in this party's own list -> its IDs (as strings)."""
        if self.order is None:
            raise PsiError("resolve() before this party sent its own list")
        return [self.ids[self.order[p]] for p in np.asarray(positions, dtype=np.int64)]

    def to_state(self) -> dict[str, Any]:
        """Arrays and bytes (no IDs: the party reloads those locally)."""
        state: dict[str, Any] = {f"key{i}": key for i, key in enumerate(self.keys)}
        state["meta"] = json.dumps(self.meta).encode()
        if self.order is not None:
            state["order"] = self.order
        state.update(self.arrays)
        return state

    @classmethod
    def from_state(cls, ids: Iterable[Any], state: Mapping[str, Any]) -> PsiParty:
        """Rebuild a party from ``to_state()`` and its IDs (an empty state: a fresh party)."""
        keys = [bytes(state[k]) for k in sorted(k for k in state if k.startswith("key"))]
        order = state.get("order")
        return cls(
            ids=list(canonical_ids(ids)),
            keys=keys,
            order=None if order is None else np.asarray(order, dtype=np.int64),
            meta=json.loads(bytes(state["meta"])) if "meta" in state else {},
            arrays={k: np.asarray(v) for k, v in state.items() if ":" in k},
        )

