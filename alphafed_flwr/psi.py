"""Private set intersection of sample IDs between the host and its collaborators.

Commutative blinding on Curve25519: ``f_s(P) = X25519(s, P)`` and
``f_a(f_b(P)) = f_b(f_a(P))``. An ID ``x`` (compared as ``str(x)``) is mapped to the point
``H(x) = SHA-512(domain || str(x))[:32]``; ``H(x)`` itself is never sent. Keys come from
``X25519PrivateKey.generate()`` and permutations from ``secrets`` (both CSPRNGs).

Parties: the host (``h``, keys ``s_0`` and ``u_0``) and collaborators ``c_1..c_m`` (key
``s_j`` each), in a cyclic order fixed by the host. Every party's set travels a chain of
blinding hops and ends at the host fully blinded by all keys:

- chain ``c_k``: ``c_k`` blinds its own set (in a secret order) -> host applies ``s_0`` and
  shuffles -> ``c_{k+1}``, ``c_{k+2}``, ... ``c_{k-1}`` each blind and shuffle -> host
  applies ``u_0``;
- chain ``h``: the host blinds its set with ``s_0`` and ``u_0`` -> ``c_1`` ... ``c_m``
  blind and shuffle -> host.

The host intersects the fully blinded lists, then sends each chain the *positions* of the
common elements; positions travel the chain backwards, each hop undoing its own shuffle,
until the owner maps them to its own IDs. Every party thus learns the intersection.

What each party sees, assuming semi-honest parties that do not collude: list sizes (so the
set sizes); collaborators see lists blinded by keys they do not hold, never two lists under
the same set of keys, so they can compare nothing; the host compares the fully blinded
lists, so it also learns the *sizes* of the intersections between any parties' sets, but it
can map only its own chain back to IDs (the others are shuffled by other parties), so it
learns no member outside the final intersection. Messages carry blinded points and
positions only: no raw IDs and no plain hashes of IDs.

``run_psi`` drives the protocol on the host over an ``exchange`` callback (one request per
collaborator per step, 2m steps for m collaborators); ``collaborator_step`` answers one
request. Both are transport-agnostic (the adapters carry them in Flower records).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

DOMAIN = b"alphafed-flwr/psi/v1\x00"
POINT_SIZE = 32
HOST_CHAIN = "h"


class PsiError(RuntimeError):
    """The protocol cannot complete (for example: parties disagree on the intersection)."""


def hash_to_point(sample_id: Any) -> bytes:
    """The curve point (a u-coordinate) of an ID, compared as ``str(id)``."""
    return hashlib.sha512(DOMAIN + str(sample_id).encode()).digest()[:POINT_SIZE]


def _new_key() -> bytes:
    return X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _apply(key: bytes, points: np.ndarray) -> np.ndarray:
    private = X25519PrivateKey.from_private_bytes(key)
    out = np.empty_like(points)
    for i, point in enumerate(points):
        out[i] = np.frombuffer(
            private.exchange(X25519PublicKey.from_public_bytes(point.tobytes())), dtype=np.uint8
        )
    return out


def _permutation(size: int) -> np.ndarray:
    order = list(range(size))
    secrets.SystemRandom().shuffle(order)
    return np.asarray(order, dtype=np.int64)


def canonical_ids(ids: Iterable[Any]) -> dict[str, Any]:
    """``str(id) -> id`` (the first of several IDs with the same string wins)."""
    out: dict[str, Any] = {}
    for sample_id in ids:
        out.setdefault(str(sample_id), sample_id)
    return out


@dataclass
class PsiParty:
    """One party's side of the protocol: its IDs, keys and the permutations it applied.

    ``to_state()``/``from_state()`` turn it into plain arrays and bytes, so a collaborator
    whose process ends between messages can keep it in Flower's ``context.state``.
    """

    ids: list[str]
    keys: list[bytes] = field(default_factory=list)
    order: np.ndarray | None = None
    shuffles: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def create(cls, ids: Iterable[Any], num_keys: int = 1) -> PsiParty:
        """A party with fresh keys over ``ids`` (as strings, duplicates dropped)."""
        return cls(ids=list(canonical_ids(ids)), keys=[_new_key() for _ in range(num_keys)])

    def start(self, num_keys: int | None = None) -> np.ndarray:
        """This party's set, in a secret order, blinded with its first ``num_keys`` keys."""
        self.order = _permutation(len(self.ids))
        points = np.frombuffer(
            b"".join(hash_to_point(self.ids[i]) for i in self.order), dtype=np.uint8
        ).reshape(-1, POINT_SIZE)
        for key in self.keys[: num_keys or 1]:
            points = _apply(key, points)
        return points

    def blind(self, chain: str, points: np.ndarray, key_index: int = 0, shuffle: bool = True) -> np.ndarray:
        """Apply one key to a chain's list and (by default) shuffle it, remembering how."""
        points = _apply(self.keys[key_index], _as_points(points))
        if not shuffle:
            return points
        perm = _permutation(len(points))
        self.shuffles[chain] = perm
        return points[perm]

    def unshuffle(self, chain: str, positions: np.ndarray) -> np.ndarray:
        """Positions in this party's output list of ``chain`` -> positions in its input."""
        perm = self.shuffles.get(chain)
        positions = np.asarray(positions, dtype=np.int64)
        return positions if perm is None else np.sort(perm[positions])

    def resolve(self, positions: np.ndarray) -> list[str]:
        """Positions in this party's own started list -> its IDs (as strings)."""
        if self.order is None:
            raise PsiError("resolve() before start()")
        return [self.ids[self.order[p]] for p in np.asarray(positions, dtype=np.int64)]

    def to_state(self) -> dict[str, Any]:
        """Plain arrays and bytes (no IDs: the party reloads those locally)."""
        state: dict[str, Any] = {f"key{i}": key for i, key in enumerate(self.keys)}
        if self.order is not None:
            state["order"] = self.order
        state.update({f"shuffle:{c}": p for c, p in self.shuffles.items()})
        return state

    @classmethod
    def from_state(cls, ids: Iterable[Any], state: Mapping[str, Any]) -> PsiParty:
        """Rebuild a party from ``to_state()`` and its IDs."""
        keys = [bytes(state[k]) for k in sorted(k for k in state if k.startswith("key"))]
        order = state.get("order")
        shuffles = {k[len("shuffle:") :]: np.asarray(v) for k, v in state.items() if k.startswith("shuffle:")}
        return cls(
            ids=list(canonical_ids(ids)),
            keys=keys,
            order=None if order is None else np.asarray(order, dtype=np.int64),
            shuffles=shuffles,
        )


