"""Private set intersection: correctness and what the messages carry."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest

from alphafed_flwr.psi import PsiParty, collaborator_step, run_psi


def simulate(sets: list[list[Any]]) -> tuple[list[str], dict[str, list[str]], list[bytes]]:
    """Run the protocol; collaborators restart from their saved state at every message."""
    host = PsiParty.create(sets[0], num_keys=2)
    names = [f"c{i}" for i in range(1, len(sets))]
    states = {n: PsiParty.create(s).to_state() for n, s in zip(names, sets[1:], strict=True)}
    results: dict[str, list[str]] = {}
    wire: list[bytes] = []

    def record(payload: dict[str, Any]) -> None:
        for value in payload.values():
            if isinstance(value, dict):
                record(value)
            elif isinstance(value, np.ndarray):
                wire.append(value.tobytes())
            elif value is not None:
                wire.append(repr(value).encode())

    def exchange(requests: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        replies = {}
        for name, request in requests.items():
            record(request)
            local = sets[names.index(name) + 1]
            party = PsiParty.from_state(local, states[name])
            if request.get("start"):
                party = PsiParty.create(local)
                party.keys = PsiParty.from_state(local, states[name]).keys
            reply, mine = collaborator_step(party, request)
            states[name] = party.to_state()
            if mine is not None:
                results[name] = mine
            record(reply)
            replies[name] = reply
        return replies

    mine, _ = run_psi(host, names, exchange)
    return mine, results, wire


CASES = {
    "overlap": [list(range(0, 60)), list(range(30, 90))],
    "disjoint": [list(range(0, 20)), list(range(20, 40))],
    "identical": [list(range(25)), list(range(25))],
    "three parties": [list(range(0, 60)), list(range(20, 80)), list(range(40, 100))],
    "four parties": [list(range(50)), list(range(10, 60)), list(range(0, 40)), list(range(5, 45))],
}


@pytest.mark.parametrize("sets", CASES.values(), ids=CASES.keys())
def test_every_party_learns_exactly_the_intersection(sets: list[list[int]]) -> None:
    mine, results, _ = simulate(sets)
    expected = sorted(set.intersection(*(set(map(str, s)) for s in sets)), key=int)
    assert sorted(mine, key=int) == expected
    assert all(sorted(r, key=int) == expected for r in results.values())


def test_ints_and_strings_are_the_same_samples() -> None:
    mine, results, _ = simulate([[1, 2, 3, 5], ["3", "5", "8"], [5, "3", 9]])
    assert sorted(mine) == ["3", "5"] and all(sorted(r) == ["3", "5"] for r in results.values())


def test_messages_carry_no_raw_ids_and_no_plain_hashes() -> None:
    ids = [f"patient-{i:05d}" for i in range(40)]
    sets = [ids[:30], ids[10:], ids[5:35]]
    _, _, wire = simulate(sets)
    blob = b"".join(wire)
    for sample_id in ids:
        assert sample_id.encode() not in blob
        assert hashlib.sha256(sample_id.encode()).digest() not in blob
        assert hashlib.sha256(sample_id.encode()).hexdigest().encode() not in blob


def test_keys_and_shuffles_are_fresh_for_every_party() -> None:
    a, b = PsiParty.create(range(10)), PsiParty.create(range(10))
    assert a.keys != b.keys
    assert not np.array_equal(a.start(), b.start())
