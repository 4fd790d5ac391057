"""Label leakage in split learning: the attacks that measure it, the defences that limit it.

A collaborator receives, for every sample of a batch, the gradient of the host's loss with
respect to the features it sent. Li et al. ("Label Leakage and Protection in Two-party
Split Learning", ICLR 2022) show two ways it reads binary labels from them:

- **norm attack**: score each sample by ``||g_i||``; the class the model gets wrong more
  often has the larger gradients;
- **direction attack**: score each sample by the cosine between ``g_i`` and the gradient of
  one sample of the same batch whose label the attacker knows (a positive one); with a
  linear head the gradients of the two classes point in opposite directions.

The leak is the attack's AUC (``leak_auc``: ``max(AUC, 1 - AUC)``, the attacker is assumed
to know which side is positive; 0.5 means no leak). ``LeakageAudit`` computes both per
round on what the host sends, which is exactly what the collaborator receives.

Host-side defences (``LabelProtection``, applied to each batch's gradient before it leaves):

- ``clip``: each sample's gradient scaled to an L2 norm of at most ``clip``;
- ``max_norm``: Li et al.'s heuristic: Gaussian noise that raises every sample's expected
  norm to the batch's largest;
- ``noise``: calibrated isotropic Gaussian noise, standard deviation
  ``noise * max_i ||g_i|| / sqrt(d)`` per coordinate (the noise vector's expected norm is
  ``noise`` times the batch's largest gradient norm; d values per sample).

Collaborator-side (``EmbeddingDP``, applied to the features a collaborator sends): each
sample's feature vector clipped to L2 norm ``clip`` and Gaussian noise of standard deviation
``noise_multiplier * 2 * clip`` added (2 * clip is the L2 sensitivity when one sample's raw
features are replaced). ``epsilon`` states the guarantee with Google's ``dp-accounting`` (extra ``dp``)
(Rényi DP of the Gaussian mechanism, Mironov 2017, composed over every release of a
sample's embedding: one per training round). It bounds what the host learns about one
sample's raw features from its released embeddings, given the feature models; it says
nothing about labels.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from alphafed_flwr.strategies.protocol import FEATURES, TEST_FEATURES

__all__ = [
    "EmbeddingDP",
    "LabelProtection",
    "LeakageAudit",
    "auc",
    "direction_scores",
    "leak_auc",
    "norm_scores",
]


# ----- attacks ---------------------------------------------------------------------------
def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for 0/1 ``labels`` (ties count one half).

    The Mann-Whitney statistic: the chance that a random positive scores above a random
    negative. ``nan`` when a class is missing.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def leak_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """``max(AUC, 1 - AUC)``: the attack's AUC when it knows which side is positive."""
    value = auc(scores, labels)
    return max(value, 1.0 - value) if not math.isnan(value) else value


def norm_scores(grads: np.ndarray) -> np.ndarray:
    """The norm attack: each sample's gradient L2 norm (``grads``: batch first)."""
    flat = np.asarray(grads, dtype=np.float64).reshape(len(grads), -1)
    return np.linalg.norm(flat, axis=1)


def direction_scores(grads: np.ndarray, reference: int) -> np.ndarray:
    """The direction attack: each sample's cosine with sample ``reference``'s gradient."""
    flat = np.asarray(grads, dtype=np.float64).reshape(len(grads), -1)
    norms = np.linalg.norm(flat, axis=1)
    ref = flat[reference]
    return flat @ ref / np.maximum(norms * np.linalg.norm(ref), 1e-30)


