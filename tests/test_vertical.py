"""Split learning in-process: exact gradients with dropout, and misaligned batches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fakegrid import FakeGrid
from flwr.app import Error, Message
from flwr.common.constant import ErrorCode
from vertical_tasks import (
    LABELS,
    X_LEFT,
    X_RIGHT,
    Collaborator,
    Host,
    collaborator_model,
    host_model,
    infer_model,
    ordered,
    sgd,
)

from alphafed_flwr.adapters import templates
from alphafed_flwr.adapters.feature_replay import InputStore, batch_seed
from alphafed_flwr.adapters.templates import PickledTemplate
from alphafed_flwr.adapters.vertical_client import CollaboratorSettings, collaborator_client_app
from alphafed_flwr.adapters.vertical_host import VerticalHost, VerticalSettings, run_vertical_host
from alphafed_flwr.api import TaskFailed
from alphafed_flwr.strategies.split_learning import SplitLearning

TASK = "vertical-test"


def fresh_process() -> None:
    """What a new deployment process sees: no cached schedulers, no inputs in memory."""
    templates._instances.clear()
    InputStore._memory.clear()


def run(tmp_path: Path, host: Host, collaborators: list[Collaborator], rounds: int = 2, k: int = 1,
        fresh: bool = True) -> tuple[VerticalHost, dict, FakeGrid]:
    sources = [PickledTemplate(c) for c in collaborators]
    app = collaborator_client_app(
        lambda ctx: sources[ctx.node_config["partition-id"]],
        lambda ctx: CollaboratorSettings(task_id=TASK, out_dir=str(tmp_path)),
    )
    handlers = {100 + i: (lambda m, c: app(m, c)) for i in range(len(collaborators))}
    grid = FakeGrid(handlers, {100 + i: {"partition-id": i} for i in range(len(collaborators))})
    if fresh:
        grid.before_message = fresh_process
    vertical = VerticalHost(host, VerticalSettings(out_dir=tmp_path, task_id=TASK, rounds=rounds,
                                                   num_collaborators=len(collaborators), batches_per_exchange=k))
    strategy = SplitLearning(len(collaborators), schedule_timeout=2, calculation_timeout=5, batches_per_exchange=k)
    summary = run_vertical_host(grid, vertical, strategy)
    return vertical, summary, grid


def reference(rounds: int) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """The unsplit composite model trained locally on the same batches and dropout masks."""
    hm, cm, im = host_model(), collaborator_model(), infer_model()
    opts = [sgd(hm), sgd(cm), sgd(im)]
    for server_round in range(1, rounds + 1):
        for i, batch in enumerate(ordered(range(16), 4)):
            index = torch.tensor(batch)
            torch.manual_seed(batch_seed(TASK, "c1", server_round, i))
            collab = cm(X_RIGHT[index])
            torch.manual_seed(batch_seed(TASK, "host", server_round, i))
            own = hm(X_LEFT[index])
            for opt in opts:
                opt.zero_grad()
            F.cross_entropy(im(torch.cat([own, collab], 1)), LABELS[index]).backward()
            for opt in opts:
                opt.step()
    return hm, cm, im


def test_split_training_matches_the_unsplit_model_with_dropout(tmp_path: Path) -> None:
    vertical, summary, grid = run(tmp_path, Host(max_rounds=2, log_rounds=1), [Collaborator()])
    hm, cm, im = reference(rounds=2)
    for mine, ref in ((vertical.scheduler.feature_model, hm), (vertical.scheduler.infer_model, im)):
        for a, b in zip(mine.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    collab = torch.load(tmp_path / "collaborators" / "c1" / "feature_model.pt")
    for name, value in cm.state_dict().items():
        torch.testing.assert_close(collab[name], value, rtol=1e-5, atol=1e-6)
    assert summary["status"] == "completed" and summary["final_test"]["accuracy"] >= 0
    # one exchange per batch: 1 hello, 2 PSI, then per round 4 batches + the last gradients
    types = [m.metadata.message_type for m in grid.sent]
    assert types.count("train.exchange") == 2 * (4 + 1)


def test_k_batches_per_exchange_cut_the_messages(tmp_path: Path) -> None:
    _, summary, grid = run(tmp_path, Host(max_rounds=1), [Collaborator()], rounds=1, k=2)
    assert summary["status"] == "completed"
    assert [m.metadata.message_type for m in grid.sent].count("train.exchange") == 2 + 1


def test_two_collaborators_with_partial_overlap(tmp_path: Path) -> None:
    collaborators = [Collaborator("c1", ids=range(0, 20)), Collaborator("c2", ids=range(2, 24))]
    vertical, summary, _ = run(tmp_path, Host(max_rounds=1, collaborators=2), collaborators, rounds=1)
    assert sorted(int(i) for i in vertical.scheduler.id_intersection) == list(range(2, 20))
    assert summary["status"] == "completed"


@pytest.mark.parametrize(
    ("collaborator", "message"),
    [
        (Collaborator(drop_last_batch=True), "the host yields more than the 3 training batches"),
        (Collaborator(batch_size=5), "collaborator 'c1' sent 5 samples, the host's batch has 4"),
        (Collaborator(yield_ids=True, reverse=True), "training batch 1: collaborator 'c1' holds other samples"),
    ],
    ids=["one batch fewer", "other batch size", "other order"],
)
def test_misaligned_batches_stop_with_a_clear_error(tmp_path: Path, collaborator: Collaborator, message: str) -> None:
    with pytest.raises(TaskFailed, match=message):
        run(tmp_path, Host(yield_ids=True), [collaborator], rounds=1)
    assert '"status": "failed"' in (tmp_path / "summary.json").read_text()


def _cut_off(message: Message) -> Message:
    """What Flower's grid returns when a reply's objects never arrived (its sender died sending it)."""
    return Message(Error(code=ErrorCode.MESSAGE_UNAVAILABLE, reason="Reply message objects are unavailable."),
                   reply_to=message)


@pytest.mark.parametrize("silence", [lambda message: None, _cut_off], ids=["no reply", "reply cut off"])
def test_a_silent_collaborator_is_named_with_its_batch(tmp_path: Path, silence: Callable) -> None:
    sources = [PickledTemplate(Collaborator())]
    app = collaborator_client_app(lambda ctx: sources[0], lambda ctx: CollaboratorSettings(TASK, str(tmp_path)))
    calls = {"n": 0}

    def flaky(message, context):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if message.metadata.message_type == "train.exchange" and calls["n"] > 6:
            return silence(message)
        return app(message, context)

    grid = FakeGrid({100: flaky}, {100: {"partition-id": 0}})
    vertical = VerticalHost(Host(), VerticalSettings(out_dir=tmp_path, task_id=TASK, rounds=1))
    strategy = SplitLearning(1, schedule_timeout=2, calculation_timeout=0.2)
    with pytest.raises(TaskFailed, match=r"no answer from collaborator 'c1' .* within 0.2s during round 1, the gradients of batch 3 and the features of batch 4"):
        run_vertical_host(grid, vertical, strategy)
