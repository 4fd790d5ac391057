"""Group, hash, randomness and one party's state for the PSI (see ``alphafed_flwr.psi``)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import os
import secrets
import sys
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DST = b"ALPHAFED-FLWR-PSI-V03-CS01-with-curve25519_XMD:SHA-512_ELL2_NU_"
FIELD_PRIME = 2**255 - 19
POINT_SIZE = 32  # an X25519 u-coordinate, little-endian
COMPARED_SIZE = 16  # bytes of a fully blinded point that the two-party host compares
KEY_SIZE = 32  # an X25519 private key (clamped by X25519 itself)
CHUNK = 1 << 17  # points per message: 4 MiB
SPAN = 2048  # points per task of the multiplication threads (about 70 ms of work)
HOST_CHAIN = "h"
WORKERS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
_XMD_PAD = hashlib.sha512(bytes(128))  # expand_message_xmd's Z_pad block, hashed once
_FIELD_LENGTH = 48  # RFC 9380 hash_to_field's L for curve25519
_PRIME_BYTES = FIELD_PRIME.to_bytes(POINT_SIZE, "little")


class PsiError(RuntimeError):
    """The protocol cannot complete (bad input, a malformed reply, disagreeing parties)."""


class PsiRefused(PsiError):
    """A collaborator refused a request that the protocol does not allow."""


# ----- group, hash, randomness -----------------------------------------------------------
@functools.cache
def _x25519() -> Callable[..., int]:
    """libsodium's ``crypto_scalarmult_curve25519`` from the library that ``rbcl`` bundles,
    called through ctypes (which releases the GIL, so threads use every core). rbcl writes
    its library to a temporary file, which can be removed once it is mapped."""
    import rbcl  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import

    module = sys.modules["rbcl._sodium"]
    if os.name == "posix":
        with contextlib.suppress(AttributeError, OSError):
            os.unlink(module.lib_path)
    try:
        function = module._sodium["crypto_scalarmult_curve25519"]  # pylint: disable=protected-access
    except (AttributeError, KeyError) as exc:
        raise PsiError(f"rbcl's libsodium has no crypto_scalarmult_curve25519 ({exc}): reinstall rbcl>=1.1,<2") from None
    function.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    function.restype = ctypes.c_int
    return function


@functools.cache
def _elligator_map() -> Callable[[bytes], bytes]:
    """Monocypher's Elligator 2 map to Curve25519 (``crypto_elligator_map``, pymonocypher)."""
    import monocypher  # pylint: disable=import-outside-toplevel

    return monocypher.elligator_map


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool() -> ThreadPoolExecutor:
    """Threads for the multiplications (libsodium runs outside the GIL, so they use every
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


def hash_to_field(msg: bytes, dst: bytes = DST) -> int:
    """RFC 9380 section 5.2 ``hash_to_field(msg, 1)`` for curve25519: one element of GF(p)."""
    return int.from_bytes(expand_message_xmd(msg, dst, _FIELD_LENGTH), "big") % FIELD_PRIME


def map_to_curve(u: int) -> bytes:
    """RFC 9380 section 6.7.1 ``map_to_curve_elligator2`` for curve25519 (Z = 2): the
    u-coordinate of the point, by Monocypher. Monocypher reads 254-bit representatives,
    and the map depends on ``u**2`` only, so ``u`` and ``p - u`` give the same point."""
    return _elligator_map()(min(u, FIELD_PRIME - u).to_bytes(POINT_SIZE, "little"))


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
    """The curve point of ``str(sample_id)`` (32 bytes, a u-coordinate): RFC 9380's
    ``curve25519_XMD:SHA-512_ELL2_NU_`` encoding before its cofactor clearing, which the
    first (clamped) X25519 multiplication does (see ``alphafed_flwr.psi``)."""
    return map_to_curve(hash_to_field(encode_id(sample_id)))


def new_key() -> bytes:
    """An X25519 private key: 32 CSPRNG bytes (X25519 clamps them: bit 254 set, the three
    low bits and bit 255 cleared, so the key is never zero)."""
    return secrets.token_bytes(KEY_SIZE)


def permutation(size: int, seed: bytes | None = None) -> np.ndarray:
    """A uniformly random permutation: the argsort of CSPRNG keys, or with a 32-byte
    ``seed`` of ChaCha20's keystream under it (``cryptography``), so the seed stands for
    the permutation (a party keeps 32 bytes in its state, not 8 bytes per ID)."""
    raw = secrets.token_bytes(8 * size) if seed is None else _keystream(seed, 8 * size)
    return np.argsort(np.frombuffer(raw, dtype="<u8"), kind="stable").astype(np.int64)


def _keystream(seed: bytes, length: int) -> bytes:
    """``length`` bytes of ChaCha20's keystream under ``seed`` (nonce and counter zero)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms  # pylint: disable=import-outside-toplevel

    if not isinstance(seed, bytes) or len(seed) != KEY_SIZE:
        raise PsiError(f"a permutation seed is {KEY_SIZE} bytes")
    return Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor().update(bytes(length))


@functools.lru_cache(maxsize=4)
def _order(seed: bytes, size: int) -> np.ndarray:
    """``permutation(size, seed)``, kept for the next message of a warm process (read-only)."""
    order = permutation(size, seed)
    order.flags.writeable = False
    return order


