"""Secure HeteroNN (CKKS projection layer): the crypto layer, agreement with the plain
protocol, and what the host receives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts
import torch
import torch.nn.functional as F
from fakegrid import FakeGrid
from flwr.app import Message
from secure_tasks import COLLAB_OUT, CONFIG, HOST_OUT, LR, SecureCollaborator, SecureHost
from torch import nn
from vertical_tasks import LABELS, X_LEFT, Collaborator, host_model, infer_model, ordered, sgd

from alphafed.hetero_nn import HeteroNNHostScheduler, SecureHeteroNNHostScheduler
from alphafed_flwr.adapters import templates
from alphafed_flwr.adapters.feature_replay import InputStore
from alphafed_flwr.adapters.records import arrays_to_state
from alphafed_flwr.adapters.secure_client import PENDING, SHARE, add_secure_handler
from alphafed_flwr.adapters.secure_host import SecureVerticalHost
from alphafed_flwr.adapters.templates import PickledTemplate
from alphafed_flwr.adapters.vertical_client import MODEL, CollaboratorSettings, collaborator_client_app
from alphafed_flwr.adapters.vertical_host import VerticalHost, VerticalSettings, run_vertical_host
from alphafed_flwr.api import TaskFailed
from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.secure_layer import (
    TEST_PARAMS,
    CkksParams,
    CollaboratorKeys,
    FeaturePlan,
    SecureLayerError,
    collaborator_backward,
    collaborator_forward,
    encrypt_features,
    encrypt_share,
    host_backward,
    host_forward,
    load_vector,
    public_context,
    unmask_projection,
)
from alphafed_flwr.strategies.payload import decode
from alphafed_flwr.strategies.secure_split import SecureSplitLearning
from alphafed_flwr.strategies.split_learning import SplitLearning

TASK = "secure-test"
#: Error of one decrypted projection value with TEST_PARAMS: CKKS noise of a fresh
#: ciphertext times one plaintext product at scale 2^40 is below 2^-20 (about 1e-6);
#: removing 2^10 masks from doubles adds n * 2^10 * 2^-52, negligible.
CKKS_ERROR = 2.0**-20


# ----- the crypto layer ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys() -> CollaboratorKeys:
    return CollaboratorKeys.create(TEST_PARAMS)


@pytest.mark.parametrize(("batch", "n", "m"), [(128, 20, 20), (7, 5, 3), (33, 3, 9)])
def test_layer_computes_projection_and_gradients(keys: CollaboratorKeys, batch: int, n: int, m: int) -> None:
    rng = np.random.default_rng(batch)
    alpha, w_h, share = rng.normal(size=(batch, n)), rng.uniform(-1, 1, (n, m)), rng.uniform(-1, 1, (n, m))
    delta = rng.normal(size=(batch, m)) / batch
    context = public_context(keys.public_bytes())
    plan = FeaturePlan.make(batch, n, m, TEST_PARAMS.slots)
    forward, state = host_forward(context, TEST_PARAMS, encrypt_features(keys, alpha, plan), w_h, plan)
    part = collaborator_forward(keys, forward, alpha, share, plan)
    assert np.abs(part - alpha @ (w_h + share)).min() > 1e-3  # masked: the host's share is hidden
    state.share_ct = load_vector(context, encrypt_share(keys, share), "share", TEST_PARAMS.slots)
    z = unmask_projection(part, state, TEST_PARAMS, "z")
    np.testing.assert_allclose(z, alpha @ (w_h + share), atol=n * CKKS_ERROR * 8)
    wgrad, fgrad, eps_g = host_backward(context, TEST_PARAMS, state, delta, w_h)
    grad_w, grad_x = collaborator_backward(keys, wgrad, fgrad, plan)
    assert np.abs(grad_w - alpha.T @ delta).max() > 1e-3  # the collaborator sees it masked ...
    np.testing.assert_allclose(grad_w - eps_g, alpha.T @ delta, atol=batch * CKKS_ERROR)  # ... by eps_g
    np.testing.assert_allclose(grad_x, delta @ (w_h + share).T, atol=m * CKKS_ERROR * 8)


def test_plan_packs_rows_and_avoids_waste() -> None:
    plan = FeaturePlan.make(128, 20, 20, 4096)
    assert (plan.rows, plan.copies, plan.cts, plan.groups) == (64, 3, 2, 7)
    assert plan.used <= 4096
    assert FeaturePlan.make(1, 20, 20, 4096).cts == 1


def test_keys_stay_with_the_collaborator(keys: CollaboratorKeys) -> None:
    assert not ts.context_from(keys.public_bytes()).has_secret_key()
    assert "secret key withheld" in repr(keys)
    with pytest.raises(SecureLayerError, match="secret key"):
        public_context(keys.private_bytes())


def test_hostile_ciphertexts_and_parameters_are_refused(keys: CollaboratorKeys) -> None:
    context = public_context(keys.public_bytes())
    with pytest.raises(SecureLayerError, match="not a ciphertext"):
        load_vector(context, b"\x00" * 64, "junk", TEST_PARAMS.slots)
    other = CollaboratorKeys.create(CkksParams(8192, (60, 40, 60), 40, mask_bits=10))
    huge = other.encrypt(np.full(10, 2.0**40))  # decrypts beyond anything the protocol sends
    with pytest.raises(Exception, match="exceed the bound"):
        other.decrypt(huge, "forward ciphertext")
    with pytest.raises(ConfigError, match="128-bit"):
        CkksParams(4096, (60, 40, 60), 40)
    with pytest.raises(ConfigError, match="headroom"):
        CkksParams(8192, (60, 40, 60), 40, mask_bits=24)


# ----- end to end, in process ---------------------------------------------------------------
def fresh_process() -> None:
    """What a new deployment process sees: no cached schedulers, no inputs in memory."""
    templates._instances.clear()  # pylint: disable=protected-access
    InputStore._memory.clear()  # pylint: disable=protected-access


class Recorder:
    """Wraps the collaborator's handler: every reply the host receives, every feature batch
    and share the collaborator held."""

    def __init__(self, handler) -> None:  # noqa: ANN001
        self.handler = handler
        self.replies: list[dict] = []
        self.alphas: list[np.ndarray] = []
        self.shares: list[np.ndarray] = []
        self.private: bytes = b""

    def __call__(self, message: Message, context) -> Message:  # noqa: ANN001
        reply = self.handler(message, context)
        self.replies.append(decode(reply.content))
        state = context.state
        if PENDING in state.array_records:
            self.alphas += [a.numpy() for a in state.array_records[PENDING].values()]
        if SHARE in state.array_records:
            self.shares.append(state.array_records[SHARE]["E"].numpy())
            self.private = bytes(state.config_records["secure.keys"]["private"])
        return reply


def run_secure(tmp_path: Path, rounds: int = 2, k: int = 1, collaborator: SecureCollaborator | None = None,  # noqa: ANN201
               host_sched: SecureHost | None = None, others: tuple[SecureCollaborator, ...] = ()):
    sources = [PickledTemplate(c) for c in (collaborator or SecureCollaborator(), *others)]
    settings = lambda _: CollaboratorSettings(task_id=TASK, out_dir=str(tmp_path))  # noqa: E731
    source = lambda ctx: sources[ctx.node_config["partition-id"]]  # noqa: E731
    app = add_secure_handler(collaborator_client_app(source, settings), source, settings)
    recorder = Recorder(lambda m, c: app(m, c))
    nodes = {100 + i: recorder if i == 0 else (lambda m, c: app(m, c)) for i in range(len(sources))}
    grid = FakeGrid(nodes, {100 + i: {"partition-id": i} for i in range(len(sources))})
    grid.before_message = fresh_process  # every message in a new process, as in deployment
    sched = host_sched or SecureHost()
    w_h0 = sched.project_layer["c1"].weight.detach().clone()
    own0 = sched.project_layer["host"].weight.detach().clone()
    host = SecureVerticalHost(sched, VerticalSettings(out_dir=tmp_path, task_id=TASK, rounds=rounds,
                                                      num_collaborators=len(sources), batches_per_exchange=k))
    summary = run_vertical_host(grid, host, SecureSplitLearning(len(sources), schedule_timeout=2,
                                                                 calculation_timeout=30, batches_per_exchange=k))
    return host, summary, grid, recorder, (w_h0, own0)


class PlainProjectedHost(HeteroNNHostScheduler):
    """The same task on the plain protocol, with the projections in the host's user code."""

    def __init__(self, own: torch.Tensor, shared: torch.Tensor) -> None:
        super().__init__(feature_key="host")
        self.own, self.shared = nn.Linear(3, HOST_OUT, bias=False), nn.Linear(3, COLLAB_OUT, bias=False)
        with torch.no_grad():
            self.own.weight.copy_(own)
            self.shared.weight.copy_(shared)
        self.proj_opt = torch.optim.SGD([*self.own.parameters(), *self.shared.parameters()], lr=LR)

    load_local_ids = SecureHost.load_local_ids
    split_dataset = SecureHost.split_dataset
    iterate_train_feature = SecureHost.iterate_train_feature
    iterate_test_feature = SecureHost.iterate_test_feature
    _batches = SecureHost._batches
    batch_size = 4

    def build_feature_model(self) -> nn.Module:
        return host_model()

    def build_feature_optimizer(self, feature_model: nn.Module) -> torch.optim.Optimizer:
        return sgd(feature_model)

    def build_infer_model(self) -> nn.Module:
        return infer_model(HOST_OUT + COLLAB_OUT)

    def build_infer_optimizer(self, infer_model: nn.Module) -> torch.optim.Optimizer:
        return sgd(infer_model)

    def train_a_batch(self, feature_projection, labels) -> None:  # noqa: ANN001
        fused = torch.cat((self.own(feature_projection["host"]), self.shared(feature_projection["c1"])), 1)
        self.optimizer.zero_grad()
        self.proj_opt.zero_grad()
        F.cross_entropy(self.infer_model(fused), labels).backward()
        self.optimizer.step()
        self.proj_opt.step()

    def test(self, batched_feature_projections, batched_labels):  # noqa: ANN001, ANN201
        return {}


