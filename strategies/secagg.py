"""Secure aggregation for FedAvg on Flower's SecAgg+ (``SecAggPlusWorkflow``), bridged.

Flower's workflow is written for the legacy API: it takes a ``LegacyContext`` holding a
legacy ``flwr.server.strategy.Strategy`` and the global parameters, runs four stages of
messages (setup, share keys, collect masked vectors, unmask) and, on success, hands the
unmasked weighted mean to the legacy strategy's ``aggregate_fit``. ``SecAggPlusFedAvg``
runs one such workflow per round attempt on the nodes ``RoundDriver`` sampled
(``train_exchange``), through a grid view whose every wait is bounded by
``calculation_timeout``, and:

- detects a halted workflow (too few nodes or shares at any stage: it only logs
  "halted") as a failed attempt, which the driver retries from the unchanged state;
- sends the global arrays' key order with the fit instructions; clients
  (``adapters.secagg_client``) reply with their *update* (new state minus global state) in
  float64, weighted by min(n_k, max_weight) / max_weight;
- quantizes into the largest range the 2**32 modulus allows for the sampled count (2**29
  for up to 3 nodes; Flower's default is 2**22), so the sum cannot wrap;
- adds the unmasked mean update to the global arrays; the driver casts the result to the
  global dtypes (integer buffers rounded).

The server sees the masked vectors and the sum only. The sample counts (capped at
``max_weight``) travel in clear in the fit results, as in Flower.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import Code, FitIns, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig, SimpleClientManager
from flwr.server import strategy as legacy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy
from flwr.supercore import log

from alphafed_flwr import compat

from .errors import StrategyConfigError
from .protocol import ARRAYS, SERVER_ROUND

#: FitIns config keys the client bridge reads (the key order travels as a JSON list).
KEYS = "alphafed.keys"
ROUND = SERVER_ROUND
MODULUS = 2**32


@dataclass(frozen=True)
class SecAggSettings:
    """SecAgg+ parameters.

    Parameters
    ----------
    threshold : int
        t: shares needed to rebuild a node's secrets; fewest nodes that must finish.
    clipping_range : float
        Weighted updates are quantized within +-clipping_range.
    max_weight : float
        Sample counts are capped at this value (weights n_k / max_weight <= 1).
    timeout : float
        Seconds each of the four stages may wait for replies.
    """

    threshold: int
    clipping_range: float = 8.0
    max_weight: float = 100_000.0
    timeout: float = 300.0

    def __post_init__(self) -> None:
        if self.threshold < 2:
            raise StrategyConfigError(f"the SecAgg+ threshold t must be >= 2, got {self.threshold}")


def quantization_range(num_nodes: int) -> int:
    """Largest power of two T with num_nodes * T < 2**32 (capped at 2**29: int32 headroom)."""
    bits = max(num_nodes, 1).bit_length() + 1
    return min(2**29, MODULUS >> bits)


class _NodeProxy(compat.privacy_pieces(checked=False).ClientProxy):  # type: ignore[misc]
    """The legacy stand-in for one sampled node (the workflow reads only ``node_id``)."""

    def __init__(self, node_id: int) -> None:
        super().__init__(str(node_id))
        self.node_id = node_id

    def get_properties(self, ins: Any, timeout: Any, group_id: Any) -> Any:  # noqa: D102
        raise NotImplementedError

    def get_parameters(self, ins: Any, timeout: Any, group_id: Any) -> Any:  # noqa: D102
        raise NotImplementedError

    def fit(self, ins: Any, timeout: Any, group_id: Any) -> Any:  # noqa: D102
        raise NotImplementedError

    def evaluate(self, ins: Any, timeout: Any, group_id: Any) -> Any:  # noqa: D102
        raise NotImplementedError

    def reconnect(self, ins: Any, timeout: Any, group_id: Any) -> Any:  # noqa: D102
        raise NotImplementedError


class _Bridge(legacy.Strategy):
    """The legacy strategy the workflow drives: fit instructions out, the unmasked mean in."""

    def __init__(self, nodes: list[int], config: dict[str, Any]) -> None:
        self.nodes = nodes
        self.config = config
        self.mean_update: list[np.ndarray] | None = None
        self.results = 0

    def initialize_parameters(self, client_manager: Any) -> Parameters | None:  # noqa: D102
        return None

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list:
        """Every sampled node trains from ``parameters``."""
        del server_round, client_manager
        return [(_NodeProxy(n), FitIns(parameters, dict(self.config))) for n in self.nodes]

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple:
        """Keep the unmasked weighted mean (every result carries it)."""
        del server_round
        del failures
        self.results = len(results)
        if results:
            self.mean_update = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: Any) -> list:  # noqa: D102
        return []

    def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple:  # noqa: D102
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> None:  # noqa: D102
        return None


STAGES = ("setup", "share keys", "collect masked vectors", "unmask")


class _StageLog(Grid):
    """The grid view the workflow uses, recording what each of its stages got back."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.stages: list[tuple[int, int, list[str]]] = []  # (sent, answered, error reasons)

    def set_run(self, run: Any) -> None:  # noqa: D102
        self._grid.set_run(run)

    @property
    def run(self) -> Any:  # noqa: D102
        return self._grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # noqa: D102
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Delegated; records the stage's answers."""
        messages = list(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        errors = [r.error.reason for r in replies if r.has_error()]
        self.stages.append((len(messages), len(replies) - len(errors), errors))
        return replies

    def halted(self) -> str:
        """Which stage stopped the protocol, and why."""
        if not self.stages:
            return "before the first stage"
        sent, answered, errors = self.stages[-1]
        name = STAGES[min(len(self.stages), len(STAGES)) - 1]
        why = f"; errors: {'; '.join(sorted(set(e[:200] for e in errors)))}" if errors else ""
        return f"at stage '{name}': {answered} of {sent} nodes answered in time{why}"


class SecAggPlusFedAvg(Strategy):
    """FedAvg whose training rounds run Flower's SecAgg+ protocol (``train_exchange``).

    Parameters
    ----------
    settings : SecAggSettings
        Threshold, quantization and timeout.
    """

    def __init__(self, settings: SecAggSettings) -> None:
        compat.check_flower("privacy")
        self.settings = settings
        self.plain = FedAvg(min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1)
        self.arrayrecord_key = ARRAYS

    def train_exchange(
        self, grid: Grid, nodes: list[int], server_round: int, arrays: ArrayRecord, config: ConfigRecord
    ) -> tuple[ArrayRecord | None, MetricRecord | None, str]:
        """One SecAgg+ round on ``nodes``: (new global arrays, metrics, "") or (None, None, why)."""
        s = self.settings
        if len(nodes) < s.threshold:
            return None, None, f"{len(nodes)} nodes sampled, fewer than the SecAgg+ threshold t={s.threshold}"
        if 2 * s.threshold <= len(nodes):
            log(WARNING, "SecAgg+: t=%d is at most half of the %d sampled nodes: a server that lies "
                "about dropouts could unmask a node (semi-honest server assumed)", s.threshold, len(nodes))
        keys = list(arrays.keys())
        global_nd = [np.asarray(arrays[k].numpy()) for k in keys]
        bridge = _Bridge(nodes, {**dict(config), KEYS: json.dumps(keys), ROUND: server_round})
        context = self._context(server_round, global_nd, bridge)
        workflow = SecAggPlusWorkflow(
            num_shares=1.0,  # every sampled node holds a share of every other's secrets
            reconstruction_threshold=s.threshold,
            max_weight=s.max_weight,
            clipping_range=s.clipping_range,
            quantization_range=quantization_range(len(nodes)),
            modulus_range=MODULUS,
            timeout=s.timeout,
        )
        stages = _StageLog(grid)
        workflow(stages, context)
        if bridge.mean_update is None:
            return None, None, (
                f"SecAgg+ halted {stages.halted()} (needs t={s.threshold} of the {len(nodes)} sampled "
                f"nodes within {s.timeout:g}s per stage): nothing unmasked"
            )
        if len(bridge.mean_update) != len(keys):
            return None, None, "SecAgg+ returned another number of arrays than the global state"
        new = ArrayRecord()
        for key, old, delta in zip(keys, global_nd, bridge.mean_update, strict=True):
            new[key] = Array(np.asarray(old.astype(np.float64) + delta.reshape(old.shape), order="C"))
        dropouts = len(nodes) - bridge.results  # (the workflow lists a stage-2 failure twice)
        log(INFO, "SecAgg+: the sum of %d updates unmasked (%d nodes dropped out)", bridge.results, dropouts)
        return new, MetricRecord({"num-results": bridge.results, "secagg-dropouts": dropouts}), ""

    @staticmethod
    def _context(server_round: int, global_nd: list[np.ndarray], bridge: _Bridge) -> LegacyContext:
        pieces = compat.privacy_pieces()
        base = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
        context = LegacyContext(base, config=ServerConfig(num_rounds=server_round), strategy=bridge,
                                client_manager=SimpleClientManager())
        params = ndarrays_to_parameters([a.astype(np.float64) if a.dtype.kind != "f" else a for a in global_nd])
        context.state.array_records[pieces.MAIN_PARAMS_RECORD] = pieces.recorddict_compat.parameters_to_arrayrecord(
            params, keep_input=True
        )
        context.state.config_records[pieces.MAIN_CONFIGS_RECORD] = ConfigRecord({pieces.CURRENT_ROUND: server_round})
        return context

    # ----- the Message-API hooks: training runs through train_exchange -----------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Not used: ``RoundDriver`` runs SecAgg+ rounds through ``train_exchange``."""
        raise NotImplementedError("SecAgg+ rounds run through SecAggPlusFedAvg.train_exchange")

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple:
        """Not used (see ``configure_train``)."""
        raise NotImplementedError("SecAgg+ rounds run through SecAggPlusFedAvg.train_exchange")

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flower's FedAvg (clients test the global model in the clear)."""
        return self.plain.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Flower's FedAvg."""
        return self.plain.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        """Log the SecAgg+ settings."""
        s = self.settings
        log(INFO, "\t├──> SecAgg+: t=%d, clipping range +-%g, max_weight %g, stage timeout %gs",
            s.threshold, s.clipping_range, s.max_weight, s.timeout)


def fit_reply(deltas: list[np.ndarray], num_examples: int) -> RecordDict:
    """A client's FitRes content (what ``secaggplus_mod`` masks)."""
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(deltas), num_examples, {})
    return compat.privacy_pieces().recorddict_compat.fitres_to_recorddict(fitres, keep_input=True)


def fit_instructions(content: RecordDict) -> FitIns:
    """The FitIns a client received (global parameters, config with the key order)."""
    return compat.privacy_pieces().recorddict_compat.recorddict_to_fitins(content, keep_input=True)