@dataclass
class LeakageAudit:
    """Collects a round's gradients and binary labels; ``result()`` gives both attacks' leak
    AUC over the round. The direction attack's known sample is each batch's first positive
    (left out of the scores); batches without a positive are left out of that attack."""

    norm: list[np.ndarray] = field(default_factory=list)
    direction: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    direction_labels: list[np.ndarray] = field(default_factory=list)

    def observe(self, grads: np.ndarray, labels: np.ndarray) -> None:
        """Score one batch (``labels``: 0/1, one per gradient row)."""
        labels = np.asarray(labels).astype(np.int64).ravel()
        self.norm.append(norm_scores(grads))
        self.labels.append(labels)
        positives = np.flatnonzero(labels == 1)
        if positives.size:
            keep = np.arange(len(labels)) != positives[0]
            self.direction.append(direction_scores(grads, int(positives[0]))[keep])
            self.direction_labels.append(labels[keep])

    def result(self) -> dict[str, float]:
        """``{"leak-auc-norm": ..., "leak-auc-direction": ...}`` (``{}`` if nothing seen); resets."""
        out: dict[str, float] = {}
        if self.labels:
            out["leak-auc-norm"] = leak_auc(np.concatenate(self.norm), np.concatenate(self.labels))
        if self.direction:
            out["leak-auc-direction"] = leak_auc(
                np.concatenate(self.direction), np.concatenate(self.direction_labels)
            )
        self.norm, self.direction, self.labels, self.direction_labels = [], [], [], []
        return out


def binary_labels(labels: Any) -> np.ndarray | None:
    """``labels`` as a 0/1 vector, or ``None`` if they are not binary class indices."""
    try:
        array = torch.as_tensor(labels).detach().cpu().numpy()
    except (TypeError, ValueError, RuntimeError):
        return None
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
        return None
    return array.astype(np.int64) if np.isin(array, (0, 1)).all() else None


# ----- defences ----------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelProtection:
    """Host-side defences on the gradients sent to collaborators, and the leak audit.

    Parameters
    ----------
    clip : float | None (default: None)
        Largest L2 norm of one sample's gradient; ``None`` for no clipping.
    noise : float (default: 0.0)
        Isotropic Gaussian noise whose expected norm is ``noise`` times the batch's largest
        gradient norm (after clipping); 0 for none.
    max_norm : bool (default: False)
        Li et al.'s max-norm heuristic (noise that equalises the expected norms).
    audit : bool (default: True)
        Measure both attacks' leak AUC every round (when labels are 0/1).
    seed : int | None (default: None)
        Seed of the noise (reproducible runs); ``None`` draws one from the OS.
    """

    clip: float | None = None
    noise: float = 0.0
    max_norm: bool = False
    audit: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"clip must be a positive number or None, got {self.clip}")
        if not self.noise >= 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")

    @classmethod
    def parse(cls, spec: LabelProtection | Mapping[str, Any] | None) -> LabelProtection | None:
        """From ``None``, an instance, or a mapping of its parameters."""
        if spec is None or isinstance(spec, LabelProtection):
            return spec
        return cls(**dict(spec))

    @property
    def defends(self) -> bool:
        """Whether any defence changes the gradients."""
        return self.clip is not None or self.noise > 0 or self.max_norm

    def __str__(self) -> str:
        parts = [f"clip {self.clip:g}"] if self.clip is not None else []
        parts += ["max-norm"] if self.max_norm else []
        parts += [f"noise {self.noise:g}"] if self.noise else []
        return ", ".join(parts) or "none"


def clip_rows(grads: torch.Tensor, clip: float) -> torch.Tensor:
    """Each sample's gradient scaled down to an L2 norm of at most ``clip``."""
    norms = grads.flatten(1).norm(dim=1)
    factor = torch.clamp(clip / torch.clamp(norms, min=1e-30), max=1.0)
    return grads * factor.view(-1, *([1] * (grads.ndim - 1)))