def _hash_all(ids: list[str]) -> np.ndarray:
    """``hash_to_point`` of many IDs, in this thread: the map holds the GIL, and threads
    running it beside the multiplications would stall them."""
    elligator, prime, dst_prime = _elligator_map(), FIELD_PRIME, DST + bytes([len(DST)])
    suffix = _FIELD_LENGTH.to_bytes(2, "big") + b"\0" + dst_prime
    second = b"\1" + dst_prime
    pad, sha512, to_int, half = _XMD_PAD.copy, hashlib.sha512, int.from_bytes, FIELD_PRIME // 2 + 1
    out: list[bytes] = []
    append = out.append
    for sample_id in ids:  # expand_message_xmd with one block, inlined: this is the hot loop
        first = pad()
        first.update(sample_id.encode() + suffix)
        u = to_int(sha512(first.digest() + second).digest()[:_FIELD_LENGTH], "big") % prime
        append(elligator((u if u < half else prime - u).to_bytes(POINT_SIZE, "little")))  # min(u, p - u)
    return np.frombuffer(b"".join(out), dtype=np.uint8).reshape(-1, POINT_SIZE)


def _canonical(points: np.ndarray) -> np.ndarray:
    """Rows that encode a u-coordinate below p with bit 255 clear (X25519 would quietly
    reduce the others, so two encodings could name one point)."""
    top = points[:, -1].astype(np.int64)
    at_least_p = (top == 0x7F) & (points[:, 1:-1] == 0xFF).all(axis=1) & (points[:, 0] >= _PRIME_BYTES[0])
    return (top < 0x80) & ~at_least_p


def multiply(key: bytes, points: np.ndarray) -> np.ndarray:
    """X25519 of ``key`` with every row of an (n, 32) array, on every core (in spans of
    ``SPAN`` points, which the threads take in turn, so they finish together even when other
    work holds a core); a non-canonical encoding or a point of small order (X25519's all-zero
    result) is a ``PsiError``."""
    if not isinstance(key, bytes) or len(key) != KEY_SIZE:
        raise PsiError(f"an X25519 key is {KEY_SIZE} bytes")
    points = as_points(points)
    if not _canonical(points).all():
        raise PsiError("a list holds a non-canonical u-coordinate: not an X25519 point")
    out = np.empty_like(points)
    x25519, source, target, total = _x25519(), points.ctypes.data, out.ctypes.data, points.size

    def work(span: range) -> bool:
        failed = 0
        for offset in span:
            failed |= x25519(target + offset, key, source + offset)
        return failed == 0

    step = POINT_SIZE * SPAN
    spans = [range(lo, min(lo + step, total), POINT_SIZE) for lo in range(0, total, step)]
    if not all(_pool().map(work, spans)):
        raise PsiError("a list holds a point of small order (X25519 gave the all-zero result)")
    return out


def as_points(points: Any, count: int | None = None, width: int = POINT_SIZE) -> np.ndarray:
    """``points`` as a C-contiguous (n, width) uint8 array (``n == count`` if given), else
    ``PsiError``; ``width`` 32 for curve points, fewer for the compared prefixes."""
    if not isinstance(points, np.ndarray) or points.dtype != np.uint8 or points.shape[1:] != (width,):
        shape = getattr(points, "shape", type(points).__name__)
        raise PsiError(f"expected an (n, {width}) uint8 array of curve points, got {shape}")
    if count is not None and len(points) != count:
        raise PsiError(f"expected {count} curve points, got {len(points)}")
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
    seed: bytes | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def create(cls, ids: Iterable[Any], num_keys: int = 1, canonical: bool = False) -> PsiParty:
        """A party with ``num_keys`` fresh keys over ``ids`` (as strings, duplicates dropped;
        ``canonical``: ``ids`` is already ``canonical_ids`` of them)."""
        return cls(ids=list(ids if canonical else canonical_ids(ids)), keys=[new_key() for _ in range(num_keys)])

    def new_order(self) -> None:
        """Draw the secret order in which this party sends its own set (as its seed)."""
        self.seed = new_key()

    @property
    def order(self) -> np.ndarray | None:
        """The secret order of this party's own set (positions in ``ids``), or None before
        ``new_order()``."""
        return None if self.seed is None else _order(self.seed, len(self.ids))

    def own_points(self, start: int, stop: int, key_indices: Iterable[int]) -> np.ndarray:
        """Positions ``start:stop`` of this party's own list, hashed and blinded with its keys."""
        if self.order is None:
            raise PsiError("own_points() before new_order()")
        ids = self.ids
        points = _hash_all([ids[i] for i in self.order[start:stop].tolist()])
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
        ids = self.ids
        return [ids[i] for i in self.order[np.asarray(positions, dtype=np.int64)].tolist()]

    def to_state(self) -> dict[str, Any]:
        """Arrays and bytes (no IDs: the party reloads those locally)."""
        state: dict[str, Any] = {f"key{i}": key for i, key in enumerate(self.keys)}
        state["meta"] = json.dumps(self.meta).encode()
        if self.seed is not None:
            state["order-seed"] = self.seed
        state.update(self.arrays)
        return state

    @classmethod
    def from_state(cls, ids: Iterable[Any], state: Mapping[str, Any], canonical: bool = False) -> PsiParty:
        """Rebuild a party from ``to_state()`` and its IDs (an empty state: a fresh party);
        ``canonical``: ``ids`` is already ``canonical_ids`` of them (its keys are used as is)."""
        keys = [bytes(state[k]) for k in sorted(k for k in state if k.startswith("key"))]
        seed = state.get("order-seed")
        return cls(
            ids=list(ids if canonical else canonical_ids(ids)),
            keys=keys,
            seed=None if seed is None else bytes(seed),
            meta=json.loads(bytes(state["meta"])) if "meta" in state else {},
            arrays={k: np.asarray(v) for k, v in state.items() if ":" in k},
        )

