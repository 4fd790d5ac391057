"""The breast-cancer example (three parties, partly overlapping IDs) end to end on a slice."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakegrid import FakeGrid

from alphafed_flwr.adapters.templates import PickledTemplate
from alphafed_flwr.adapters.vertical_client import CollaboratorSettings, collaborator_client_app
from alphafed_flwr.adapters.vertical_host import VerticalHost, VerticalSettings, run_vertical_host
from alphafed_flwr.api.hetero_nn import HeteroNNCollaboratorScheduler, HeteroNNHostScheduler
from alphafed_flwr.loader import load_object
from alphafed_flwr.strategies.split_learning import SplitLearning

pytestmark = pytest.mark.timeout(600)

EXAMPLE = Path(__file__).resolve().parents[1] / "simulations" / "breast_cancer"
ROWS, ROUNDS = 160, 2


def test_three_parties_match_the_centralized_model(tmp_path: Path) -> None:
    host = load_object(str(EXAMPLE / "host.py"), HeteroNNHostScheduler).obj
    collaborators = [
        load_object(str(EXAMPLE / f"collaborator_{x}.py"), HeteroNNCollaboratorScheduler).obj for x in "ab"
    ]
    for party in (host, *collaborators):
        party.num_rows = ROWS
    # the loader put the example's folder on sys.path
    from breast_cancer_common import party_ids, split_ids  # pylint: disable=import-outside-toplevel
    from centralized import train_centralized  # pylint: disable=import-outside-toplevel

    sources = [PickledTemplate(c) for c in collaborators]
    app = collaborator_client_app(
        lambda ctx: sources[ctx.node_config["partition-id"]],
        lambda ctx: CollaboratorSettings(task_id="breast-cancer", out_dir=str(tmp_path)),
    )
    grid = FakeGrid({100 + i: app for i in range(2)}, {100 + i: {"partition-id": i} for i in range(2)})
    vertical = VerticalHost(host, VerticalSettings(out_dir=tmp_path, task_id="breast-cancer", rounds=ROUNDS,
                                                   num_collaborators=2))
    summary = run_vertical_host(grid, vertical, SplitLearning(2, schedule_timeout=5, calculation_timeout=30))

    assert summary["status"] == "completed" and summary["rounds_completed"] == ROUNDS
    holders = [set(party_ids(p, num_rows=ROWS)) for p in ("host", "collaborator-a", "collaborator-b")]
    common = set.intersection(*holders)
    assert all(len(common) < len(h) for h in holders)  # every party holds IDs another lacks
    assert vertical.scheduler.id_intersection == common
    train, test = split_ids(common)
    reference = train_centralized(train, test, ROUNDS)
    assert summary["final_test"]["auc"] == pytest.approx(reference["auc"], abs=1e-6)
    assert summary["final_test"]["loss"] == pytest.approx(reference["loss"], rel=1e-4)
    assert summary["final_test"]["auc"] > 0.9
