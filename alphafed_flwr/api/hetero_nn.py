"""``HeteroNNHostScheduler`` and ``HeteroNNCollaboratorScheduler`` (vertical FL / split learning).

Pure torch; importable as ``alphafed.hetero_nn``. The host holds the labels and the infer
model; each collaborator holds a feature model over its own columns. Parties agree on the
common sample IDs by private set intersection, split them with ``split_dataset``, and
exchange features and gradients batch by batch.

Contract on ``iterate_train_feature`` / ``iterate_test_feature`` (alphafed-flwr runs a
collaborator's generator once per round with a recording stand-in for ``feature_model``,
then replays the recorded inputs with the real model, batch by batch, in later messages):

- call ``feature_model(x)`` exactly once per yielded batch, with one tensor ``x`` whose
  first dimension is the batch, and yield its result unchanged;
- yield batches in an order that is deterministic within a round and the same on every
  party (for example: sort the IDs with a key that depends on ``current_round``);
- optionally yield the batch's sample IDs as well (host: ``(features, labels, ids)``,
  collaborator: ``(features, ids)``); the parties then also check that every batch holds
  the same samples in the same order.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

from torch import nn
from torch.optim import Optimizer

from .errors import ConfigError, NotProvidedError
from .scheduler import TEST_METHODS, Scheduler, call_user

__all__ = ["HeteroNNCollaboratorScheduler", "HeteroNNHostScheduler", "JointOptimizer"]

COMMON_METHODS: tuple[str | tuple[str, ...], ...] = (
    "load_local_ids",
    "split_dataset",
    ("build_feature_model", "make_feature_model"),
    ("build_feature_optimizer", "make_feature_optimizer"),
    "iterate_train_feature",
    "iterate_test_feature",
)


class HeteroNNScheduler(Scheduler):
    """What the host and the collaborators share.

    Parameters
    ----------
    feature_key : str
        This party's unique key; the host receives features keyed by it.
    name, max_rounds, calculation_timeout, schedule_timeout, log_rounds
        As for every scheduler.
    is_feature_trainable : bool
        Whether this party's feature model is updated.
    data_channel_timeout : Any
        AlphaFed 0.1.x argument, accepted and ignored (Flower carries the data).
    """

    REQUIRED_METHODS = COMMON_METHODS

    def __init__(
        self,
        feature_key: str,
        name: str | None = None,
        max_rounds: int = 0,
        calculation_timeout: int = 300,
        schedule_timeout: int = 30,
        log_rounds: int = 0,
        is_feature_trainable: bool = True,
        data_channel_timeout: Any = None,
    ) -> None:
        del data_channel_timeout
        super().__init__(
            name=name,
            max_rounds=max_rounds,
            calculation_timeout=calculation_timeout,
            schedule_timeout=schedule_timeout,
            log_rounds=log_rounds,
        )
        if not isinstance(feature_key, str) or not feature_key:
            raise ConfigError(f"feature_key must be a non-empty string, got {feature_key!r}")
        self.feature_key = feature_key
        self.is_feature_trainable = bool(is_feature_trainable)
        self._feature_model: nn.Module | None = None
        self._feature_optimizer: Optimizer | None = None
        self._split: tuple[Any, Any] | None = None
        self._intersection: set[Any] | None = None
        # Users assign these in their generators (AlphaFed tutorials do); never read-only.
        self.train_loader: Any = None
        self.test_loader: Any = None

    @property
    def feature_model(self) -> nn.Module:
        """The feature model (built once)."""
        return self.lazy("_feature_model", ("build_feature_model", "make_feature_model"), nn.Module)

    @property
    def feature_optimizer(self) -> Optimizer:
        """The feature model's optimizer (built once)."""
        return self.lazy(
            "_feature_optimizer",
            ("build_feature_optimizer", "make_feature_optimizer"),
            Optimizer,
            self.feature_model,
        )

    @property
    def id_intersection(self) -> set[Any]:
        """This party's IDs that every party holds (after the private set intersection)."""
        if self._intersection is None:
            raise ConfigError("id_intersection is only known after the private set intersection")
        return self._intersection

    @property
    def train_ids(self) -> Any:
        """The training IDs, exactly as ``split_dataset`` returned them."""
        return self._split_ids()[0]

    @property
    def test_ids(self) -> Any:
        """The test IDs, exactly as ``split_dataset`` returned them."""
        return self._split_ids()[1]

    def _split_ids(self) -> tuple[Any, Any]:
        if self._split is None:
            result = call_user(self, "split_dataset", set(self.id_intersection))
            if not isinstance(result, tuple) or len(result) != 2:
                raise ConfigError(
                    f"{type(self).__name__}.split_dataset must return (train_ids, test_ids), "
                    f"got {type(result).__name__}"
                )
            self._split = result
        return self._split

    # ----- used by adapters ------------------------------------------------------------
    def local_ids(self) -> list[Any]:
        """The user's ``load_local_ids()``, checked."""
        ids = call_user(self, "load_local_ids")
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise ConfigError(
                f"{type(self).__name__}.load_local_ids must return a list of IDs, "
                f"got {type(ids).__name__}"
            )
        return list(ids)

    def set_intersection(self, ids: Iterable[Any]) -> None:
        """Record the intersection (this party's own ID objects) and forget the split."""
        self._intersection = set(ids)
        self._split = None

    def reset_feature_model(self) -> None:
        """Forget the feature model and its optimizer; the next access builds new ones."""
        self._feature_model = None
        self._feature_optimizer = None

    def reset_feature_optimizer(self) -> None:
        """Forget the feature optimizer; the next access builds a new one."""
        self._feature_optimizer = None