def run_plain(tmp_path: Path, own: torch.Tensor, shared: torch.Tensor, rounds: int = 2, k: int = 1):  # noqa: ANN201
    source = PickledTemplate(Collaborator(yield_ids=True))
    app = collaborator_client_app(lambda _: source, lambda _: CollaboratorSettings(task_id=TASK, out_dir=str(tmp_path)))
    grid = FakeGrid({100: lambda m, c: app(m, c)}, {100: {"partition-id": 0}})
    sched = PlainProjectedHost(own, shared)
    host = VerticalHost(sched, VerticalSettings(out_dir=tmp_path, task_id=TASK, rounds=rounds, num_collaborators=1,
                                                batches_per_exchange=k))
    run_vertical_host(grid, host, SplitLearning(1, schedule_timeout=2, calculation_timeout=30, batches_per_exchange=k))
    return sched, grid


@pytest.mark.parametrize("k", [1, 2])
def test_secure_training_agrees_with_the_plain_protocol(tmp_path: Path, k: int) -> None:
    """Same task, batches, dropout masks and initial projection W = W_h + E: after 2 rounds
    (8 SGD steps) every model matches within 16 x the per-value CKKS error: each step adds
    at most one CKKS error per projection value, and 8 steps of lr <= 0.1 on this small
    model do not amplify it beyond 2x (measured: 6e-8, float32 rounding dominates)."""
    host, summary, grid, recorder, (w_h0, own0) = run_secure(tmp_path / "secure", k=k)
    assert summary["status"] == "completed"
    plain, plain_grid = run_plain(tmp_path / "plain", own0, w_h0 + torch.from_numpy(recorder.shares[0].T).float(), k=k)
    tol = 16 * CKKS_ERROR
    sched = host.sched
    secure_w = sched.project_layer["c1"].weight.detach().double() + torch.from_numpy(recorder.shares[-1].T)
    pairs = {
        "collaborator projection W = W_h + E": (secure_w, plain.shared.weight.detach().double()),
        "host projection": (sched.project_layer["host"].weight, plain.own.weight),
        **{f"infer {k}": (v, plain.infer_model.state_dict()[k]) for k, v in sched.infer_model.state_dict().items()},
        **{f"host feature {k}": (v, plain.feature_model.state_dict()[k]) for k, v in sched.feature_model.state_dict().items()},
    }
    secure_c = arrays_to_state(grid.contexts[100].state.array_records[MODEL])
    plain_c = arrays_to_state(plain_grid.contexts[100].state.array_records[MODEL])
    pairs.update({f"collaborator feature {k}": (secure_c[k], plain_c[k]) for k in plain_c})
    for name, (ours, theirs) in pairs.items():
        np.testing.assert_allclose(ours.detach().double().numpy(), theirs.detach().double().numpy(), atol=tol, err_msg=name)
    moved = (secure_w - (w_h0.double() + torch.from_numpy(recorder.shares[0].T))).abs().max().item()
    assert moved > 100 * tol  # the comparison is not trivially passed by weights that never moved
    # neither party holds W: both shares differ from it by far more than the tolerance
    assert (sched.project_layer["c1"].weight.double() - secure_w).abs().max().item() > 0.05
    assert np.abs(recorder.shares[-1].T - secure_w.numpy()).max() > 0.05


