"""The host's side of the PSI: it drives the protocol over an ``exchange`` callback (see
``alphafed_flwr.psi``)."""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from alphafed_flwr.api.log import logger
from alphafed_flwr.psi_core import CHUNK, COMPARED_SIZE, HOST_CHAIN, POINT_SIZE, PsiError, PsiParty, as_points

Exchange = Callable[[dict[str, dict[str, Any]]], dict[str, dict[str, Any]]]
OnCommon = Callable[[list[str]], None]


def run_psi(
    host: PsiParty,
    collaborators: list[str],
    exchange: Exchange,
    chunk: int = CHUNK,
    on_common: OnCommon | None = None,
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Drive the protocol from the host.

    Parameters
    ----------
    host : PsiParty
        The host's party: one key with one collaborator, two with more.
    collaborators : list[str]
        Collaborator names, in the cyclic order of the chains.
    exchange : Exchange
        Sends ``{name: request}`` to some collaborators, returns ``{name: reply}``.
    chunk : int
        Points per list per message.
    on_common : OnCommon | None
        Called with the host's common IDs as soon as it knows them: with one collaborator,
        while the collaborator resolves its own (the last exchange), so the host's work on
        the intersection overlaps it.

    Returns
    -------
    tuple[list[str], dict[str, dict[str, Any]]]
        The host's IDs in the intersection (as strings), and each collaborator's last
        reply (with ``intersection-size`` and whatever the collaborator added).

    Raises
    ------
    PsiError
        On a malformed reply, or if a collaborator's intersection size differs from the host's.
    """
    m = len(collaborators)
    if m == 0:
        raise PsiError("a private set intersection needs at least one collaborator")
    if len(host.keys) < (2 if m > 1 else 1):
        raise PsiError(f"the host needs {2 if m > 1 else 1} key(s) with {m} collaborator(s)")
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    host.new_order()
    ahead = ThreadPoolExecutor(1, thread_name_prefix="psi-host")
    try:
        own = _OwnChunks(host, chunk, ahead) if m == 1 else None  # the first one computes during start
        starts = exchange(
            {
                name: {"start": True, "parties": m, "index": k, "host-size": len(host.ids)}
                for k, name in enumerate(collaborators)
            }
        )
        sizes = {HOST_CHAIN: len(host.ids)}
        for k, name in enumerate(collaborators):
            size = _reply(starts, name).get("size")
            if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 0:
                raise PsiError(f"'{name}' announced no valid set size")
            sizes[f"c{k}"] = int(size)
        if own is None:
            mine, last = _chains(host, collaborators, exchange, sizes, chunk)
            if on_common is not None:
                on_common(mine)
        else:
            mine, last = _two_parties(host, collaborators[0], exchange, sizes, chunk, own, on_common)
    finally:
        ahead.shutdown(wait=True, cancel_futures=True)
    for name in collaborators:
        size = _reply(last, name).get("intersection-size")
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size != len(mine):
            raise PsiError(f"'{name}' found {size!r} common IDs, the host {len(mine)}")
    return mine, last


def _reply(replies: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    reply = replies.get(name)
    if not isinstance(reply, Mapping):
        raise PsiError(f"'{name}' sent no PSI reply")
    return reply


def _part(
    reply: Mapping[str, Any], key: str, chain: str, count: int, name: str, width: int = POINT_SIZE
) -> np.ndarray:
    """``reply[key][chain]``: ``count`` curve points (or their ``width``-byte prefixes)."""
    parts = reply.get(key)
    if not isinstance(parts, Mapping) or chain not in parts:
        raise PsiError(f"'{name}' sent no '{key}' for chain '{chain}'")
    return as_points(parts[chain], count, width)


def _stack(parts: list[np.ndarray], width: int = POINT_SIZE) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, width), dtype=np.uint8)


def _elements(points: np.ndarray) -> np.ndarray:
    """Rows as single values, for set operations."""
    return np.ascontiguousarray(points).view(f"V{points.shape[1]}").ravel()


class _OwnChunks:
    """The host's own list, hashed and blinded chunk by chunk on its ``ahead`` thread, one
    chunk ahead of the one it sends."""

    def __init__(self, host: PsiParty, chunk: int, ahead: ThreadPoolExecutor) -> None:
        self.host, self.ahead = host, ahead
        self.bounds = deque((lo, min(lo + chunk, len(host.ids))) for lo in range(0, len(host.ids), chunk))
        self.ready: deque[Future[np.ndarray]] = deque()
        self.prepare()

    def prepare(self) -> None:
        """Start computing the next chunk, if any is left."""
        if self.bounds:
            start, stop = self.bounds.popleft()
            self.ready.append(self.ahead.submit(self.host.own_points, start, stop, [0]))

    def next(self) -> np.ndarray | None:
        """The oldest computed chunk (waiting for it), or None when all were taken."""
        return self.ready.popleft().result() if self.ready else None


def _two_parties(
    host: PsiParty, name: str, exchange: Exchange, sizes: dict[str, int], chunk: int, own: _OwnChunks,
    on_common: OnCommon | None,
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """4n multiplications. The first message asks only for the collaborator's first chunk
    (the host computed its own during ``start``), so both parties compute from the start;
    every later message carries the host's oldest computed chunk to blind and asks for the
    collaborator's next one, while the host blinds the chunk it just received and computes
    its next own chunk (on ``own``'s thread, in that order). The last exchange (the
    collaborator resolves its positions) runs on that thread while ``on_common`` runs here."""
    n_h, n_c = sizes[HOST_CHAIN], sizes["c0"]
    ours: list[np.ndarray] = []  # b a H(x), host order
    theirs: list[Future[np.ndarray]] = []  # a b H(y), collaborator's order
    sent_c = 0
    request: dict[str, Any] = {"sizes": sizes}
    steps = max(-(-n_h // chunk) + 1 if n_h else 1, -(-n_c // chunk))
    for step in range(1, steps + 1):
        logger.info("Private set intersection: exchange %d/%d", step, steps)
        own.prepare()
        points = own.next() if step > 1 else None
        if points is not None:
            request["blind"] = {HOST_CHAIN: points}
        asked = min(chunk, n_c - sent_c)
        if asked:
            request["own"] = asked
        reply = _reply(exchange({name: request}), name)
        if points is not None:
            ours.append(_part(reply, "blind", HOST_CHAIN, len(points), name, COMPARED_SIZE))
        if asked:
            theirs.append(own.ahead.submit(host.blind, as_points(reply.get("own"), asked), 0))
            sent_c += asked
        request = {}
    theirs_compared = _stack([future.result()[:, :COMPARED_SIZE] for future in theirs], COMPARED_SIZE)
    mine, common = _common({HOST_CHAIN: _stack(ours, COMPARED_SIZE), "c0": theirs_compared})
    resolving = own.ahead.submit(exchange, {name: {"resolve": common["c0"]}})
    ids = host.resolve(mine)
    if on_common is not None:
        on_common(ids)
    return ids, resolving.result()


def _common(lists: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Positions of the elements common to every list (the host's chain first). Blinded
    points look uniform, so their first 8 bytes almost surely differ within a list: then
    sorting those (fast) finds the candidates, and whole rows confirm them. Only a party
    that sends crafted points makes two prefixes equal; such lists take the exact path."""
    rows = {chain: np.ascontiguousarray(points) for chain, points in lists.items()}
    orders, sorted_prefixes = {}, {}
    for chain, points in rows.items():
        prefix = points[:, :8].copy().view("<u8").ravel()
        orders[chain] = np.argsort(prefix, kind="stable")
        sorted_prefixes[chain] = prefix[orders[chain]]
        if np.any(sorted_prefixes[chain][1:] == sorted_prefixes[chain][:-1]):
            return _common_exact(rows)
    candidates = sorted_prefixes[HOST_CHAIN]
    for prefix in sorted_prefixes.values():
        candidates = candidates[_present(prefix, candidates)]
    found = {c: orders[c][np.searchsorted(sorted_prefixes[c], candidates)] for c in rows}
    first = rows[HOST_CHAIN][found[HOST_CHAIN]]
    equal = np.logical_and.reduce([(rows[c][found[c]] == first).all(axis=1) for c in rows])
    positions = {chain: np.sort(at[equal]) for chain, at in found.items()}
    return positions[HOST_CHAIN], positions


def _present(sorted_values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Which ``queries`` occur in ``sorted_values``."""
    if not len(sorted_values):
        return np.zeros(len(queries), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_values, queries), len(sorted_values) - 1)
    return sorted_values[at] == queries


def _common_exact(lists: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``_common`` by whole 32-byte rows."""
    elements = {chain: _elements(points) for chain, points in lists.items()}
    if any(len(np.unique(e)) != len(e) for e in elements.values()):
        raise PsiError("a fully blinded list repeats an element: a party sent duplicate points")
    shared = functools.reduce(np.intersect1d, elements.values())
    positions = {chain: np.flatnonzero(np.isin(e, shared)) for chain, e in elements.items()}
    return positions[HOST_CHAIN], positions


def _chains(
    host: PsiParty, names: list[str], exchange: Exchange, sizes: dict[str, int], chunk: int
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """m >= 2 collaborators: every set travels its chain of hops (see ``alphafed_flwr.psi``)."""
    m = len(names)
    chains = [f"c{k}" for k in range(m)]
    own = _fetch_own(exchange, names, sizes, chunk)
    lists = {HOST_CHAIN: host.own_points(0, sizes[HOST_CHAIN], [0, 1])}
    for chain in chains:
        lists[chain] = host.shuffle(chain, host.blind(own[chain], 0))
    route = {HOST_CHAIN: list(range(m))} | {f"c{k}": [(k + d) % m for d in range(1, m)] for k in range(m)}
    for step in range(m):  # forward: every list gets every collaborator's key
        logger.info("Private set intersection: hop %d/%d", step + 1, m)
        hops = {}
        for chain, path in route.items():
            hop = step if chain == HOST_CHAIN else step - 1
            if 0 <= hop < len(path):
                hops[chain] = names[path[hop]]
        lists.update(_relay(exchange, hops, lists, chunk))
    for chain in chains:  # last hop: the host's second key (it compares, so no shuffle)
        lists[chain] = host.blind(lists[chain], 1)
    _, positions = _common(lists)
    last: dict[str, dict[str, Any]] = {}
    for step in range(m):  # backward: each hop undoes its shuffle, owners resolve
        if step == m - 1:
            for chain in chains:
                positions[chain] = host.unshuffle(chain, positions[chain])
        requests: dict[str, dict[str, Any]] = {name: {} for name in names}
        for chain, path in route.items():
            back = path[::-1]
            if step < len(back):
                requests[names[back[step]]].setdefault("unshuffle", {})[chain] = positions[chain]
        if step == m - 1:
            for k, name in enumerate(names):
                requests[name]["resolve"] = positions[chains[k]]
        last = exchange(requests)
        for name, request in requests.items():
            for chain, sent in request.get("unshuffle", {}).items():
                positions[chain] = _unshuffled(_reply(last, name), chain, len(sent), sizes[chain], name)
    return host.resolve(positions[HOST_CHAIN]), last


def _unshuffled(reply: Mapping[str, Any], chain: str, count: int, size: int, name: str) -> np.ndarray:
    parts = reply.get("unshuffle")
    value = parts.get(chain) if isinstance(parts, Mapping) else None
    if not isinstance(value, np.ndarray) or value.shape != (count,) or (count and value.dtype.kind not in "iu"):
        raise PsiError(f"'{name}' sent no valid positions for chain '{chain}'")
    positions = value.astype(np.int64)
    if count and (positions.min() < 0 or positions.max() >= size or len(np.unique(positions)) != count):
        raise PsiError(f"'{name}' sent positions outside chain '{chain}' or repeated")
    return positions


def _fetch_own(
    exchange: Exchange, names: list[str], sizes: dict[str, int], chunk: int
) -> dict[str, np.ndarray]:
    """Announce the sizes, then collect every collaborator's own blinded list in chunks."""
    parts: dict[str, list[np.ndarray]] = {f"c{k}": [] for k in range(len(names))}
    sent = dict.fromkeys(parts, 0)
    first = True
    while first or any(sent[c] < sizes[c] for c in parts):
        requests: dict[str, dict[str, Any]] = {}
        for k, name in enumerate(names):
            request: dict[str, Any] = {"sizes": sizes} if first else {}
            count = min(chunk, sizes[f"c{k}"] - sent[f"c{k}"])
            if count:
                request["own"] = count
            if request:
                requests[name] = request
        replies = exchange(requests)
        for k, name in enumerate(names):
            count = requests.get(name, {}).get("own", 0)
            if count:
                parts[f"c{k}"].append(as_points(_reply(replies, name).get("own"), count))
                sent[f"c{k}"] += count
        first = False
    return {chain: _stack(p) for chain, p in parts.items()}


def _relay(
    exchange: Exchange, hops: dict[str, str], lists: dict[str, np.ndarray], chunk: int
) -> dict[str, np.ndarray]:
    """Feed each chain's list to its hop in chunks, then drain the hop's shuffled output."""
    fed = dict.fromkeys(hops, 0)
    while any(fed[c] < len(lists[c]) for c in hops):
        requests: dict[str, dict[str, Any]] = {}
        for chain, name in hops.items():
            if fed[chain] < len(lists[chain]):
                part = lists[chain][fed[chain] : fed[chain] + chunk]
                requests.setdefault(name, {}).setdefault("blind", {})[chain] = part
                fed[chain] += len(part)
        exchange(requests)
    out: dict[str, list[np.ndarray]] = {chain: [] for chain in hops}
    drained = dict.fromkeys(hops, 0)
    while any(drained[c] < len(lists[c]) for c in hops):
        requests = {}
        for chain, name in hops.items():
            count = min(chunk, len(lists[chain]) - drained[chain])
            if count:
                requests.setdefault(name, {}).setdefault("drain", {})[chain] = count
        replies = exchange(requests)
        for name, request in requests.items():
            for chain, count in request["drain"].items():
                out[chain].append(_part(_reply(replies, name), "drain", chain, count, name))
                drained[chain] += count
    return {chain: _stack(parts) for chain, parts in out.items()}
