"""Central differential privacy for FedAvg: Flower's fixed-clipping wrapper, accounted.

``PrivateFedAvg`` composes Flower's ``DifferentialPrivacyServerSideFixedClipping`` (around
Flower's own ``FedAvg``, as its accountant requires) with Flower's RDP accountant and adds
what ``RoundDriver`` needs to keep the guarantee honest:

- ``admit``: m, the noise's divisor, is set to the number of nodes sampled for the round;
- ``aggregate_train`` refuses a round in which fewer than m valid updates arrived (the
  noise z*S/m would be too small for the mean of fewer), so the driver re-samples; nothing
  was released, so nothing is accounted;
- ``abandon_train``: a configured round that never reaches aggregation drops its pending
  privacy event, so every ``configure_train`` meets exactly one ``aggregate_train``;
- the numpy generator behind Flower's noise is reseeded from the OS before each release,
  so a task that seeds numpy cannot make the noise predictable;
- the accountant's ledger is saved in checkpoints (``accountant_state``) and restored.

Sampling is without amplification credit: the accountant composes one Gaussian mechanism
of noise multiplier z per round, whatever the fraction of clients sampled.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from logging import INFO

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg, Strategy
from flwr.serverapp.strategy.dp_fixed_clipping import DifferentialPrivacyFixedClippingBase
from flwr.supercore import log

from alphafed_flwr import compat

from .errors import StrategyConfigError
from .protocol import ARRAYS

#: Population size given to the accountant. Without amplification it only bounds a
#: round's sample size (Flower checks sample_size <= population_size); it changes no epsilon.
POPULATION = 2**31 - 1

#: Metric keys of the privacy report (metrics CSV, TensorBoard, summary.json).
EPSILON_KEY = "dp-epsilon"
DELTA_KEY = "dp-delta"


@dataclass(frozen=True)
class DPSettings:
    """Parameters of central DP with fixed clipping.

    Parameters
    ----------
    noise_multiplier : float
        z: the noise std is z * clipping_norm / m.
    clipping_norm : float
        S: each update (new state minus global state) is clipped to this L2 norm.
    delta : float
        The delta at which epsilon is reported.
    target_epsilon : float | None
        Budget: the run ends before a round that would exceed it.
    server_trains : bool
        The server adds its own update each round (``involve_aggregator``): the mean and
        its noise are over m + 1 updates.
    """

    noise_multiplier: float
    clipping_norm: float
    delta: float = 1e-5
    target_epsilon: float | None = None
    server_trains: bool = False

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0:
            raise StrategyConfigError(f"the noise multiplier must be > 0, got {self.noise_multiplier}")
        if not self.clipping_norm > 0:
            raise StrategyConfigError(f"the clipping norm must be > 0, got {self.clipping_norm}")
        if not 0 < self.delta < 1:
            raise StrategyConfigError(f"delta must be in (0, 1), got {self.delta}")
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            raise StrategyConfigError(f"--target-epsilon must be > 0, got {self.target_epsilon}")


def new_accountant(settings: DPSettings) -> object:
    """Flower's RDP accountant for ``settings`` (no amplification, add/remove one client)."""
    from flwr.serverapp import PrivacyConfig  # pylint: disable=import-outside-toplevel
    from flwr.supercore.privacy_accounting import (  # pylint: disable=import-outside-toplevel
        NeighboringRelation,
        SamplingMethod,
    )

    config = PrivacyConfig(
        target_delta=settings.delta,
        population_size=POPULATION,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION,
        max_epsilon=settings.target_epsilon,
    )
    try:
        return compat.privacy_pieces().RdpAccountant(config)
    except ImportError as exc:
        raise StrategyConfigError(
            f"{exc} (alphafed-flwr declares it: pip install 'alphafed-flwr[dp]')"
        ) from exc


