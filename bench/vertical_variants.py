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
