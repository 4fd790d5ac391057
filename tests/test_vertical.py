"""Split learning in-process: exact gradients (dropout, BatchNorm, K>1, two collaborators,
frozen collaborators), misaligned batches, and hostile features and gradients."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fakegrid import FakeGrid, Handler
from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode
from vertical_tasks import (
    LABELS,
    N,
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

from alphafed_flwr.adapters import live_state, templates
from alphafed_flwr.adapters.feature_replay import InputStore, batch_seed, frozen_buffers, ids_digest
from alphafed_flwr.adapters.records import arrays_to_state
from alphafed_flwr.adapters.templates import PickledTemplate
from alphafed_flwr.adapters.vertical_client import MODEL, CollaboratorSettings, collaborator_client_app
from alphafed_flwr.adapters.vertical_common import ids_set_digest, split_digest
from alphafed_flwr.adapters.vertical_host import VerticalHost, VerticalSettings, run_vertical_host
from alphafed_flwr.api import TaskComplete, TaskFailed
from alphafed_flwr.api.errors import ConfigError, UserCodeError
from alphafed_flwr.strategies.payload import decode, encode
from alphafed_flwr.strategies.split_learning import SplitLearning

TASK = "vertical-test"


def fresh_process() -> None:
    """What a new deployment process sees: no cached schedulers, no inputs in memory."""
    templates._instances.clear()
    InputStore._memory.clear()
    live_state.forget_all()


def run(tmp_path: Path, host: Host, collaborators: list[Collaborator], rounds: int | None = 2, k: int = 1,
        fresh: bool = True, wrap: Callable[[Handler], Handler] | None = None,
        grids: list[FakeGrid] | None = None, live: bool = False,
        persists: bool = True) -> tuple[VerticalHost, dict, FakeGrid]:
    """Run a host and collaborators in-process; ``wrap`` wraps each node's handler, ``grids``
    receives the grid (to look at it after a failure), ``live``: collaborators keep their
    state live (``CollaboratorSettings.live_state``), ``persists``: their folder persists
    (``folder_persists``)."""
    sources = [PickledTemplate(c) for c in collaborators]
    app = collaborator_client_app(
        lambda ctx: sources[ctx.node_config["partition-id"]],
        lambda ctx: CollaboratorSettings(
            task_id=TASK, out_dir=str(tmp_path), live_state=live, folder_persists=persists
        ),
    )
    wrap = wrap or (lambda handler: handler)
    handlers = {100 + i: wrap(lambda m, c: app(m, c)) for i in range(len(collaborators))}
    grid = FakeGrid(handlers, {100 + i: {"partition-id": i} for i in range(len(collaborators))})
    if fresh:
        grid.before_message = fresh_process
    if grids is not None:
        grids.append(grid)
    vertical = VerticalHost(host, VerticalSettings(out_dir=tmp_path, task_id=TASK, rounds=rounds,
                                                   num_collaborators=len(collaborators), batches_per_exchange=k))
    strategy = SplitLearning(len(collaborators), schedule_timeout=2, calculation_timeout=5, batches_per_exchange=k)
    summary = run_vertical_host(grid, vertical, strategy)
    return vertical, summary, grid


# pylint: disable-next=too-many-locals
def reference(rounds: int, k: int = 1, keys: tuple[str, ...] = ("c1",), batch_norm: bool = False,
              trainable: bool = True) -> tuple[torch.nn.Module, dict[str, torch.nn.Module], torch.nn.Module]:
    """The unsplit composite model trained locally on the same batches and dropout masks.

    Per block of K batches, every collaborator's features come from its parameters at the
    block's start (no gradient, BatchNorm statistics untouched); the host trains on each
    batch; then each collaborator applies the K gradients as K steps, recomputing its
    forward pass (same dropout mask) for each: what split learning must reproduce.
    """
    hm, im = host_model(batch_norm), infer_model(3 + 3 * len(keys))
    cms = {key: collaborator_model(batch_norm, 12 + n) for n, key in enumerate(keys)}
    opts, copts = [sgd(hm), sgd(im)], {key: sgd(cm) for key, cm in cms.items()}
    batches = [torch.tensor(b) for b in ordered(range(16), 4)]
    for server_round in range(1, rounds + 1):
        for first in range(0, len(batches), k):
            block = range(first, min(first + k, len(batches)))
            feats: dict[tuple[str, int], torch.Tensor] = {}
            for key, cm in cms.items():
                for i in block:
                    torch.manual_seed(batch_seed(TASK, key, server_round, i))
                    with torch.no_grad(), frozen_buffers(cm):
                        feats[key, i] = cm(X_RIGHT[batches[i]]).requires_grad_(True)
            for i in block:
                torch.manual_seed(batch_seed(TASK, "host", server_round, i))
                own = hm(X_LEFT[batches[i]])
                for opt in opts:
                    opt.zero_grad()
                fused = torch.cat([own] + [feats[key, i] for key in sorted(keys)], 1)
                F.cross_entropy(im(fused), LABELS[batches[i]]).backward()
                for opt in opts:
                    opt.step()
            for key, cm in cms.items():
                for i in block if trainable else []:
                    copts[key].zero_grad()
                    torch.manual_seed(batch_seed(TASK, key, server_round, i))
                    cm(X_RIGHT[batches[i]]).backward(feats[key, i].grad)
                    copts[key].step()
    return hm, cms, im


def reference_accuracy(hm: torch.nn.Module, cms: dict[str, torch.nn.Module], im: torch.nn.Module) -> float:
    """The test accuracy of the reference models (eval mode) on the host's test batches."""
    correct = 0
    for model in (hm, im, *cms.values()):
        model.eval()
    with torch.no_grad():
        for batch in ordered(range(16, N), 4):
            index = torch.tensor(batch)
            fused = torch.cat([hm(X_LEFT[index])] + [cms[k](X_RIGHT[index]) for k in sorted(cms)], 1)
            correct += int((im(fused).argmax(1) == LABELS[index]).sum())
    return correct / (N - 16)


