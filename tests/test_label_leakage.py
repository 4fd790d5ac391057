"""Label-leakage attacks on constructed cases, each defence on a seeded toy split run,
embedding DP, and the hooks in a split-learning run (in process, no Ray)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fakegrid import FakeGrid
from torch import nn
from vertical_tasks import Collaborator, Host, collaborator_model

from alphafed_flwr.adapters.templates import PickledTemplate
from alphafed_flwr.adapters.vertical_client import CollaboratorSettings, collaborator_client_app
from alphafed_flwr.adapters.vertical_host import VerticalHost, VerticalSettings, run_vertical_host
from alphafed_flwr.label_protection import (
    EmbeddingDP,
    GradientGuard,
    LabelProtection,
    LeakageAudit,
    auc,
    direction_scores,
    leak_auc,
    norm_scores,
    private_features,
)
from alphafed_flwr.strategies.codecs import ExchangeCodecs
from alphafed_flwr.strategies.split_learning import SplitLearning


# ----- the attacks on constructed cases whose leak is known ----------------------------------
def test_auc_is_the_chance_a_positive_outscores_a_negative_with_ties_half() -> None:
    rng = np.random.default_rng(1)
    scores, labels = rng.integers(0, 5, 500).astype(float), rng.integers(0, 2, 500)
    pos, neg = scores[labels == 1][:, None], scores[labels == 0][None, :]
    pairwise = float(np.mean((pos > neg) + 0.5 * (pos == neg)))
    assert auc(scores, labels) == pytest.approx(pairwise, abs=1e-12)
    assert leak_auc(-scores, labels) == pytest.approx(max(auc(scores, labels), 1 - auc(scores, labels)))
    assert math.isnan(auc(scores, np.ones(500)))


def test_a_linear_head_leaks_every_label_to_the_direction_attack() -> None:
    # g_i = (p_i - y_i) w: the two classes' gradients point exactly opposite ways
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 400)
    p = rng.uniform(0.01, 0.99, 400)
    grads = (p - labels)[:, None] * rng.normal(size=16)[None, :]
    ref = int(np.flatnonzero(labels == 1)[0])
    assert leak_auc(direction_scores(grads, ref), labels) == 1.0
    audit = LeakageAudit()
    audit.observe(grads, labels)
    assert audit.result()["leak-auc-direction"] == 1.0


@pytest.mark.parametrize("shift", [0.0, 0.5, 1.5])
def test_the_norm_attack_finds_the_known_separation(shift: float) -> None:
    # norms ~ N(3 + shift, 0.5) for positives, N(3, 0.5) for negatives: AUC = Phi(shift / (0.5 sqrt 2))
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 20000)
    radii = rng.normal(3 + shift * labels, 0.5)
    directions = rng.normal(size=(20000, 8))
    grads = directions / np.linalg.norm(directions, axis=1, keepdims=True) * radii[:, None]
    want = 0.5 * (1 + math.erf(shift / (0.5 * math.sqrt(2)) / math.sqrt(2)))  # standard normal CDF
    assert leak_auc(norm_scores(grads), labels) == pytest.approx(want, abs=0.015)


def test_label_free_gradients_leak_nothing() -> None:
    rng = np.random.default_rng(4)
    audit = LeakageAudit()
    for _ in range(20):
        audit.observe(rng.normal(size=(200, 16)), rng.integers(0, 2, 200))
    result = audit.result()
    assert result["leak-auc-norm"] < 0.53 and result["leak-auc-direction"] < 0.53
    assert audit.result() == {}  # reset after each round


# ----- each defence on a seeded toy split run ------------------------------------------------
def toy_run(protection: LabelProtection | None, epochs: int = 4) -> tuple[dict[str, float], float]:
    """Two parties, 2,000 samples of 8 + 8 features, binary labels; the collaborator's
    feature model learns from the (defended) gradients. Returns the last epoch's leak AUCs
    and the test accuracy."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2400, 16, generator=gen)
    y = ((x[:, :8].sum(1) + 2 * x[:, 8:].sum(1)) > 5).long()  # about 21% positive
    torch.manual_seed(0)
    host, collab, head = nn.Linear(8, 4), nn.Sequential(nn.Linear(8, 4), nn.ReLU()), nn.Linear(8, 2)
    opt = torch.optim.Adam([*host.parameters(), *collab.parameters(), *head.parameters()], lr=0.01)
    guard = GradientGuard(protection)
    for _ in range(epochs):
        for start in range(0, 2000, 100):
            xb, yb = x[start : start + 100], y[start : start + 100]
            sent = collab(xb[:, 8:])
            leaf = sent.detach().requires_grad_(True)
            opt.zero_grad()
            F.cross_entropy(head(torch.cat((host(xb[:, :8]), leaf), 1)), yb).backward()
            sent.backward(guard.apply("c", leaf.grad, yb))
            opt.step()
        stats = guard.round_stats()
    with torch.no_grad():
        accuracy = (head(torch.cat((host(x[2000:, :8]), collab(x[2000:, 8:])), 1)).argmax(1) == y[2000:]).float().mean()
    return stats, float(accuracy)