def test_the_host_receives_no_plaintext_features_or_weights(tmp_path: Path) -> None:
    host, _, _, recorder, _ = run_secure(tmp_path, rounds=1)
    assert recorder.alphas and recorder.shares and recorder.private
    secrets = [a.astype(dt).tobytes() for a in recorder.alphas for dt in (np.float32, np.float64)]
    secrets += [e.astype(dt).tobytes() for e in recorder.shares for dt in (np.float32, np.float64)]
    largest = max(np.abs(a).max() for a in recorder.alphas)
    for reply in recorder.replies:
        arrays = {k: v for k, v in reply.items() if isinstance(v, np.ndarray) and v.dtype.kind == "f"}
        assert set(arrays) <= {"z", "test-z"}, set(arrays)  # only masked projection parts (and PSI points)
        for value in arrays.values():
            assert value.shape[1] == COLLAB_OUT and value.dtype == np.float64
            assert np.abs(value).mean() > 100 * largest  # masked by the host's eps_b (2^10)
        blobs = [b for v in reply.values() for b in (v if isinstance(v, list) else [v]) if isinstance(b, bytes)]
        for blob in blobs:
            assert recorder.private[-4096:] not in blob  # no part of the secret-key context
            assert not any(secret in blob for secret in secrets)  # no raw features or shares
        if "context" in reply:
            assert not ts.context_from(reply["context"]).has_secret_key()
    assert isinstance(host.contexts["c1"], ts.Context) and not host.contexts["c1"].has_secret_key()