def _as_points(points: Any) -> np.ndarray:
    arr = np.asarray(points, dtype=np.uint8)
    if arr.ndim != 2 or arr.shape[1] != POINT_SIZE:
        raise PsiError(f"expected an (n, {POINT_SIZE}) array of points, got shape {arr.shape}")
    return arr


def collaborator_step(
    party: PsiParty, request: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str] | None]:
    """Answer one host request: ``start``, ``blind`` (per chain), ``unshuffle`` (per chain),
    ``resolve`` (positions of its own chain).

    Returns the reply (points and positions only; after ``resolve``, the intersection's
    size) and, after ``resolve``, this party's IDs in the intersection, which stay local.
    """
    reply: dict[str, Any] = {}
    if request.get("start"):
        reply["own"] = party.start()
    blinded = {c: party.blind(c, pts) for c, pts in request.get("blind", {}).items()}
    if blinded:
        reply["blind"] = blinded
    back = {c: party.unshuffle(c, pos) for c, pos in request.get("unshuffle", {}).items()}
    if back:
        reply["unshuffle"] = back
    mine = None
    if request.get("resolve") is not None:
        mine = party.resolve(request["resolve"])
        reply["intersection-size"] = len(mine)
    return reply, mine


Exchange = Callable[[dict[str, dict[str, Any]]], dict[str, dict[str, Any]]]


def run_psi(
    host: PsiParty, collaborators: list[str], exchange: Exchange
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Drive the protocol from the host (see the module docstring): 2m exchanges.

    Parameters
    ----------
    host : PsiParty
        The host's party, created with two keys (``s_0``, ``u_0``).
    collaborators : list[str]
        Collaborator names in the cyclic order of the chains.
    exchange : Exchange
        Sends ``{name: request}`` to collaborators and returns ``{name: reply}``.

    Returns
    -------
    tuple[list[str], dict[str, dict[str, Any]]]
        The host's IDs in the intersection (as strings), and each collaborator's last
        reply (with ``intersection-size`` and whatever the collaborator added).

    Raises
    ------
    PsiError
        If a collaborator's intersection size differs from the host's.
    """
    if len(host.keys) < 2:
        raise PsiError("the host needs two keys")
    m = len(collaborators)
    if m == 0:
        raise PsiError("a private set intersection needs at least one collaborator")
    chains = [f"c{k}" for k in range(m)]
    # collaborator hops of each chain: c_k visits k+1 .. k-1 (cyclic); the host chain 0 .. m-1
    route = {HOST_CHAIN: list(range(m))}
    route.update({f"c{k}": [(k + d) % m for d in range(1, m)] for k in range(m)})
    lists = {HOST_CHAIN: host.start(num_keys=2)}

    for step in range(m):  # forward: every list gets every key
        requests: dict[str, dict[str, Any]] = {name: {} for name in collaborators}
        if step == 0:
            for name in collaborators:
                requests[name]["start"] = True
        for chain, hops in route.items():
            hop = step if chain == HOST_CHAIN else step - 1
            if 0 <= hop < len(hops):
                requests[collaborators[hops[hop]]].setdefault("blind", {})[chain] = lists[chain]
        replies = exchange(requests)
        for k, name in enumerate(collaborators):
            if step == 0:
                lists[chains[k]] = host.blind(chains[k], replies[name]["own"], key_index=0)
            lists.update(replies[name].get("blind", {}))
    for chain in chains:  # last hop: the host's second key (it compares, so no shuffle)
        lists[chain] = host.blind(chain + ":u", lists[chain], key_index=1, shuffle=False)

    common = set.intersection(*(set(map(bytes, lst)) for lst in lists.values()))
    positions = {
        chain: np.asarray([i for i, p in enumerate(lst) if bytes(p) in common], dtype=np.int64)
        for chain, lst in lists.items()
    }
    last: dict[str, dict[str, Any]] = {}
    for step in range(m):  # backward: each hop undoes its shuffle, owners resolve
        if step == m - 1:
            for chain in chains:
                positions[chain] = host.unshuffle(chain, positions[chain])
        requests = {name: {} for name in collaborators}
        for chain, hops in route.items():
            back = hops[::-1]
            if step < len(back):
                requests[collaborators[back[step]]].setdefault("unshuffle", {})[chain] = positions[chain]
        if step == m - 1:
            for k, name in enumerate(collaborators):
                requests[name]["resolve"] = positions[chains[k]]
        replies = exchange(requests)
        for name, reply in replies.items():
            positions.update(reply.get("unshuffle", {}))
        last = replies
    mine = host.resolve(positions[HOST_CHAIN])
    for name, reply in last.items():
        if reply.get("intersection-size") != len(mine):
            raise PsiError(
                f"'{name}' found {reply.get('intersection-size')} common IDs, the host {len(mine)}"
            )
    return mine, last
