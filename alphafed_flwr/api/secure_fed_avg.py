"""``SecureFedAvgScheduler``: FedAvg whose server learns only the sum of the updates
(``alphafed.fed_avg.SecureFedAvgScheduler``).

Pure torch. The protocol is Flower's SecAgg+ (``secaggplus_mod`` on clients,
``SecAggPlusWorkflow`` on the server), bridged by ``alphafed_flwr.strategies.secagg``.
"""

from __future__ import annotations

from .errors import ConfigError
from .fed_avg import FedAvgScheduler
from .scheduler import _check_int

__all__ = ["SecureFedAvgScheduler"]


class SecureFedAvgScheduler(FedAvgScheduler):
    """FedAvg under secure aggregation (SecAgg+, Bell et al. 2020).

    Every client masks its quantized, weighted update; the server can unmask only the sum
    of at least ``t`` clients' updates. Up to n - t of the n sampled clients may drop out
    mid-round and the sum of the others is still exact (within quantization).

    Parameters
    ----------
    t : int
        Secret-sharing threshold (>= 2): shares needed to rebuild a client's mask keys, and
        fewest clients that must finish a round. Up to t - 1 colluding parties (the server
        included) learn nothing beyond the sum.
    max_rounds, merge_epochs, calculation_timeout, schedule_timeout, log_rounds
        As for ``FedAvgScheduler``.
    min_clients : int | None
        Fewest clients per round (default and minimum: ``t``).
    max_clients : int | None
        Most clients per round (``None``: every available client).
    clipping_range : float
        Each client's weighted update (new state minus global state, times n_k/max_weight)
        must lie within +-clipping_range (default 8); a client whose update does not
        refuses to send it (the round then treats it as a dropout).
    max_weight : float
        Largest sample count a client may weigh (default 100,000); larger counts are capped.
    """

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        t: int,
        max_rounds: int = 0,
        merge_epochs: int = 1,
        calculation_timeout: int = 300,
        schedule_timeout: int = 30,
        log_rounds: int = 0,
        *,
        min_clients: int | None = None,
        max_clients: int | None = None,
        clipping_range: float = 8.0,
        max_weight: float = 100_000.0,
    ) -> None:
        self.t = _check_int("t (the secret-sharing threshold)", t, 2)
        min_clients = t if min_clients is None else min_clients
        if min_clients < t:
            raise ConfigError(
                f"min_clients ({min_clients}) is below the threshold t={t}: a round with fewer "
                f"than t clients cannot be unmasked; raise min_clients to at least {t}"
            )
        super().__init__(
            min_clients=min_clients,
            max_clients=max_clients,
            max_rounds=max_rounds,
            merge_epochs=merge_epochs,
            calculation_timeout=calculation_timeout,
            schedule_timeout=schedule_timeout,
            log_rounds=log_rounds,
        )
        if not 0 < float(clipping_range) < 1e6:
            raise ConfigError(f"clipping_range must be in (0, 1e6), got {clipping_range!r}")
        if not 1 <= float(max_weight) <= 1e9:
            raise ConfigError(f"max_weight must be in [1, 1e9], got {max_weight!r}")
        self.clipping_range = float(clipping_range)
        self.max_weight = float(max_weight)
