"""Flower Message-API strategies of alphafed-flwr, importable only as ``alphafed_flwr.strategies``.

They speak Flower records only and reach user code through the narrow callbacks that the
adapters pass in (``FederatedHooks``, ``SplitLearningHost``); a plain Flower ServerApp can
use them directly. ``RoundDriver`` runs any Flower strategy with AlphaFed's round semantics.
"""

if __name__ != "alphafed_flwr.strategies":
    raise ImportError(
        f"this folder is the package alphafed_flwr.strategies; import it under that name, "
        f"not as '{__name__}'"
    )

# pylint: disable=wrong-import-position
from .driver import (  # noqa: E402
    DriverConfig,
    FederatedHooks,
    RoundDriver,
    RoundOutcome,
    SampledGrid,
)
from .errors import (  # noqa: E402
    ExchangeTimeout,
    NodesUnavailable,
    RoundFailed,
    StrategyConfigError,
    StrategyError,
)
from .fedavg_limits import FedAvgWithClientLimits  # noqa: E402
from .fedsgd import FULL_BATCH_QUERY, FedSGD, FullBatchCheck, FullBatchRefused  # noqa: E402

__all__ = [
    "FULL_BATCH_QUERY",
    "DriverConfig",
    "ExchangeTimeout",
    "FedAvgWithClientLimits",
    "FedSGD",
    "FederatedHooks",
    "FullBatchCheck",
    "FullBatchRefused",
    "NodesUnavailable",
    "RoundDriver",
    "RoundFailed",
    "RoundOutcome",
    "SampledGrid",
    "StrategyConfigError",
    "StrategyError",
]