def assert_same_state(mine: dict, ref: dict) -> None:
    assert list(mine) == list(ref)
    for name, value in ref.items():
        torch.testing.assert_close(mine[name], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("k", "keys", "batch_norm", "trainable"),
    [
        (1, ("c1",), False, True),
        (1, ("c1",), True, True),
        (3, ("c1",), True, True),
        (2, ("c1", "c2"), False, True),
        (1, ("c1",), False, False),
    ],
    ids=["dropout", "BatchNorm", "K=3 with a short last block", "two collaborators K=2", "frozen collaborator"],
)
def test_split_training_matches_the_unsplit_model(
    tmp_path: Path, k: int, keys: tuple[str, ...], batch_norm: bool, trainable: bool
) -> None:
    collaborators = [
        Collaborator(key, batch_norm=batch_norm, seed=12 + n, is_feature_trainable=trainable)
        for n, key in enumerate(keys)
    ]
    host = Host(max_rounds=2, log_rounds=1, collaborators=len(keys), batch_norm=batch_norm)
    vertical, summary, grid = run(tmp_path, host, collaborators, k=k)
    hm, cms, im = reference(rounds=2, k=k, keys=keys, batch_norm=batch_norm, trainable=trainable)
    assert_same_state(vertical.scheduler.feature_model.state_dict(), hm.state_dict())
    assert_same_state(vertical.scheduler.infer_model.state_dict(), im.state_dict())
    for key, cm in cms.items():
        assert_same_state(torch.load(tmp_path / "collaborators" / key / "feature_model.pt"), cm.state_dict())
        if not trainable:
            assert_same_state(cm.state_dict(), collaborator_model(batch_norm, 12).state_dict())
    assert summary["status"] == "completed"
    assert summary["final_test"]["accuracy"] == pytest.approx(reference_accuracy(hm, cms, im))
    # per round: one exchange per K batches, then one more for the last gradients
    types = [m.metadata.message_type for m in grid.sent]
    assert types.count("train.exchange") == len(keys) * 2 * (-(-4 // k) + 1)


@pytest.mark.parametrize(("k", "batch_norm"), [(1, False), (1, True), (3, True)],
                         ids=["dropout", "BatchNorm", "K=3 with a short last block"])
def test_live_state_and_kept_graphs_give_the_replayed_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, k: int, batch_norm: bool
) -> None:
    """Kept graphs (one process) and their fallback (every message in a new process: the
    snapshot, then a replayed forward pass) train exactly the weights of the replay path."""
    used = {"kept": 0, "loaded": 0}
    backward, load = live_state.backward_kept, live_state.LiveState.load

    def counted_backward(*args):
        used["kept"] += 1
        return backward(*args)

    def counted_load(self, *args):
        used["loaded"] += 1
        return load(self, *args)

    monkeypatch.setattr("alphafed_flwr.adapters.vertical_client.backward_kept", counted_backward)
    monkeypatch.setattr(live_state.LiveState, "load", counted_load)
    states = {}
    for name, live, fresh in (("replay", False, True), ("kept", True, False), ("fallback", True, True)):
        fresh_process()
        used.update(kept=0, loaded=0)
        host = Host(max_rounds=2, log_rounds=1, batch_norm=batch_norm)
        vertical, summary, _ = run(tmp_path / name, host, [Collaborator(batch_norm=batch_norm)], k=k,
                                   fresh=fresh, live=live)
        assert summary["status"] == "completed"
        states[name] = {
            **{f"host/{n}": v for n, v in vertical.scheduler.feature_model.state_dict().items()},
            **{f"infer/{n}": v for n, v in vertical.scheduler.infer_model.state_dict().items()},
            **torch.load(tmp_path / name / "collaborators" / "c1" / "feature_model.pt"),
        }
        # 4 batches a round, 2 rounds: with K=1 every gradient meets its kept graph; with K=3
        # only the short last block's single batch does; a new process for every message never
        kept = {1: 8, 3: 2}[k] if name == "kept" else 0
        assert used == {"kept": kept, "loaded": (2 * (-(-4 // k) + 1) - 1 if name == "fallback" else 0)}
    for name in ("kept", "fallback"):
        assert list(states[name]) == list(states["replay"])
        for key, value in states["replay"].items():
            assert torch.equal(states[name][key], value), (name, key)


def test_live_state_keeps_the_model_out_of_the_context(tmp_path: Path) -> None:
    """Only a token travels in context.state; a lost snapshot is an error that names it."""
    contexts: list[Context] = []

    def spy(handler: Handler) -> Handler:
        def wrapped(message: Message, context: Context) -> Message:
            contexts.append(context)
            return handler(message, context)
        return wrapped

    run(tmp_path, Host(max_rounds=1), [Collaborator()], rounds=1, fresh=False, live=True, wrap=spy)
    state = contexts[-1].state
    assert MODEL not in state.array_records and not any(k.startswith("feature.optimizer") for k in state)
    assert "intersection" not in state.config_records["vertical"]
    token = str(state.config_records["vertical"][live_state.LIVE_TOKEN])
    snapshot = tmp_path / "collaborators" / "c1" / "live" / live_state.SNAPSHOT
    assert snapshot.exists()
    snapshot.unlink()
    model = collaborator_model()
    with pytest.raises(ConfigError, match=token):
        live_state.LiveState("x", snapshot.parent).load(token, model, sgd(model))


@pytest.mark.parametrize("persists", [True, False])
def test_the_intersection_travels_in_the_state_only_where_the_folder_may_not_persist(
    tmp_path: Path, persists: bool
) -> None:
    """A deployed node keeps the intersection in psi.json and only its SHA-256 in
    context.state (every later message carries the state); a Ray cluster's nodes keep it there."""
    _, summary, grid = run(tmp_path, Host(max_rounds=1), [Collaborator()], rounds=1, persists=persists)
    assert summary["status"] == "completed"
    config = grid.contexts[100].state.config_records["vertical"]
    saved = tmp_path / "collaborators" / "c1" / "psi.json"
    if persists:
        assert "intersection" not in config
        assert config["intersection-sha256"] == hashlib.sha256(saved.read_bytes()).hexdigest()
    else:
        assert list(config["intersection"]) == json.loads(saved.read_text())["intersection"]
        assert "intersection-sha256" not in config


def test_a_changed_intersection_file_stops_the_collaborator(tmp_path: Path) -> None:
    """psi.json rewritten between messages (e.g. by another task in the same out-dir) is an
    error naming the file, not a silent change of the training set."""
    saved = tmp_path / "collaborators" / "c1" / "psi.json"

    def tamper(handler: Handler) -> Handler:
        def wrapped(message: Message, context: Context) -> Message:
            if message.metadata.message_type == "train.exchange" and saved.exists():
                ids = json.loads(saved.read_text())["intersection"]
                saved.write_text(json.dumps({"intersection": ids[1:]}))
            return handler(message, context)
        return wrapped

    with pytest.raises(TaskFailed, match=r"psi.json changed since this task's private set intersection"):
        run(tmp_path, Host(max_rounds=1), [Collaborator()], rounds=1, wrap=tamper)


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
        (Collaborator(drop_last_batch=True, yield_ids=True), "the host yields more than the 3 training batches"),
        (Collaborator(batch_size=5, yield_ids=True), "collaborator 'c1' sent 5 samples, the host's batch has 4"),
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
        if message.metadata.message_type == "train.exchange":
            calls["n"] += 1
            if calls["n"] > 3:  # the exchange with batch 3's gradients
                return silence(message)
        return app(message, context)

    grid = FakeGrid({100: flaky}, {100: {"partition-id": 0}})
    vertical = VerticalHost(Host(), VerticalSettings(out_dir=tmp_path, task_id=TASK, rounds=1))
    strategy = SplitLearning(1, schedule_timeout=2, calculation_timeout=0.2)
    with pytest.raises(TaskFailed, match=r"no answer from collaborator 'c1' .* within 0.2s during round 1, the gradients of batch 3 and the features of batch 4"):
        run_vertical_host(grid, vertical, strategy)


# ----- hostile features and gradients (issue 10 §4) -------------------------------------------
def _first_nan(f: np.ndarray) -> np.ndarray:
    f = f.copy()
    f.flat[0] = np.nan
    return f


POISONS = {
    "NaN": (_first_nan, r"1 value\(s\) are NaN or infinite"),
    "inf": (lambda f: np.full_like(f, -np.inf), r"12 value\(s\) are NaN or infinite"),
    "1e30": (lambda f: np.full_like(f, 1e30), r"absolute values up to 1e\+30 exceed the bound 1e\+06"),
    "wider": (lambda f: np.concatenate([f, f[:, :1]], 1), r"shape \(4, 4\) does not match \(batch, 3\)"),
    "extra dimension": (lambda f: f[..., None], r"shape \(4, 3, 1\) does not match \(batch, 3\)"),
    "float64": (lambda f: f.astype(np.float64), r"dtype float64 differs from float32"),
    "int64": (lambda f: f.astype(np.int64), r"dtype int64 is not floating point"),
}


def tamper(exchange_no: int, reply: Callable | None = None, request: Callable | None = None) -> Callable:
    """A hostile collaborator (``reply``) or host (``request``): rewrite the payload of the
    ``exchange_no``-th ``train.exchange`` (counted from 1) on its way."""

    def wrap(handler: Handler) -> Handler:
        count = {"n": 0}

        def hostile(message: Message, context: Context) -> Message | None:
            hit = message.metadata.message_type == "train.exchange" and (count.__setitem__("n", count["n"] + 1) or count["n"] == exchange_no)
            if hit and request is not None:
                message.content = encode(request(decode(message.content)))
            answer = handler(message, context)
            if hit and reply is not None and answer is not None and not answer.has_error():
                answer.content = encode(reply(decode(answer.content)))
            return answer

        return hostile

    return wrap


def _features(poison: Callable) -> Callable:
    return lambda payload: {**payload, "features": [poison(f) for f in payload["features"]]}


@pytest.mark.parametrize("poison", list(POISONS))
def test_poisoned_features_stop_the_run_before_they_reach_the_host(tmp_path: Path, poison: str) -> None:
    change, message = POISONS[poison]
    # round 2 = exchanges 6..10; exchange 7 carries the features of its training batch 2
    # the codec's checks name the exchange's batches, the strategy's ledger the batch itself
    with pytest.raises(TaskFailed, match=rf"features of (training )?batch 2.* from collaborator 'c1' rejected: {message}"):
        run(tmp_path, Host(max_rounds=2), [Collaborator()], wrap=tamper(7, reply=_features(change)))
    assert '"status": "failed"' in (tmp_path / "summary.json").read_text()
    vertical = VerticalHost(Host(), VerticalSettings(out_dir=tmp_path, task_id=TASK))
    assert vertical.checkpoints.rounds() == [1]  # the last good round
    arrays, _ = vertical.checkpoints.load(1)
    assert all(np.isfinite(a).all() for a in arrays.values() if np.issubdtype(a.dtype, np.floating))
    assert sorted(p.name for p in (tmp_path / "collaborators" / "c1" / "checkpoint").iterdir()) == ["round-1"]


def test_the_first_batch_of_a_wrong_width_names_the_batch_and_every_shape(tmp_path: Path) -> None:
    wider = POISONS["wider"][0]
    with pytest.raises(UserCodeError, match=r"train_a_batch \(training batch 1; features 'host' \(4, 3\) float32, 'c1' \(4, 4\) float32\) raised RuntimeError"):
        run(tmp_path, Host(), [Collaborator()], rounds=1, wrap=tamper(1, reply=_features(wider)))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (POISONS["NaN"][0], r"1 value\(s\) are NaN or infinite"),
        (POISONS["1e30"][0], r"absolute values up to 1e\+30 exceed the bound 1e\+06"),
        (POISONS["wider"][0], r"shape \(4, 4\) does not match \(batch, 3\)"),
        (POISONS["int64"][0], r"dtype int64 is not floating point"),
        (lambda g: g[:2], r"2 rows for 4 samples"),
    ],
    ids=["NaN", "1e30", "wider", "int64", "fewer rows"],
)
def test_a_collaborator_rejects_bad_gradients_before_any_step(tmp_path: Path, change: Callable, message: str) -> None:
    def hostile_host(payload: dict) -> dict:
        return {**payload, "grads": [change(g) for g in payload["grads"]]}

    grids: list[FakeGrid] = []
    with pytest.raises(TaskFailed, match=rf"collaborator 'c1' failed during round 1, the gradients of batches 1..2 .*training batch(es \[1, 2\])? .*from the host rejected: {message}"):
        run(tmp_path, Host(), [Collaborator()], rounds=1, k=2, wrap=tamper(2, request=hostile_host), grids=grids)
    # the exchange failed as a whole: not even batch 2's gradient was applied
    state = grids[0].contexts[100].state
    assert_same_state(arrays_to_state(state.array_records[MODEL]), collaborator_model().state_dict())


class NaNGradientHost(Host):
    """A host whose loss turns the collaborator's gradient into NaN."""

    def train_a_batch(self, feature_projection, labels) -> None:  # noqa: ANN001
        projection = dict(feature_projection)
        projection["c1"] = projection["c1"] * float("nan")
        super().train_a_batch(projection, labels)


def test_the_host_does_not_send_non_finite_gradients(tmp_path: Path) -> None:
    with pytest.raises(TaskFailed, match=r"the gradient for collaborator 'c1' of training batch 1 from the host rejected: 12 value\(s\) are NaN"):
        run(tmp_path, NaNGradientHost(), [Collaborator()], rounds=1)


# ----- digests and the batch-order check (issue 10 §7) ----------------------------------------
def test_split_digests_are_ordered_and_length_prefixed() -> None:
    salt = b"s" * 16
    assert split_digest(salt, ["1", "2"], ["3"]) != split_digest(salt, ["3"], ["1", "2"])
    assert split_digest(salt, ["a\x1fb"], []) != split_digest(salt, ["a", "b"], [])
    assert split_digest(salt, {"2", "1"}, {3}) == split_digest(salt, [1, 2], ["3"])  # sets, strings
    assert ids_set_digest(salt, ["a\x1fb"]) != ids_set_digest(salt, ["a", "b"])
    assert ids_digest(salt, ["a\x1fb"]) != ids_digest(salt, ["a", "b"])
    assert ids_digest(salt, ["1", "2"]) != ids_digest(salt, ["2", "1"])


@pytest.mark.parametrize(
    ("host_ids", "collaborator_ids", "message"),
    [
        (True, False, "training batch 1: the host yields sample IDs with its batches and collaborator 'c1' does not"),
        (False, True, "training batch 1: collaborator 'c1' yields sample IDs with its batches and the host does not"),
    ],
    ids=["only the host", "only the collaborator"],
)
def test_parties_agree_on_whether_ids_are_checked(
    tmp_path: Path, host_ids: bool, collaborator_ids: bool, message: str
) -> None:
    with pytest.raises(TaskFailed, match=message):
        run(tmp_path, Host(yield_ids=host_ids), [Collaborator(yield_ids=collaborator_ids)], rounds=1)


def test_a_collaborator_that_drops_its_digests_is_caught(tmp_path: Path) -> None:
    def no_digests(payload: dict) -> dict:
        return {**payload, "digests": [""] * len(payload["digests"])}

    with pytest.raises(TaskFailed, match="training batch 2: the host yields sample IDs .* collaborator 'c1' does not"):
        run(tmp_path, Host(yield_ids=True), [Collaborator(yield_ids=True)], rounds=1, wrap=tamper(2, reply=no_digests))


class StopsEarly(Host):
    def is_task_finished(self) -> bool:
        if self.current_round >= 2:
            raise TaskComplete("enough")
        return False


def test_task_complete_ends_a_vertical_run_early(tmp_path: Path) -> None:
    vertical, summary, grid = run(tmp_path, StopsEarly(max_rounds=5, log_rounds=4), [Collaborator()], rounds=None)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert summary["rounds"][-1]["test"]  # the last round run is tested
    assert vertical.checkpoints.rounds() == [1, 2]
    assert [m.metadata.message_type for m in grid.sent].count("train.exchange") == 2 * (4 + 1) + 1