@pytest.mark.parametrize(("k", "feature_requests"), [(1, 4), (2, 2), (4, 1)])
def test_k_batches_per_exchange_batches_only_the_feature_requests(tmp_path: Path, k: int, feature_requests: int) -> None:
    _, summary, _, _, _ = run_secure(tmp_path, rounds=1, k=k)
    stats = summary["rounds"][-1]["stats"]
    # 4 batches: feature requests, 4 projections, the last gradients, 2 test batches
    assert stats["exchanges"] == feature_requests + 4 + 1 + 2
    assert stats["bytes-to-host"] > 100_000 and stats["bytes-to-collaborators"] > 100_000


def test_two_collaborators_each_with_their_own_keys(tmp_path: Path) -> None:
    config = [*CONFIG, ("c2", 3, 3)]
    host, summary, grid, _, _ = run_secure(tmp_path, rounds=1, host_sched=SecureHost(config=config),
                                           others=(SecureCollaborator(feature_key="c2"),))
    assert summary["status"] == "completed"
    assert sorted(host.contexts) == ["c1", "c2"]
    keys = [bytes(grid.contexts[n].state.config_records["secure.keys"]["private"]) for n in (100, 101)]
    assert keys[0] != keys[1]  # each collaborator holds its own secret key
    assert grid.contexts[101].state.array_records[SHARE]["E"].numpy().shape == (3, 3)  # in 3, out 3


