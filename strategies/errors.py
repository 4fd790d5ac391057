"""Errors raised by the strategies (Flower-level; adapters translate them for users)."""


class StrategyError(RuntimeError):
    """A strategy cannot continue the run."""


class NodesUnavailable(StrategyError):
    """Fewer nodes than required connected within the allowed time."""


class RoundFailed(StrategyError):
    """A round did not get enough valid results, even after its retries."""


class ExchangeTimeout(StrategyError):
    """A node did not answer within the allowed time."""


class StrategyConfigError(StrategyError, ValueError):
    """A strategy or its driver settings cannot work as configured (a usage error)."""
