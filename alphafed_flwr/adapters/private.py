"""Server side of DPFedAvgScheduler and SecureFedAvgScheduler: their strategies and the
per-round privacy report.

Their families (``alphafed_flwr.families``) name ``dp_setup`` and ``secagg_setup`` as the
strategy setup that ``HorizontalServer`` calls; it calls ``PrivacyReport`` after every round.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from alphafed_flwr.api.dp_fed_avg import DPFedAvgScheduler
from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.api.fed_avg import FedAvgScheduler
from alphafed_flwr.api.metrics import append_csv_row, csv_file
from alphafed_flwr.api.secure_fed_avg import SecureFedAvgScheduler
from alphafed_flwr.strategies import DriverConfig
from alphafed_flwr.strategies.privacy import DELTA_KEY, EPSILON_KEY, DPSettings, PrivateFedAvg
from alphafed_flwr.strategies.secagg import SecAggPlusFedAvg, SecAggSettings

#: The metrics group (``<out>/metrics/privacy.csv``) of a DP run.
PRIVACY_METRICS = "privacy"


@dataclass(frozen=True)
class StrategySetup:
    """A scheduler family's strategy, the driver settings it needs, its node admission."""

    strategy: Any
    config: DriverConfig
    admit: Any = None


def dp_setup(scheduler: DPFedAvgScheduler, settings: Any, config: DriverConfig) -> StrategySetup:
    """DPFedAvgScheduler's strategy: Flower's server-side fixed clipping over FedAvg with equal
    weights, q as the sampled fraction, every sampled client's update required.

    Parameters
    ----------
    scheduler : DPFedAvgScheduler
        The task (z, S, delta, q, involve_aggregator).
    settings : ServerSettings
        The run's settings (``strategy``, ``target_epsilon``).
    config : DriverConfig
        The driver settings from the scheduler.
    """
    _only_fedavg(scheduler, settings.strategy, "central DP")
    dp = PrivateFedAvg(DPSettings(scheduler.z, scheduler.S, scheduler.delta, settings.target_epsilon,
                                  server_trains=scheduler.involve_aggregator))
    return StrategySetup(dp, replace(config, weighted=False, fraction=scheduler.q), dp.admit)


def secagg_setup(scheduler: SecureFedAvgScheduler, settings: Any, config: DriverConfig) -> StrategySetup:
    """SecureFedAvgScheduler's strategy: SecAgg+ with threshold t, its stages bounded by
    ``calculation_timeout`` (parameters as for :func:`dp_setup`)."""
    _only_fedavg(scheduler, settings.strategy, "SecAgg+")
    refuse_target_epsilon(settings.target_epsilon)
    secure = SecAggPlusFedAvg(SecAggSettings(
        scheduler.t, scheduler.clipping_range, scheduler.max_weight, float(scheduler.calculation_timeout)
    ))
    return StrategySetup(secure, config)


def refuse_target_epsilon(target_epsilon: float | None) -> None:
    """A privacy budget is for DP tasks only."""
    if target_epsilon is not None:
        raise ConfigError("--target-epsilon applies to DPFedAvgScheduler tasks only")


def _only_fedavg(scheduler: FedAvgScheduler, strategy_name: str, protocol: str) -> None:
    if strategy_name != "fedavg":
        raise ConfigError(
            f"{type(scheduler).__name__} aggregates with its own protocol (FedAvg under {protocol}); "
            f"--strategy {strategy_name} cannot be combined with it: drop --strategy"
        )


class PrivacyReport:
    """After every DP round: (epsilon, delta) to the metrics CSV, TensorBoard, summary.json.

    Parameters
    ----------
    strategy : Any
        The run's strategy (reports only for ``PrivateFedAvg``).
    out : Path
        The run's output folder.
    """

    def __init__(self, strategy: Any, out: Path) -> None:
        self.dp = strategy if isinstance(strategy, PrivateFedAvg) else None
        self.path = csv_file(Path(out) / "metrics", PRIVACY_METRICS)

    def round_end(self, server_round: int, scheduler: FedAvgScheduler, summary: dict[str, Any]) -> str:
        """Record the privacy spent after ``server_round``; return the progress-line suffix."""
        if self.dp is None:
            return ""
        epsilon, delta = self.dp.privacy_spent()
        row = {"round": server_round, EPSILON_KEY: epsilon, DELTA_KEY: delta}
        append_csv_row(self.path, list(row), row)
        scheduler.tb_writer.add_scalar("privacy/epsilon", epsilon, server_round)
        summary["privacy"] = {"epsilon": epsilon, "delta": delta}
        return f", privacy spent epsilon={epsilon:.4g} at delta={delta:g}"

    def state(self) -> dict[str, Any]:
        """Checkpoint metadata: the accountant's ledger."""
        return {} if self.dp is None else {"accountant": self.dp.accountant_state()}

    def restore(self, meta: dict[str, Any]) -> None:
        """Restore the ledger of a checkpoint; a DP run without one cannot resume."""
        if self.dp is None:
            return
        if "accountant" not in meta:
            raise ConfigError(
                "the checkpoint holds no privacy ledger (it was not made by a DP run): resuming "
                "would under-report epsilon; use --fresh"
            )
        state = dict(meta["accountant"])
        # the budget is this run's policy, not part of the ledger: a resumed run may change it
        state["config"] = {**state.get("config", {}), "max_epsilon": self.dp.settings.target_epsilon}
        try:
            self.dp.load_accountant_state(state)
        except ValueError as exc:
            raise ConfigError(
                f"the checkpoint's privacy ledger does not match this run's DP settings ({exc}): "
                "use the same z, delta and --target-epsilon, or --fresh"
            ) from exc
