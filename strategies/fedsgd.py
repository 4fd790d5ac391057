"""FedSGD: every available node takes exactly one full-batch step per round."""

from __future__ import annotations

from logging import INFO

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from .errors import StrategyError
from .exchange import DEFAULT_POLL_INTERVAL, exchange, wait_for_nodes
from .fedavg_limits import FedAvgWithClientLimits

#: Message type of the query that asks a node whether its training loader is full-batch.
FULL_BATCH_QUERY = "query.full_batch"


class FullBatchRefused(StrategyError):
    """A node's training loader is not full-batch."""


class FedSGD(FedAvgWithClientLimits):
    """Federated SGD on Flower's Message API.

    Every available node (at least ``min_clients``) takes part in every round. Before a
    node's first TRAIN message, the strategy sends it a ``query.full_batch`` message; the
    node answers a ConfigRecord with ``ok`` (bool), ``batch-size``, ``dataset-size`` and
    ``reason``. A node whose loader is not full-batch stops the run with
    ``FullBatchRefused`` before it trains, the error naming both numbers.

    Parameters
    ----------
    min_clients : int (default: 1)
        Fewest nodes per round and fewest valid results that make a round.
    schedule_timeout : float (default: 30)
        Seconds to wait for nodes to connect and to answer the full-batch query.
    calculation_timeout : float (default: 300)
        Seconds to wait for the replies of one round.
    weighted : bool (default: True)
        Weight each update by its ``num-examples``.
    max_round_retries : int (default: 3)
        Retries of a round that got too few valid results.
    poll_interval : float (default: 0.005)
        Seconds between pulls while waiting for replies.
    seed : int | None (default: None)
        Unused (every node takes part); accepted for symmetry.
    """

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        min_clients: int = 1,
        schedule_timeout: float = 30.0,
        calculation_timeout: float = 300.0,
        weighted: bool = True,
        max_round_retries: int = 3,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            min_clients=min_clients,
            max_clients=None,
            schedule_timeout=schedule_timeout,
            calculation_timeout=calculation_timeout,
            weighted=weighted,
            max_round_retries=max_round_retries,
            poll_interval=poll_interval,
            seed=seed,
        )
        self._checked: set[int] = set()

    def prepare(self, grid: Grid) -> None:
        """Check every connected node's loader before the first round."""
        self.check_nodes(grid, wait_for_nodes(grid, self.min_clients, self.schedule_timeout))

    def sample(self, grid: Grid) -> list[int]:
        """Every available node; nodes that joined late are checked first."""
        nodes = super().sample(grid)
        self.check_nodes(grid, nodes)
        return nodes

    def check_nodes(self, grid: Grid, nodes: list[int]) -> None:
        """Ask unchecked nodes whether their training loader is full-batch."""
        todo = [n for n in nodes if n not in self._checked]
        if not todo:
            return
        messages = [
            Message(RecordDict({"config": ConfigRecord()}), node, FULL_BATCH_QUERY, ttl=self.schedule_timeout)
            for node in todo
        ]
        res = exchange(grid, messages, self.schedule_timeout, self.poll_interval)
        if res.missing:
            raise FullBatchRefused(
                f"nodes {res.missing} did not answer the full-batch check within "
                f"{self.schedule_timeout:g}s (schedule_timeout)"
            )
        for node, reply in sorted(res.replies.items()):
            if reply.has_error():
                raise FullBatchRefused(f"node {node} could not check its training loader: {reply.error.reason}")
            answer = reply.content.config_records.get("full_batch", ConfigRecord())
            if not answer.get("ok", False):
                raise FullBatchRefused(f"node {node} refused: {answer.get('reason', 'no reason given')}")
            log(
                INFO,
                "Node %s: full-batch loader (batch_size %s = %s samples)",
                node,
                answer.get("batch-size"),
                answer.get("dataset-size"),
            )
            self._checked.add(node)
