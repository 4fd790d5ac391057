"""Flower Message-API strategies of alphafed-flwr, importable only as ``alphafed_flwr.strategies``.

They speak Flower records only and reach user code through the narrow callbacks that the
adapters pass in (``FederatedHooks``, ``SplitLearningHost``); a plain Flower ServerApp can
use them directly.
"""

if __name__ != "alphafed_flwr.strategies":
    raise ImportError(
        f"this folder is the package alphafed_flwr.strategies; import it under that name, "
        f"not as '{__name__}'"
    )

# pylint: disable=wrong-import-position
from .errors import ExchangeTimeout, NodesUnavailable, RoundFailed, StrategyError  # noqa: E402
from .fedavg_limits import FedAvgWithClientLimits, FederatedHooks, RoundOutcome  # noqa: E402
from .fedsgd import FULL_BATCH_QUERY, FedSGD, FullBatchRefused  # noqa: E402

__all__ = [
    "FULL_BATCH_QUERY",
    "ExchangeTimeout",
    "FedAvgWithClientLimits",
    "FedSGD",
    "FederatedHooks",
    "FullBatchRefused",
    "NodesUnavailable",
    "RoundFailed",
    "RoundOutcome",
    "StrategyError",
]
