"""Variants of the vertical MNIST example for ``bench/label_leakage.py`` and
``bench/compression.py``, and the small task files that run one setting each.

``BinaryMnistHost`` is the example's host on the binary task "digit >= 5" (a two-class
infer model); both hosts take ``label_protection`` and ``exchange_codecs``. A setting runs
from a generated three-line task file in the run folder (``task_file``), so that the run
folder shows exactly what ran.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "simulations" / "mnist"))

# pylint: disable=wrong-import-position
from alphafed_flwr.api.scheduler import launch_capture  # noqa: E402

with launch_capture():  # the example scripts end in launch_task(): only register them
    from vertical_collaborator import MnistCollaborator  # noqa: E402
    from vertical_host import MnistHost  # noqa: E402


class ConfigurableMnistHost(MnistHost):
    """The example's host with the label-protection and codec parameters."""

    def __init__(self, label_protection: Any = None, exchange_codecs: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.label_protection = label_protection
        self.exchange_codecs = exchange_codecs


class BinaryMnistHost(ConfigurableMnistHost):
    """The example's host on the binary label "digit >= 5"."""

    def build_infer_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(128, 2), nn.LogSoftmax(dim=-1))

    def iterate_train_feature(self, feature_model: nn.Module, train_ids: set):
        for features, labels, ids in super().iterate_train_feature(feature_model, train_ids):
            yield features, (labels >= 5).long(), ids

    def iterate_test_feature(self, feature_model: nn.Module, test_ids: set):
        for features, labels, ids in super().iterate_test_feature(feature_model, test_ids):
            yield features, (labels >= 5).long(), ids


class PrivateMnistCollaborator(MnistCollaborator):
    """The example's collaborator with DP on the features it sends."""

    def __init__(self, embedding_dp: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embedding_dp = embedding_dp


def task_file(folder: Path, name: str, cls: type, **kwargs: Any) -> str:
    """Write ``folder/name.py`` creating ``cls(**kwargs)``; return its ``path:scheduler`` ref."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    args = ", ".join(f"{k}={json.loads(json.dumps(v))!r}" for k, v in kwargs.items())
    path.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'bench')!r})\n"
        f"from vertical_variants import {cls.__name__}\n"
        f"scheduler = {cls.__name__}({args})\n"
    )
    return f"{path}:scheduler"


def median_stat(summary: dict[str, Any], name: str) -> float:
    """Median over the rounds of one round statistic (0 if never recorded)."""
    values = sorted(r["stats"].get(name, 0) for r in summary["rounds"])
    return float(values[len(values) // 2]) if values else 0.0


def split_in_process(
    rounds: int,
    data_dir: str | None,
    binary: bool,
    protection: Any = None,
    embedding_dp: Any = None,
    codecs: Any = None,
) -> dict[str, Any]:
    """The example's split model trained in one process exactly as K=1 split learning does
    it (the collaborator's features reach the host as a leaf; the host's gradient for them,
    after ``GradientGuard``, is back-propagated into the collaborator's model), through
    the same defence, DP and codec functions as the adapters; same batches, order, models
    and Adam optimizers as the example, seed 0. Returns the final test accuracy and, per
    round, the leak AUCs and the array bytes each way."""
    # pylint: disable=import-outside-toplevel,too-many-locals
    import torch
    import torch.nn.functional as F

    from alphafed_flwr.api.env import RunEnvironment, set_environment
    from alphafed_flwr.label_protection import EmbeddingDP, GradientGuard, LabelProtection
    from alphafed_flwr.strategies.codecs import ExchangeCodecs, pack, payload_bytes, unpack

    set_environment(RunEnvironment("server", "bench", None, Path(data_dir) if data_dir else None))
    from split_mnist import HalfConvNet, InferModel, batches, load, round_order

    images, labels = load("bench", train=True)
    test_images, test_labels = load("bench", train=False)
    if binary:
        labels, test_labels = (labels >= 5).long(), (test_labels >= 5).long()
    torch.manual_seed(0)
    host, collab = HalfConvNet(), HalfConvNet()
    infer = nn.Sequential(nn.Linear(128, 2), nn.LogSoftmax(dim=-1)) if binary else InferModel()
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (host, collab, infer)]
    guard, dp = GradientGuard(LabelProtection.parse(protection)), EmbeddingDP.parse(embedding_dp)
    codecs = ExchangeCodecs.parse(codecs)
    noise = torch.Generator().manual_seed(1)

    def send(features: torch.Tensor, name: str, codec: Any, sizes: dict[str, int]) -> torch.Tensor:
        packed = pack(name, [features.detach().numpy()], codec)
        sizes[name] = sizes.get(name, 0) + payload_bytes(packed, name)
        return torch.from_numpy(unpack(packed, name, "bench")[0])

    history = []
    for epoch in range(1, rounds + 1):
        sizes: dict[str, int] = {}
        for ids in batches(round_order(set(range(len(images))), epoch), 128):
            index = torch.tensor(ids)
            out = collab(images[index, :, :, 14:])
            sent = dp.apply(out, noise) if dp else out.detach()
            leaf = send(sent, "features", codecs.features, sizes).requires_grad_(True)
            for opt in optimizers:
                opt.zero_grad()
            fused = torch.cat((host(images[index, :, :, :14]), leaf), 1)
            F.nll_loss(infer(fused), labels[index]).backward()
            grad = send(guard.apply("collaborator", leaf.grad, labels[index]), "grads", codecs.gradients, sizes)
            out.backward(grad)
            for opt in optimizers:
                opt.step()
        history.append({**guard.round_stats(), **{f"bytes-{k}": v for k, v in sizes.items()}})
    with torch.no_grad():
        theirs = collab(test_images[:, :, :, 14:])
        theirs = dp.apply(theirs, noise) if dp else theirs
        theirs = torch.cat([send(t, "features", codecs.features, {}) for t in theirs.split(1000)])
        fused = torch.cat((host(test_images[:, :, :, :14]), theirs), 1)
        accuracy = (infer(fused).argmax(1) == test_labels).float().mean().item()
    return {"accuracy": accuracy, "rounds": history}
