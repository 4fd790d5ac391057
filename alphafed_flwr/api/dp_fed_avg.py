"""``DPFedAvgScheduler``: FedAvg with central differential privacy (``alphafed.fed_avg.dp_fed_avg``).

Pure torch. The server side (clipping, noise, privacy accounting) is Flower's
``DifferentialPrivacyServerSideFixedClipping`` with its RDP accountant, set up by
``alphafed_flwr.strategies.privacy``.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import ConfigError
from .fed_avg import FedAvgScheduler
from .scheduler import TEST_METHODS, call_user

__all__ = ["DPFedAvgScheduler"]

#: Default delta of the reported (epsilon, delta) guarantee.
DEFAULT_DELTA = 1e-5


class DPFedAvgScheduler(FedAvgScheduler):
    """FedAvg with client-level central differential privacy (DP-FedAvg, McMahan et al. 2018).

    Each round the server samples a fraction ``q`` of the available clients, clips each
    client's update (its new state minus the global state) to L2 norm ``S``, averages the
    clipped updates with equal weights and adds Gaussian noise of standard deviation
    ``z * S / m`` (m: the clients that took part). The privacy spent, (epsilon, delta),
    is reported after every round. The user implements ``train_a_batch(*batch)``;
    ``train_an_epoch`` runs it over the training loader.

    Parameters
    ----------
    w_cap : int
        AlphaFed's per-client example cap (weight min(n_k / w_cap, 1)). Checked, but every
        client has weight 1 here: the accountant's sensitivity S/m needs equal weights.
    q : float
        Fraction of the available clients sampled per round, in (0, 1]. The reported
        epsilon takes no credit for it (no subsampling amplification).
    S : float
        Clipping norm of each client's update (L2 over every exchanged tensor).
    z : float
        Noise multiplier (> 0).
    max_rounds, merge_epochs, calculation_timeout, schedule_timeout, log_rounds
        As for ``FedAvgScheduler``.
    involve_aggregator : bool
        The server trains on its own data as one more participant: its update is clipped
        and averaged like the clients' (the noise is z*S/(m+1)).
    delta : float
        The delta of the reported (epsilon, delta) guarantee (default 1e-5; choose it below
        1/number of clients).
    min_clients : int
        Fewest clients a round may use (default 1).
    """

    REQUIRED_METHODS = (
        "build_model",
        "build_optimizer",
        "build_train_dataloader",
        "build_test_dataloader",
        "train_a_batch",
        TEST_METHODS,
    )

    # pylint: disable=too-many-arguments,invalid-name
    def __init__(
        self,
        w_cap: int,
        q: float,
        S: float,
        z: float,
        max_rounds: int = 0,
        merge_epochs: int = 1,
        calculation_timeout: int = 300,
        schedule_timeout: int = 30,
        log_rounds: int = 0,
        involve_aggregator: bool = False,
        *,
        delta: float = DEFAULT_DELTA,
        min_clients: int = 1,
    ) -> None:
        super().__init__(
            min_clients=min_clients,
            max_clients=None,
            max_rounds=max_rounds,
            merge_epochs=merge_epochs,
            calculation_timeout=calculation_timeout,
            schedule_timeout=schedule_timeout,
            log_rounds=log_rounds,
            involve_aggregator=involve_aggregator,
        )
        self.w_cap = _positive_int("w_cap (AlphaFed's per-client example cap)", w_cap)
        self.q = _number("q (client sampling rate)", q, 0.0, 1.0, low_open=True)
        self.S = _number("S (clipping norm)", S, 0.0, math.inf, low_open=True)
        self.z = _number("z (noise multiplier)", z, 0.0, math.inf, low_open=True)
        self.delta = _number("delta", delta, 0.0, 1.0, low_open=True, high_open=True)

    def train_a_batch(self, *batch_train_data: Any) -> None:
        """Train on one batch (the user implements it)."""
        raise NotImplementedError

    def train_an_epoch(self) -> None:
        """One pass over the training loader, ``train_a_batch(*batch)`` per batch."""
        self.model.train()
        for batch in self.train_loader:
            call_user(self, "train_a_batch", *(batch if isinstance(batch, (list, tuple)) else (batch,)))

    def dp_settings(self) -> dict[str, float]:
        """The DP parameters as plain numbers (what the server's strategy needs)."""
        return {"q": self.q, "clipping_norm": self.S, "noise_multiplier": self.z,
                "delta": self.delta, "w_cap": float(self.w_cap)}


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


# pylint: disable=too-many-arguments
def _number(name: str, value: Any, low: float, high: float, low_open: bool = False,
            high_open: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{name} must be a finite number in {bounds}, got {value!r}")
    return float(value)
