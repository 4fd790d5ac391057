"""``SecureHeteroNNHostScheduler`` and ``SecureHeteroNNCollaboratorScheduler``
(``alphafed.hetero_nn``): HeteroNN whose collaborator features reach the host only through
a projection layer computed under CKKS encryption (``alphafed_flwr.secure_layer``).

Pure torch. ``train_a_batch`` and ``test`` receive *projections*: for every key of
``project_layer_config``, ``feature_projection[key]`` is that party's features times its
projection matrix (the host's own features are projected in the clear by
``project_layer[host_key]``; collaborators' through the secure protocol). A collaborator's
projection matrix is additively shared: ``project_layer[key].weight`` holds only the host's
share, the collaborator holds the other; both are updated by plain SGD with
``project_layer_lr``, which must be the same number on the host and the collaborator.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .hetero_nn import HeteroNNCollaboratorScheduler, HeteroNNHostScheduler

__all__ = ["SecureHeteroNNCollaboratorScheduler", "SecureHeteroNNHostScheduler"]


def check_project_lr(value: Any) -> float:
    """``project_layer_lr`` as a positive float, or a ``ConfigError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ConfigError(f"project_layer_lr must be a positive number, got {value!r}")
    return float(value)


def check_project_config(config: Any) -> list[tuple[str, int, int]]:
    """``project_layer_config`` as ``[(key, in_dim, out_dim), ...]``, or a ``ConfigError``."""
    if isinstance(config, (str, bytes)) or not isinstance(config, Iterable):
        raise ConfigError(f"project_layer_config must be a list of (key, in_dim, out_dim), got {config!r}")
    rules: list[tuple[str, int, int]] = []
    for item in config:
        ok = isinstance(item, (tuple, list)) and len(item) == 3
        key, n_in, n_out = item if ok else (None, None, None)
        if not (ok and isinstance(key, str) and key and "." not in key
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in (n_in, n_out))):
            raise ConfigError(
                f"invalid project_layer_config item {item!r}: expected (key, in_dim, out_dim) "
                "with a non-empty key without dots and positive integer dimensions"
            )
        rules.append((key, n_in, n_out))
    keys = [k for k, _, _ in rules]
    if not rules or len(set(keys)) != len(keys):
        raise ConfigError(f"project_layer_config needs one item per party, got keys {keys}")
    return rules


