"""``FedProxScheduler`` (pure torch; importable as ``alphafed.fed_prox``).

FedProx (Li et al., 2020) adds a proximal term to each client's local loss, so that local
training stays near the round's global model:

    loss + (mu / 2) * ||w - w_global||^2

The norm is SQUARED, as in the paper; AlphaFed 0.4.9 added the unsquared norm of each
tensor, and so does the example in Flower's FedProx docstring. The server side is plain
FedAvg (Flower's ``FedProx`` strategy only sends ``proximal-mu`` to the clients).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .fed_avg import FedAvgScheduler
from .log import logger

__all__ = ["FedProxScheduler", "proximal_term"]

#: Key of the proximal coefficient in the round config of Flower's ``FedProx`` strategy.
PROXIMAL_MU_KEY = "proximal-mu"


def check_mu(value: Any, where: str) -> float:
    """``value`` as a finite, non-negative float, else a ``ConfigError`` naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    mu = float(value)
    if not math.isfinite(mu) or mu < 0:
        raise ConfigError(f"{where} must be finite and >= 0, got {value!r}")
    return mu


def proximal_term(model: nn.Module, global_model: nn.Module) -> torch.Tensor:
    """``||w - w_global||^2`` over all parameters of ``model`` (differentiable in ``w``).

    Parameters
    ----------
    model : nn.Module
        The model being trained.
    global_model : nn.Module
        The round's global model, with the same parameter names and shapes.
    """
    local = dict(model.named_parameters())
    reference = dict(global_model.named_parameters())
    if local.keys() != reference.keys():
        raise ConfigError(
            "the model's parameters no longer match the round's global model "
            f"(only in the model: {sorted(local.keys() - reference.keys())}, only in the "
            f"global model: {sorted(reference.keys() - local.keys())})"
        )
    squares = [(w - reference[name].detach()).pow(2).sum() for name, w in local.items()]
    if not squares:
        return torch.zeros(())
    return torch.stack(squares).sum()


class FedProxScheduler(FedAvgScheduler):
    """FedAvg whose local loss carries FedProx's proximal term.

    Compute the training loss with ``self.calc_prox_loss(loss_fn, *args, **kwargs)``.

    Parameters
    ----------
    min_clients, max_clients, name, max_rounds, merge_epochs, calculation_timeout,
    schedule_timeout, log_rounds, is_centralized, involve_aggregator
        As for ``FedAvgScheduler``.
    mu : float
        Proximal coefficient (finite, >= 0; 0 is plain FedAvg). Under Flower's ``FedProx``
        strategy, the round config's ``proximal-mu`` replaces it on the clients.
    """

    def __init__(
        self,
        min_clients: int = 1,
        max_clients: int | None = None,
        name: str | None = None,
        max_rounds: int = 0,
        merge_epochs: int = 1,
        calculation_timeout: int = 300,
        schedule_timeout: int = 30,
        log_rounds: int = 0,
        is_centralized: bool = True,
        involve_aggregator: bool = False,
        mu: float = 0.01,
    ) -> None:
        super().__init__(
            min_clients=min_clients,
            max_clients=max_clients,
            name=name,
            max_rounds=max_rounds,
            merge_epochs=merge_epochs,
            calculation_timeout=calculation_timeout,
            schedule_timeout=schedule_timeout,
            log_rounds=log_rounds,
            is_centralized=is_centralized,
            involve_aggregator=involve_aggregator,
        )
        self.mu = check_mu(mu, "mu")
        self.global_model: nn.Module | None = None

    def apply_round_config(self, config: Mapping[str, Any]) -> None:
        """Take ``proximal-mu`` from the round config of Flower's ``FedProx`` strategy."""
        if PROXIMAL_MU_KEY not in config:
            return
        mu = check_mu(config[PROXIMAL_MU_KEY], f"the strategy's '{PROXIMAL_MU_KEY}'")
        if mu != self.mu:
            logger.info("FedProx: mu = %g from the strategy's '%s'", mu, PROXIMAL_MU_KEY)
            self.mu = mu

    def run_local_round(self) -> int:
        """Keep a frozen copy of the round's global model, then train as FedAvg does."""
        self.global_model = freeze(copy.deepcopy(self.model))
        return super().run_local_round()

    def calc_prox_loss(
        self, loss_fn: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """``loss_fn(*args, **kwargs) + (mu / 2) * ||w - w_global||^2``.

        Parameters
        ----------
        loss_fn : Callable[..., torch.Tensor]
            The task's loss (for example ``torch.nn.functional.nll_loss``).
        *args, **kwargs
            Passed to ``loss_fn``.
        """
        loss = loss_fn(*args, **kwargs)
        if self.global_model is None:
            raise ConfigError(
                f"{type(self).__name__}.calc_prox_loss needs the round's global model, which "
                "is kept when a round's local training starts: call it from train_an_epoch"
            )
        if self.mu == 0:
            return loss
        return loss + (self.mu / 2) * proximal_term(self.model, self.global_model)


def freeze(model: nn.Module) -> nn.Module:
    """``model`` with gradients switched off for all its parameters."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model