def test_a_collaborator_missing_from_the_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'c2' has no entry in project_layer_config"):
        run_secure(tmp_path, rounds=1, others=(SecureCollaborator(feature_key="c2"),))


def test_mismatched_learning_rates_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TaskFailed, match="project_layer_lr differs"):
        run_secure(tmp_path, rounds=1, collaborator=SecureCollaborator(lr=LR * 2))


class ConfiguredHost(SecureHost):
    def __init__(self, config, lr) -> None:  # noqa: ANN001
        SecureHeteroNNHostScheduler.__init__(self, "host", config, lr)


def test_constructor_checks_the_project_layer_config() -> None:
    with pytest.raises(ConfigError, match="project_layer_config"):
        ConfiguredHost([("host", 3)], 0.1)
    with pytest.raises(ConfigError, match="project_layer_lr"):
        ConfiguredHost(CONFIG, 0)
    assert ConfiguredHost([("host", 3, 7), ("c1", 5, 2)], 0.1).project_layer["c1"].weight.shape == (2, 5)


# ----- Flower's engines: Ray simulation and loopback deployment ------------------------------
def _task_files(folder: Path) -> tuple[Path, Path]:
    """Host and collaborator scripts written the way AlphaFed users write them."""
    tests_dir = Path(__file__).parent
    head = f"import sys; sys.path.insert(0, {str(tests_dir)!r})\n"
    host, collab = folder / "secure_host.py", folder / "secure_collab.py"
    host.write_text(head + "from secure_tasks import SecureHost\n"
                    "scheduler = SecureHost(max_rounds=2, log_rounds=1, calculation_timeout=120, schedule_timeout=120)\n"
                    "scheduler.launch_task(task_id='secure-e2e')\n")
    collab.write_text(head + "from secure_tasks import SecureCollaborator\nscheduler = SecureCollaborator()\n"
                      "scheduler.launch_task(task_id='secure-e2e')\n")
    return host, collab


def _check_outputs(out: Path) -> None:
    result = json.loads((out / "summary.json").read_text())
    assert result["status"] == "completed" and result["rounds_completed"] == 2, result.get("error")
    assert 0.0 <= result["final_test"]["accuracy"] <= 1.0
    assert result["rounds"][-1]["stats"]["bytes-to-host"] > 0  # the secure exchange ran
    assert (out / "host" / "project_layer.pt").exists()


@pytest.mark.timeout(600)
def test_secure_scripts_run_in_a_ray_simulation(tmp_path: Path) -> None:
    from alphafed_flwr.cli import run_cli  # pylint: disable=import-outside-toplevel
    from alphafed_flwr.simulation.__main__ import main  # pylint: disable=import-outside-toplevel

    host, collab = _task_files(tmp_path)
    out = tmp_path / "run"
    assert run_cli(main, ["--host", str(host), "--collaborator", str(collab), "--out", str(out)]) == 0
    _check_outputs(out)


@pytest.mark.timeout(600)
def test_secure_scripts_run_on_a_loopback_deployment(tmp_path: Path) -> None:
    from deploy_helpers import Cluster, summary  # pylint: disable=import-outside-toplevel

    cluster = Cluster(tmp_path)
    try:
        host, collab = _task_files(tmp_path)
        out = tmp_path / "run"
        server = cluster.server("server", "--host", str(host), "--collaborators", "1", "--out", str(out), "--insecure")
        cluster.client("collab", "--insecure", "--collaborator", str(collab))
        assert server.wait(540) == 0, server.text()[-4000:]
        assert summary(out)["status"] == "completed"
        _check_outputs(out)
    finally:
        cluster.stop()
