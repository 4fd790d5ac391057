"""A collaborator's side of the PSI: it answers the host's requests and keeps the protocol
state that stops a host from using it as a blinding oracle (see ``alphafed_flwr.psi``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from alphafed_flwr.api.log import logger
from alphafed_flwr.psi_core import (
    COMPARED_SIZE,
    HOST_CHAIN,
    PsiError,
    PsiParty,
    PsiRefused,
    as_points,
    new_key,
    permutation,
)

MAX_PARTIES = 1024
MAX_SET_SIZE = 1 << 40
START_KEYS = ("start", "parties", "index", "host-size")


def collaborator_step(party: PsiParty, request: Mapping[str, Any]) -> tuple[dict[str, Any], list[str] | None]:
    """Answer one host request, or refuse it.

    A request may combine ``start`` (with ``parties``, ``index``, ``host-size``), ``sizes``
    (``{chain: size}``), ``own`` (how many points of the own list to send next), ``blind``
    (``{chain: points}``), ``drain`` (``{chain: count}``), ``unshuffle`` (``{chain:
    positions}``) and ``resolve`` (positions in the own list), handled in that order.

    Parameters
    ----------
    party : PsiParty
        This collaborator's party (``PsiParty.from_state`` of its saved state); updated in place.
    request : Mapping[str, Any]
        The host's request, as decoded from its message.

    Returns
    -------
    tuple[dict[str, Any], list[str] | None]
        The reply (points, positions and sizes only), and after ``resolve`` this
        party's IDs in the intersection, which stay local.

    Raises
    ------
    PsiRefused
        If the request is not one the protocol allows at this point. The refusal is
        logged and aborts this party's PSI: every later request is refused too.
    """
    try:
        return _answer(party, request)
    except PsiError as exc:
        reason = str(exc)
        party.meta["aborted"] = reason
        logger.warning("PSI request refused: %s", reason)
        raise PsiRefused(reason) from None


def _answer(party: PsiParty, request: Mapping[str, Any]) -> tuple[dict[str, Any], list[str] | None]:
    if party.meta.get("aborted"):
        raise PsiError(f"this collaborator's PSI was aborted by an earlier refused request ({party.meta['aborted']})")
    if not isinstance(request, Mapping):
        raise PsiError(f"a PSI request is a mapping, not {type(request).__name__}")
    unknown = sorted(map(str, set(request) - set(_HANDLERS) - set(START_KEYS)))
    if unknown:
        raise PsiError(f"unknown PSI request keys {unknown}")
    reply: dict[str, Any] = {}
    mine: list[str] | None = None
    if any(key in request for key in START_KEYS):
        reply["size"] = _start(party, request)
    for key, handler in _HANDLERS.items():
        if key in request:
            if key != "sizes" and "sizes" not in party.meta:
                raise PsiError(f"'{key}' before the set sizes were announced")
            out = handler(party, request[key])
            if key == "resolve":
                mine = out
                reply["intersection-size"] = len(out)
            elif out is not None and len(out):
                reply[key] = out
    return reply, mine


# ----- checks on request values -----------------------------------------------------------
def _int(value: Any, what: str, low: int = 0, high: int = MAX_SET_SIZE) -> int:
    """A Python or numpy integer (also a 0-d array) within [low, high]."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise PsiError(f"{what} must be an integer, got {type(value).__name__}")
    if not low <= int(value) <= high:
        raise PsiError(f"{what} = {int(value)} is outside [{low}, {high}]")
    return int(value)