class PrivateFedAvg(Strategy):
    """FedAvg with central DP (server-side fixed clipping) and privacy accounting.

    Parameters
    ----------
    settings : DPSettings
        Noise multiplier, clipping norm, delta, budget.
    """

    def __init__(self, settings: DPSettings) -> None:
        self.settings = settings
        self.accountant = new_accountant(settings)
        self.dp: DifferentialPrivacyFixedClippingBase = DifferentialPrivacyServerSideFixedClipping(
            FedAvg(min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1),
            settings.noise_multiplier,
            settings.clipping_norm,
            num_sampled_clients=1,
            accountant=self.accountant,  # type: ignore[arg-type]
        )
        self.arrayrecord_key = ARRAYS
        self._pending: set[int] = set()

    # ----- what the driver calls -------------------------------------------------------------
    def admit(self, grid: Grid, nodes: list[int]) -> None:
        """Set m (the noise divisor and expected reply count) to the sampled node count."""
        del grid
        self.dp.num_sampled_clients = len(nodes)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flower's wrapper; raises ``PrivacyBudgetExhausted`` if the round would exceed the budget."""
        self.abandon_train(server_round)
        ints = [k for k, a in arrays.items() if np.dtype(a.dtype).kind not in "f"]
        if ints:
            raise StrategyConfigError(
                f"central DP clips and noises every exchanged array, but {ints} are not floating "
                "point (e.g. BatchNorm's num_batches_tracked): leave them out of state_dict() "
                "(or use GroupNorm)"
            )
        messages = list(self.dp.configure_train(server_round, arrays, config, grid))
        self._pending.add(server_round)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Clip, average with equal weights, add noise z*S/m, account; refuse fewer than m updates."""
        replies = list(replies)
        m = self.dp.num_sampled_clients
        expected = m + int(self.settings.server_trains)
        if len(replies) != expected:
            self.abandon_train(server_round)
            raise ValueError(
                f"central DP: {len(replies)} valid updates, {expected} expected ({m} sampled clients"
                f"{' and the server' if self.settings.server_trains else ''}); the noise is "
                f"calibrated for the mean of {expected}, so releasing the mean of fewer would "
                "weaken the guarantee: round refused, nothing released or accounted"
            )
        self._pending.discard(server_round)
        replies = [self._nonzero(reply) for reply in replies]
        np.random.seed(np.frombuffer(os.urandom(32), dtype=np.uint32))  # Flower's noise source
        self.dp.num_sampled_clients = expected  # the noise std z*S/expected, the reply count
        try:
            return self.dp.aggregate_train(server_round, replies)
        finally:
            self.dp.num_sampled_clients = m

    def _nonzero(self, reply: Message) -> Message:
        """``reply``, its update moved by one float epsilon if it is exactly zero.

        Flower's clipping divides by the update's norm, so an unchanged model (norm 0)
        would raise ZeroDivisionError; the smallest representable step (far below S) keeps
        it a valid, clipped update.
        """
        current = self.dp.current_arrays  # type: ignore[attr-defined]
        arrays = reply.content.array_records[self.arrayrecord_key]
        if any(np.any(arrays[k].numpy() != current[k].numpy()) for k in arrays.keys()):
            return reply
        key = next(iter(arrays.keys()))
        value = np.array(arrays[key].numpy(), copy=True)
        flat = value.reshape(-1)
        flat[0] += np.finfo(value.dtype).eps * max(1.0, abs(float(flat[0])))
        content = RecordDict(dict(reply.content))
        content[self.arrayrecord_key] = ArrayRecord({**{k: arrays[k] for k in arrays.keys()}, key: Array(value)})
        return Message(content, reply_to=Message(RecordDict(), dst_node_id=reply.metadata.src_node_id,
                                                 message_type=reply.metadata.message_type))

    def abandon_train(self, server_round: int) -> None:
        """Drop the pending privacy event of a configured round that released nothing."""
        if server_round in self._pending:
            self._pending.discard(server_round)
            self.dp.aggregate_train(server_round, [])  # pops the event; 0 != m: no release

    def privacy_spent(self) -> tuple[float, float]:
        """(epsilon, delta) spent so far (epsilon 0 before the first release)."""
        spent = self.accountant.get_privacy_spent()  # type: ignore[attr-defined]
        epsilon = float(spent.epsilon) if spent.num_releases else 0.0
        return epsilon, float(spent.delta)

    def accountant_state(self) -> dict:
        """The accountant's ledger (JSON-able), for checkpoints."""
        return self.accountant.state_dict()  # type: ignore[attr-defined,no-any-return]

    def load_accountant_state(self, state: dict) -> None:
        """Restore a ledger saved by ``accountant_state`` (same configuration only)."""
        self.accountant.load_state_dict(state)  # type: ignore[attr-defined]
        eps, delta = self.privacy_spent()
        log(INFO, "Privacy accountant restored: epsilon=%.4g at delta=%g so far", eps, delta)

    # ----- delegated -------------------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flower's FedAvg (evaluation is not part of the DP release)."""
        return self.dp.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Flower's FedAvg."""
        return self.dp.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        """Log the DP settings."""
        s = self.settings
        log(INFO, "\t├──> Central DP (server-side fixed clipping): z=%g, S=%g, delta=%g, budget %s",
            s.noise_multiplier, s.clipping_norm, s.delta,
            "none" if s.target_epsilon is None else f"epsilon <= {s.target_epsilon:g}")
        log(INFO, "\t├──> Accounting: RDP, no subsampling amplification, equal client weights")