def test_undefended_gradients_leak_and_each_defence_does_what_it_says() -> None:
    plain, plain_acc = toy_run(None)
    assert plain["leak-auc-direction"] > 0.99 and plain["leak-auc-norm"] > 0.75 and plain_acc > 0.93

    clipped, _ = toy_run(LabelProtection(clip=1e-6))  # every norm clipped to the same value
    assert clipped["leak-auc-norm"] == pytest.approx(0.5, abs=0.02)
    assert clipped["leak-auc-direction"] > 0.99  # clipping keeps the directions

    equalised, _ = toy_run(LabelProtection(max_norm=True, seed=0))
    assert equalised["leak-auc-norm"] < 0.6 < plain["leak-auc-norm"]

    noisy, noisy_acc = toy_run(LabelProtection(noise=3.0, seed=0))
    assert noisy["leak-auc-direction"] < 0.6 and noisy["leak-auc-norm"] < 0.6
    assert noisy_acc > 0.8  # the collaborator still learns through the noise
    assert toy_run(LabelProtection(noise=3.0, seed=0)) == (noisy, noisy_acc)  # seeded: reproducible


def test_binary_audit_skips_multiclass_labels() -> None:
    guard = GradientGuard(None)
    guard.apply("c", torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2]))
    assert guard.round_stats() == {}


# ----- DP on the forward embeddings --------------------------------------------------------
def test_embedding_dp_clips_adds_the_stated_noise_and_accounts_epsilon() -> None:
    dp = EmbeddingDP(clip=1.0, noise_multiplier=0.5)
    features = torch.full((4000, 16), 10.0)
    out = dp.apply(features, torch.Generator().manual_seed(0))
    clipped = features / features[0].norm()
    assert float((out - clipped).std()) == pytest.approx(0.5 * 2 * 1.0, rel=0.02)
    # Gaussian mechanisms compose exactly: R releases at z equal one release at z / sqrt(R)
    assert dp.epsilon(16) == pytest.approx(EmbeddingDP(1.0, 0.5 / 4).epsilon(1), rel=1e-6)
    assert EmbeddingDP(1.0, 2.0).epsilon(20) < EmbeddingDP(1.0, 1.0).epsilon(20) < dp.epsilon(20)
    reply = private_features({"features": [np.ones((3, 4), np.float32)], "batches": 1}, {"clip": 1, "noise_multiplier": 1})
    assert reply["batches"] == 1 and not np.allclose(reply["features"][0], 0.5)


# ----- the hooks in a split-learning run -------------------------------------------------
def run_split(tmp_path: Path, host: Host, collaborator: Collaborator, codecs: str | None = None) -> dict:
    source = PickledTemplate(collaborator)
    app = collaborator_client_app(lambda ctx: source, lambda ctx: CollaboratorSettings(out_dir=str(tmp_path)))
    grid = FakeGrid({100: lambda m, c: app(m, c)}, {100: {"partition-id": 0}})
    vertical = VerticalHost(host, VerticalSettings(out_dir=tmp_path, rounds=2))
    strategy = SplitLearning(1, schedule_timeout=2, calculation_timeout=5, codecs=ExchangeCodecs.parse(codecs))
    return run_vertical_host(grid, vertical, strategy)


def test_the_run_records_leak_and_bytes_and_honours_the_settings(tmp_path: Path) -> None:
    plain = run_split(tmp_path / "plain", Host(), Collaborator())
    stats = plain["rounds"][-1]["stats"]
    assert {"leak-auc-norm", "leak-auc-direction"} <= set(stats)
    assert stats["bytes-gradients"] == stats["bytes-features"] == 16 * 3 * 4  # 16 samples, 3 features
    squeezed = run_split(tmp_path / "int8", Host(exchange_codecs="int8"), Collaborator(), codecs="int8")
    small = squeezed["rounds"][-1]["stats"]
    assert small["bytes-gradients"] == small["bytes-features"] == 4 * (4 * 3 + 4)  # 4 batches
    assert squeezed["status"] == "completed"
    private = Collaborator()
    private.embedding_dp = {"clip": 1.0, "noise_multiplier": 1.0}
    defended = run_split(tmp_path / "dp", Host(label_protection={"clip": 1e-9}), private)
    assert defended["status"] == "completed"
    initial = collaborator_model().state_dict()
    for run, moved in (("plain", True), ("dp", False)):  # gradients clipped to 1e-9 move nothing
        trained = torch.load(tmp_path / run / "collaborators" / "c1" / "feature_model.pt")
        assert any(not torch.allclose(trained[k], initial[k], atol=1e-6) for k in initial) == moved