def _map(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise PsiError(f"'{what}' must map chain names to values")
    return value


def _positions(value: Any, limit: int, most: int, what: str) -> np.ndarray:
    """Unique integer positions in [0, limit), at most ``most`` of them."""
    if not isinstance(value, np.ndarray) or value.ndim != 1 or not (value.dtype.kind in "iu" or value.size == 0):
        raise PsiError(f"{what}: positions must be a 1-d integer array")
    positions = value.astype(np.int64)
    if len(positions) > most:
        raise PsiError(f"{what}: {len(positions)} positions, but no intersection can exceed {most}")
    if len(positions) and (positions.min() < 0 or positions.max() >= limit):
        raise PsiError(f"{what}: positions outside [0, {limit})")
    if len(np.unique(positions)) != len(positions):
        raise PsiError(f"{what}: repeated positions")
    return positions


def _chains(party: PsiParty) -> set[str]:
    """The chains the protocol routes through this collaborator."""
    index = party.meta["index"]
    return {HOST_CHAIN} | {f"c{j}" for j in range(party.meta["parties"]) if j != index}


def _chain(party: PsiParty, chain: str, what: str) -> int:
    """The announced size of a chain routed through this party."""
    if chain not in _chains(party):
        raise PsiError(f"{what}: chain '{chain}' does not pass through this collaborator")
    return party.meta["sizes"][chain]


def _shuffling(party: PsiParty, what: str) -> None:
    if party.meta["parties"] < 2:
        raise PsiError(f"'{what}' is not a step of the two-party protocol")


def _most(party: PsiParty) -> int:
    return min(party.meta["sizes"].values())


# ----- the steps --------------------------------------------------------------------------
def _start(party: PsiParty, request: Mapping[str, Any]) -> int:
    if party.keys or "parties" in party.meta:
        raise PsiError("a second 'start': one private set intersection per task")
    if request.get("start") is not True:
        raise PsiError("'start' must be true, with 'parties', 'index' and 'host-size'")
    parties = _int(request.get("parties"), "'parties'", 1, MAX_PARTIES)
    party.meta.update(
        parties=parties,
        index=_int(request.get("index"), "'index'", 0, parties - 1),
        host_size=_int(request.get("host-size"), "'host-size'"),
        own_sent=0, fed={}, drained={}, unshuffled=[], resolved=False,
    )
    party.keys = [new_key()]
    party.new_order()
    return len(party.ids)


def _announce(party: PsiParty, sizes: Any) -> None:
    if "parties" not in party.meta:
        raise PsiError("'sizes' before 'start'")
    if "sizes" in party.meta:
        raise PsiError("the set sizes are announced once")
    sizes = _map(sizes, "sizes")
    expected = {HOST_CHAIN} | {f"c{j}" for j in range(party.meta["parties"])}
    if set(sizes) != expected:
        raise PsiError(f"'sizes' must name exactly the chains {sorted(expected)}")
    checked = {chain: _int(size, f"size of '{chain}'") for chain, size in sizes.items()}
    own = f"c{party.meta['index']}"
    if checked[own] != len(party.ids) or checked[HOST_CHAIN] != party.meta["host_size"]:
        raise PsiError("the announced sizes contradict this party's own size or the host's size at 'start'")
    party.meta["sizes"] = checked


def _own(party: PsiParty, count: Any) -> np.ndarray:
    sent = party.meta["own_sent"]
    count = _int(count, "'own'", 1, len(party.ids) - sent)
    points = party.own_points(sent, sent + count, [0])
    party.meta["own_sent"] = sent + count
    return points


def _blind(party: PsiParty, chunks: Any) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for chain, points in sorted(_map(chunks, "blind").items()):
        size = _chain(party, chain, "'blind'")
        fed = party.meta["fed"].get(chain, 0)
        points = as_points(points)
        if fed + len(points) > size:
            raise PsiError(f"'blind' of chain '{chain}' beyond its announced size {size} (each point is blinded once)")
        blinded = party.blind(points)
        party.meta["fed"][chain] = fed + len(points)
        if party.meta["parties"] < 2:  # the host only compares these: their prefixes suffice
            out[chain] = np.ascontiguousarray(blinded[:, :COMPARED_SIZE])
            continue
        kept = party.arrays.get(f"acc:{chain}")
        party.arrays[f"acc:{chain}"] = blinded if kept is None else np.concatenate([kept, blinded])
        if fed + len(points) == size:
            party.arrays[f"perm:{chain}"] = permutation(size)
    return out


def _complete(party: PsiParty, chain: str) -> bool:
    return party.meta["fed"].get(chain, 0) == party.meta["sizes"][chain]


def _drain(party: PsiParty, counts: Any) -> dict[str, np.ndarray]:
    _shuffling(party, "drain")
    out: dict[str, np.ndarray] = {}
    for chain, count in sorted(_map(counts, "drain").items()):
        size = _chain(party, chain, "'drain'")
        if not _complete(party, chain):
            raise PsiError(f"'drain' of chain '{chain}' before all of it was blinded")
        drained = party.meta["drained"].get(chain, 0)
        count = _int(count, f"'drain' of '{chain}'", 1, size - drained)
        perm = party.arrays[f"perm:{chain}"]
        out[chain] = party.arrays[f"acc:{chain}"][perm[drained : drained + count]]
        party.meta["drained"][chain] = drained + count
        if drained + count == size:
            del party.arrays[f"acc:{chain}"]
    return out


def _unshuffle(party: PsiParty, maps: Any) -> dict[str, np.ndarray]:
    _shuffling(party, "unshuffle")
    out: dict[str, np.ndarray] = {}
    for chain, positions in sorted(_map(maps, "unshuffle").items()):
        size = _chain(party, chain, "'unshuffle'")
        if party.meta["drained"].get(chain, 0) != size or chain in party.meta["unshuffled"]:
            raise PsiError(f"'unshuffle' of chain '{chain}' must come once, after all of it was sent back")
        out[chain] = party.unshuffle(chain, _positions(positions, size, _most(party), f"'unshuffle' of '{chain}'"))
        party.meta["unshuffled"].append(chain)
    return out


def _resolve(party: PsiParty, positions: Any) -> list[str]:
    if party.meta["resolved"]:
        raise PsiError("'resolve' comes once")
    if party.meta["own_sent"] != len(party.ids) or not all(_complete(party, c) for c in _chains(party)):
        raise PsiError("'resolve' before this party's own list and every chain it blinds were complete")
    mine = party.resolve(_positions(positions, len(party.ids), _most(party), "'resolve'"))
    party.meta["resolved"] = True
    return mine


_HANDLERS: dict[str, Callable[[PsiParty, Any], Any]] = {
    "sizes": _announce,
    "own": _own,
    "blind": _blind,
    "drain": _drain,
    "unshuffle": _unshuffle,
    "resolve": _resolve,
}