class HeteroNNHostScheduler(HeteroNNScheduler):
    """The label holder: feature model, infer model, ``train_a_batch`` and the test.

    Parameters
    ----------
    feature_key : str
        The host's key in the feature dict passed to ``train_a_batch`` and ``test``.
    name, max_rounds, calculation_timeout, schedule_timeout, log_rounds,
    is_feature_trainable, data_channel_timeout
        As for ``HeteroNNScheduler``.
    label_protection : Any (default: None)
        Defences of the labels against the collaborators, on the gradients sent to them,
        and the per-round leak audit: an ``alphafed_flwr.label_protection.LabelProtection``
        or a dict of its parameters (``{"noise": 1.0, "clip": 0.01}``).
    exchange_codecs : Any (default: None)
        Compression of the exchanged arrays: one codec for both ways (``"int8"``) or
        ``{"features": "fp16", "gradients": "topk:0.1"}`` (``float32``, ``fp16``, ``int8``,
        ``topk:FRACTION``; see ``alphafed_flwr.strategies.codecs``). ``None``: float32.
    """

    def __init__(self, *args: Any, label_protection: Any = None, exchange_codecs: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.label_protection = label_protection
        self.exchange_codecs = exchange_codecs

    REQUIRED_METHODS = COMMON_METHODS + (
        ("build_infer_model", "make_infer_model"),
        ("build_infer_optimizer", "make_infer_optimizer"),
        "train_a_batch",
        TEST_METHODS,
    )

    _infer_model: nn.Module | None = None
    _infer_optimizer: Optimizer | None = None
    _joint: JointOptimizer | None = None

    @property
    def infer_model(self) -> nn.Module:
        """The infer model (built once)."""
        return self.lazy("_infer_model", ("build_infer_model", "make_infer_model"), nn.Module)

    @property
    def infer_optimizer(self) -> Optimizer:
        """The infer model's optimizer (built once)."""
        return self.lazy(
            "_infer_optimizer",
            ("build_infer_optimizer", "make_infer_optimizer"),
            Optimizer,
            self.infer_model,
        )

    @property
    def optimizer(self) -> JointOptimizer:
        """One object whose ``zero_grad()``/``step()`` cover the feature and infer optimizers."""
        if self._joint is None:
            self._joint = JointOptimizer(self)
        return self._joint


class HeteroNNCollaboratorScheduler(HeteroNNScheduler):
    """A feature holder without labels.

    Parameters
    ----------
    feature_key : str
        This collaborator's key in the host's feature dict.
    name : str | None
        Task name.
    schedule_timeout : int
        Seconds to wait for control steps.
    is_feature_trainable : bool
        Whether this collaborator's feature model is updated with the host's gradients.
    data_channel_timeout : Any
        Accepted and ignored.
    embedding_dp : Any (default: None)
        Differential privacy on the features this party sends (clipping plus Gaussian
        noise): an ``alphafed_flwr.label_protection.EmbeddingDP`` or a dict of its parameters.
    """

    def __init__(
        self,
        feature_key: str,
        name: str | None = None,
        schedule_timeout: int = 30,
        is_feature_trainable: bool = True,
        data_channel_timeout: Any = None,
        embedding_dp: Any = None,
    ) -> None:
        super().__init__(
            feature_key=feature_key,
            name=name,
            schedule_timeout=schedule_timeout,
            is_feature_trainable=is_feature_trainable,
            data_channel_timeout=data_channel_timeout,
        )
        self.embedding_dp = embedding_dp


class JointOptimizer:
    """``zero_grad()`` and ``step()`` over the host's feature and infer optimizers.

    The feature optimizer is skipped by ``step()`` when ``is_feature_trainable`` is False.
    """

    def __init__(self, host: HeteroNNHostScheduler) -> None:
        self._host = host

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of both models."""
        self._host.feature_optimizer.zero_grad(set_to_none=set_to_none)
        self._host.infer_optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        """Step the infer optimizer, and the feature optimizer if it is trainable."""
        if self._host.is_feature_trainable:
            self._host.feature_optimizer.step()
        self._host.infer_optimizer.step()


#: Secure HeteroNN (issue 14), re-exported lazily so that its module can replace the
#: placeholders without touching this one (``from alphafed.hetero_nn import ...``).
_ELSEWHERE = {
    "SecureHeteroNNHostScheduler": "alphafed_flwr.api.secure_hetero_nn",
    "SecureHeteroNNCollaboratorScheduler": "alphafed_flwr.api.secure_hetero_nn",
}

#: AlphaFed's RSA PSI schedulers: alphafed-flwr runs its own PSI for every HeteroNN task.
_PSI_NAMES = ("RSAPSIInitiatorScheduler", "RSAPSICollaboratorScheduler")
PSI_GAP = (
    "is AlphaFed's RSA-based PSI; alphafed-flwr runs its own private set intersection "
    "(alphafed_flwr.psi, X25519 blinding) at the start of every HeteroNN task"
)
PSI_INSTEAD = (
    "implement load_local_ids() and split_dataset() on your HeteroNN scheduler instead, "
    "or call alphafed_flwr.psi directly"
)


def __getattr__(name: str) -> Any:
    if name in _ELSEWHERE:
        return getattr(importlib.import_module(_ELSEWHERE[name]), name)
    if name in _PSI_NAMES:
        raise NotProvidedError(name, PSI_GAP, PSI_INSTEAD)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