def max_norm_noise(grads: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Li et al.'s max-norm: sample i gets N(0, (max_j ||g_j||^2 - ||g_i||^2) / d) per value."""
    flat = grads.flatten(1)
    sq = flat.pow(2).sum(dim=1)
    std = torch.sqrt(torch.clamp(sq.max() - sq, min=0.0) / flat.shape[1])
    noise = torch.randn(flat.shape, generator=generator, dtype=flat.dtype) * std[:, None]
    return grads + noise.view_as(grads)


def isotropic_noise(grads: torch.Tensor, multiplier: float, generator: torch.Generator) -> torch.Tensor:
    """``grads`` plus N(0, s^2) per value, s = multiplier * max_i ||g_i|| / sqrt(d)."""
    flat = grads.flatten(1)
    std = multiplier * float(flat.norm(dim=1).max()) / math.sqrt(flat.shape[1])
    return grads + torch.randn(grads.shape, generator=generator, dtype=grads.dtype) * std


class GradientGuard:
    """Applies a ``LabelProtection`` batch by batch and audits the result, per collaborator.

    Parameters
    ----------
    protection : LabelProtection | None
        The defences; ``None`` sends gradients unchanged and audits them.
    """

    def __init__(self, protection: LabelProtection | None) -> None:
        self.protection = protection or LabelProtection()
        seed = self.protection.seed if self.protection.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator().manual_seed(seed)
        self.audits: dict[str, LeakageAudit] = {}

    def apply(self, key: str, grads: torch.Tensor, labels: Any) -> torch.Tensor:
        """The gradient to send to collaborator ``key`` for one batch (``labels``: the host's)."""
        p = self.protection
        out = grads.detach()
        if out.ndim >= 1 and len(out) and p.defends:
            out = clip_rows(out, p.clip) if p.clip is not None else out
            out = max_norm_noise(out, self.generator) if p.max_norm else out
            out = isotropic_noise(out, p.noise, self.generator) if p.noise else out
        binary = binary_labels(labels) if p.audit else None
        if binary is not None and len(binary) == len(out):
            self.audits.setdefault(key, LeakageAudit()).observe(out.numpy(), binary)
        return out

    def round_stats(self) -> dict[str, float]:
        """The round's leak AUCs (``leak-auc-norm``, ``leak-auc-direction``; max over
        collaborators); resets."""
        stats: dict[str, float] = {}
        for audit in self.audits.values():
            for name, value in audit.result().items():
                stats[name] = max(stats.get(name, 0.0), value)
        return stats


@dataclass(frozen=True)
class EmbeddingDP:
    """Clipping plus Gaussian noise on the features a collaborator sends.

    Parameters
    ----------
    clip : float
        Largest L2 norm of one sample's feature vector.
    noise_multiplier : float
        Noise standard deviation over the L2 sensitivity (2 * clip).
    delta : float (default: 1e-5)
        The delta of the stated (epsilon, delta) guarantee.
    """

    clip: float
    noise_multiplier: float
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if not self.clip > 0 or not self.noise_multiplier > 0 or not 0 < self.delta < 1:
            raise ValueError("EmbeddingDP needs clip > 0, noise_multiplier > 0 and 0 < delta < 1")

    def apply(self, features: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Clip each sample's features and add the noise."""
        clipped = clip_rows(features.detach().float(), self.clip)
        std = self.noise_multiplier * 2.0 * self.clip
        return clipped + torch.randn(clipped.shape, generator=generator) * std

    def epsilon(self, releases: int) -> float:
        """Epsilon after ``releases`` releases of one sample's embedding (RDP accountant)."""
        try:  # pylint: disable=import-outside-toplevel
            import dp_accounting
            from dp_accounting.rdp import RdpAccountant
        except ImportError as exc:
            raise ImportError("EmbeddingDP.epsilon needs dp-accounting: pip install 'alphafed-flwr[dp]'") from exc

        accountant = RdpAccountant()
        accountant.compose(
            dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(self.noise_multiplier), releases)
        )
        return float(accountant.get_epsilon(self.delta))

    @classmethod
    def parse(cls, spec: EmbeddingDP | Mapping[str, Any] | None) -> EmbeddingDP | None:
        """From ``None``, an instance, or a mapping of its parameters."""
        if spec is None or isinstance(spec, EmbeddingDP):
            return spec
        return cls(**dict(spec))


def private_features(reply: dict[str, Any], spec: EmbeddingDP | Mapping[str, Any] | None) -> dict[str, Any]:
    """A collaborator reply whose training and test features went through ``EmbeddingDP``
    (unchanged without one). The collaborator still back-propagates the host's gradient
    through its unclipped features: the clip's Jacobian is left out (the noise's is 1)."""
    dp = EmbeddingDP.parse(spec)
    if dp is None:
        return reply
    generator = torch.Generator().manual_seed(secrets.randbits(63))
    for name in (FEATURES, TEST_FEATURES):
        if name in reply:
            reply[name] = [dp.apply(torch.from_numpy(np.asarray(f)), generator).numpy() for f in reply[name]]
    return reply
