"""``--strategy NAME``: the Flower strategies an AlphaFed task can run under ``RoundDriver``.

Each entry builds a Flower Message-API strategy from user parameters (``--strategy-arg
eta=0.01`` or a ``[strategy-args]`` TOML table). Sampling, node minimums, record keys and
the weight key belong to the driver, so they cannot be set here.
"""

from __future__ import annotations

import inspect
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flwr.serverapp import strategy as flower
from flwr.serverapp.strategy import Strategy

from .errors import StrategyConfigError
from .fedavg_limits import FedAvgWithClientLimits

#: Parameters that the driver sets (sampling, node minimums, record and weight keys).
DRIVER_OWNED = (
    "fraction_train",
    "fraction_evaluate",
    "min_train_nodes",
    "min_evaluate_nodes",
    "min_available_nodes",
    "weighted_by_key",
    "arrayrecord_key",
    "configrecord_key",
    "train_metrics_aggr_fn",
    "evaluate_metrics_aggr_fn",
    "selection_rule",
)
_FLOWER_BASE = {"min_train_nodes": 1, "min_evaluate_nodes": 1, "min_available_nodes": 1}


@dataclass(frozen=True)
class StrategyEntry:
    """One ``--strategy`` choice.

    Parameters
    ----------
    cls : type
        The strategy class.
    when : str
        When to choose it (shown by ``--help`` and in the README).
    refused : str
        Non-empty: why AlphaFed tasks cannot use it (the error message).
    """

    cls: type
    when: str
    refused: str = ""

    def params(self) -> list[str]:
        """The parameters a user may set."""
        names = inspect.signature(self.cls.__init__).parameters
        return [n for n in names if n not in ("self", *DRIVER_OWNED) and n not in _OURS]


_OURS = ("min_clients", "max_clients", "schedule_timeout", "calculation_timeout", "weighted",
         "max_num_examples", "max_round_retries", "poll_interval", "seed")

CATALOG: dict[str, StrategyEntry] = {
    "fedavg": StrategyEntry(FedAvgWithClientLimits, "the default: weighted mean of the updates (AlphaFed's FedAvg)"),
    "fedprox": StrategyEntry(flower.FedProx, "non-IID clients that drift apart; clients add (mu/2)||w - w_global||^2 "
                             "(sends proximal-mu; a FedProxScheduler task applies it)"),
    "fedadam": StrategyEntry(flower.FedAdam, "server-side Adam on the mean update: non-IID data, faster progress per round"),
    "fedyogi": StrategyEntry(flower.FedYogi, "like FedAdam with a more conservative second moment"),
    "fedadagrad": StrategyEntry(flower.FedAdagrad, "server-side Adagrad: sparse or rarely updated parameters"),
    "fedavgm": StrategyEntry(flower.FedAvgM, "server momentum: smooths noisy non-IID rounds"),
    "fedmedian": StrategyEntry(flower.FedMedian, "coordinate-wise median: robust to a minority of bad updates"),
    "fedtrimmedavg": StrategyEntry(flower.FedTrimmedAvg, "trimmed mean (beta cut at each end): robust, smoother than the median"),
    "krum": StrategyEntry(flower.Krum, "Byzantine-robust: keeps the one update closest to the others"),
    "multikrum": StrategyEntry(flower.MultiKrum, "Byzantine-robust: averages the num_nodes_to_select most central updates"),
    "bulyan": StrategyEntry(flower.Bulyan, "strongest Byzantine robustness; needs 4f+3 replies per round"),
    "qfedavg": StrategyEntry(
        flower.QFedAvg,
        "fairness across clients (weights by training loss)",
        refused="QFedAvg weights every client by its training loss (the 'train_loss' metric), which "
        "AlphaFed schedulers do not report: choose another strategy, or run QFedAvg in your own "
        "ServerApp through RoundDriver with ClientApps that report 'train_loss'",
    ),
}


def strategy_names() -> list[str]:
    """The names ``--strategy`` accepts."""
    return list(CATALOG)


def build_strategy(name: str, args: Mapping[str, Any] | None = None) -> Strategy:
    """The strategy ``name`` with the user's parameters ``args``.

    Raises
    ------
    StrategyConfigError
        For an unknown or refused name, an unknown, driver-owned or invalid parameter.
    """
    key = name.strip().lower()
    entry = CATALOG.get(key)
    if entry is None:
        raise StrategyConfigError(f"unknown strategy '{name}'; choose one of {', '.join(CATALOG)}")
    if entry.refused:
        raise StrategyConfigError(f"--strategy {key}: {entry.refused}")
    args = {k.replace("-", "_"): v for k, v in (args or {}).items()}
    owned = sorted(set(args) & set(DRIVER_OWNED + _OURS))
    if owned:
        raise StrategyConfigError(
            f"--strategy {key}: {owned} are set by the round driver (use the task's min_clients/"
            "max_clients, --unweighted, --max-num-examples, --seed), not as strategy arguments"
        )
    unknown = sorted(set(args) - set(entry.params()))
    if unknown:
        raise StrategyConfigError(
            f"--strategy {key} has no parameter {unknown}; it takes {entry.params() or 'none'}"
        )
    base = {} if entry.cls is FedAvgWithClientLimits else dict(_FLOWER_BASE)
    try:
        return entry.cls(**base, **args)
    except (TypeError, ValueError) as exc:
        raise StrategyConfigError(f"--strategy {key} with {dict(args)}: {exc}") from exc


def parse_strategy_args(items: Iterable[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``["eta=0.01", "beta-1=0.9"]`` (or a TOML table) as ``{"eta": 0.01, "beta_1": 0.9}``.

    Values are read as TOML literals (numbers, booleans, quoted strings); anything else is
    kept as a string.
    """
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return {str(k).replace("-", "_"): v for k, v in items.items()}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise StrategyConfigError(f"--strategy-arg expects KEY=VALUE, got '{item}'")
        out[key.strip().replace("-", "_")] = _literal(text.strip())
    return out


def _literal(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text