class ProjectLayer(nn.Module):
    """One bias-free linear projection per party key.

    For the host's own key the weight is the projection; for a collaborator's key it is the
    host's additive share of it, drawn from U(-1/sqrt(2 in), 1/sqrt(2 in)) so that the sum
    with the collaborator's share (drawn alike) has the variance of ``nn.Linear``'s default.

    Parameters
    ----------
    config : list[tuple[str, int, int]]
        ``(key, in_dim, out_dim)`` per party.
    own_key : str
        The host's feature key.
    """

    def __init__(self, config: list[tuple[str, int, int]], own_key: str) -> None:
        super().__init__()
        self.dims = {key: (n_in, n_out) for key, n_in, n_out in config}
        self.layers = nn.ModuleDict({key: nn.Linear(n_in, n_out, bias=False) for key, n_in, n_out in config})
        with torch.no_grad():
            for key, layer in self.layers.items():
                if key != own_key:
                    bound = 1.0 / math.sqrt(2.0 * self.dims[key][0])
                    layer.weight.uniform_(-bound, bound)

    def __getitem__(self, key: str) -> nn.Linear:
        return self.layers[key]  # type: ignore[return-value]

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Project plaintext inputs (the host's own features) by key."""
        return {key: self.layers[key](value) for key, value in inputs.items()}


class ProjectOptimizer:
    """``zero_grad()``/``step()`` of the project layer.

    ``step()`` applies SGD with ``project_layer_lr`` to the host's own projection and marks
    that the collaborators' shared projections are to be stepped: the adapter then runs the
    secure backward of the batch (the shares cannot be stepped by the host alone).
    """

    def __init__(self, host: SecureHeteroNNHostScheduler) -> None:
        self._host = host
        own = host.feature_key
        params = list(host.project_layer[own].parameters()) if own in host.project_layer.dims else []
        self._sgd = torch.optim.SGD(params, lr=host.project_layer_lr) if params else None
        self.stepped = False

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the host's own projection's gradient."""
        if self._sgd is not None:
            self._sgd.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        """Step the host's own projection; request the collaborators' secure update."""
        if self._sgd is not None:
            self._sgd.step()
        self.stepped = True


class SecureJointOptimizer:
    """``zero_grad()``/``step()`` over the feature, infer and project optimizers."""

    def __init__(self, host: SecureHeteroNNHostScheduler) -> None:
        self._host = host

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every gradient the host's models hold."""
        self._host.feature_optimizer.zero_grad(set_to_none=set_to_none)
        self._host.infer_optimizer.zero_grad(set_to_none=set_to_none)
        self._host.project_optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        """Step the infer, project and (if trainable) feature optimizers."""
        self._host.infer_optimizer.step()
        self._host.project_optimizer.step()
        if self._host.is_feature_trainable:
            self._host.feature_optimizer.step()


class SecureHeteroNNHostScheduler(HeteroNNHostScheduler):
    """The label holder of a secure HeteroNN task.

    Parameters
    ----------
    feature_key : str
        The host's key.
    project_layer_config : list[tuple[str, int, int]]
        ``(key, in_dim, out_dim)`` per party: every collaborator's key must be present (its
        features are projected securely); the host's own key may be (its features are then
        projected in the clear, otherwise passed on unchanged). ``in_dim != out_dim`` works.
    project_layer_lr : float
        SGD learning rate of the projections (the same on every collaborator).
    max_rounds, calculation_timeout, schedule_timeout, log_rounds, is_feature_trainable
        As for ``HeteroNNHostScheduler``.
    name, data_channel_timeout
        As for ``HeteroNNHostScheduler`` (keyword only here).
    """

    #: CKKS parameters (an ``alphafed_flwr.secure_layer.CkksParams``); ``None``: the defaults.
    ckks_params: Any = None

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        feature_key: str,
        project_layer_config: list[tuple[str, int, int]],
        project_layer_lr: float,
        max_rounds: int = 0,
        calculation_timeout: int = 300,
        schedule_timeout: int = 30,
        log_rounds: int = 0,
        is_feature_trainable: bool = True,
        *,
        name: str | None = None,
        data_channel_timeout: Any = None,
    ) -> None:
        super().__init__(
            feature_key=feature_key,
            name=name,
            max_rounds=max_rounds,
            calculation_timeout=calculation_timeout,
            schedule_timeout=schedule_timeout,
            log_rounds=log_rounds,
            is_feature_trainable=is_feature_trainable,
            data_channel_timeout=data_channel_timeout,
        )
        self.project_layer_config = check_project_config(project_layer_config)
        self.project_layer_lr = check_project_lr(project_layer_lr)
        self._project_layer: ProjectLayer | None = None
        self._project_optimizer: ProjectOptimizer | None = None
        self._secure_joint: SecureJointOptimizer | None = None

    @property
    def project_layer(self) -> ProjectLayer:
        """The projections (host's own) and the host's shares (collaborators')."""
        if self._project_layer is None:
            self._project_layer = ProjectLayer(self.project_layer_config, self.feature_key)
        return self._project_layer

    @property
    def project_optimizer(self) -> ProjectOptimizer:
        """SGD on the host's own projection; the secure update of the shared ones."""
        if self._project_optimizer is None:
            self._project_optimizer = ProjectOptimizer(self)
        return self._project_optimizer

    @property
    def optimizer(self) -> SecureJointOptimizer:  # type: ignore[override]
        """One object whose ``zero_grad()``/``step()`` cover feature, infer and project."""
        if self._secure_joint is None:
            self._secure_joint = SecureJointOptimizer(self)
        return self._secure_joint

    def project_own(self, features: torch.Tensor) -> torch.Tensor:
        """The host's own features, projected if its key is configured."""
        if self.feature_key not in self.project_layer.dims:
            return features
        return self.project_layer[self.feature_key](features)


class SecureHeteroNNCollaboratorScheduler(HeteroNNCollaboratorScheduler):
    """A feature holder of a secure HeteroNN task; it holds the CKKS keys.

    Parameters
    ----------
    feature_key : str
        This collaborator's key (it must be in the host's ``project_layer_config``).
    project_layer_lr : float
        SGD learning rate of its share of the projection (the host's value).
    schedule_timeout, is_feature_trainable
        As for ``HeteroNNCollaboratorScheduler``.
    name, data_channel_timeout
        As for ``HeteroNNCollaboratorScheduler`` (keyword only here).
    """

    def __init__(
        self,
        feature_key: str,
        project_layer_lr: float,
        schedule_timeout: int = 30,
        is_feature_trainable: bool = True,
        *,
        name: str | None = None,
        data_channel_timeout: Any = None,
    ) -> None:
        super().__init__(
            feature_key=feature_key,
            name=name,
            schedule_timeout=schedule_timeout,
            is_feature_trainable=is_feature_trainable,
            data_channel_timeout=data_channel_timeout,
        )
        self.project_layer_lr = check_project_lr(project_layer_lr)
