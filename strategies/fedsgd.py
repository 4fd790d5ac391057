"""FedSGD: every available node takes exactly one full-batch step per round."""

from __future__ import annotations

from logging import INFO

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from .aggregation import DEFAULT_MAX_NUM_EXAMPLES
from .errors import StrategyError
from .exchange import DEFAULT_POLL_INTERVAL, exchange
from .fedavg_limits import FedAvgWithClientLimits
from .protocol import CONFIG, FULL_BATCH

#: Message type of the query that asks a node whether its training loader is full-batch.
FULL_BATCH_QUERY = FULL_BATCH


class FullBatchRefused(StrategyError):
    """A node's training loader is not full-batch."""


class FullBatchCheck:
    """Admits nodes to a round only once they answered that their loader is full-batch.

    Before a node's first TRAIN message it gets a ``query.full_batch`` message; the node
    answers a ConfigRecord ``full_batch`` with ``ok`` (bool), ``batch-size``,
    ``dataset-size`` and ``reason``. A node whose loader is not full-batch stops the run
    with ``FullBatchRefused`` before it trains, the error naming both numbers. Use it as
    ``RoundDriver``'s ``admit_nodes`` with any strategy.

    Parameters
    ----------
    timeout : float
        Seconds to wait for the answers (``schedule_timeout``).
    poll_interval : float (default: 0.005)
        Seconds between pulls.
    """

    def __init__(self, timeout: float, poll_interval: float = DEFAULT_POLL_INTERVAL) -> None:
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.checked: set[int] = set()

    def __call__(self, grid: Grid, nodes: list[int]) -> None:
        """Ask the nodes not checked yet; raise ``FullBatchRefused`` if one refuses."""
        todo = [n for n in nodes if n not in self.checked]
        if not todo:
            return
        messages = [
            Message(RecordDict({CONFIG: ConfigRecord()}), node, FULL_BATCH_QUERY, ttl=self.timeout)
            for node in todo
        ]
        res = exchange(grid, messages, self.timeout, self.poll_interval)
        if res.missing:
            raise FullBatchRefused(
                f"nodes {res.missing} did not answer the full-batch check within "
                f"{self.timeout:g}s (schedule_timeout)"
            )
        for node, reply in sorted(res.replies.items()):
            if reply.has_error():
                raise FullBatchRefused(f"node {node} could not check its training loader: {reply.error.reason}")
            answer = reply.content.config_records.get("full_batch", ConfigRecord())
            if not answer.get("ok", False):
                raise FullBatchRefused(f"node {node} refused: {answer.get('reason', 'no reason given')}")
            log(INFO, "Node %s: full-batch loader (batch_size %s = %s samples)",
                node, answer.get("batch-size"), answer.get("dataset-size"))
            self.checked.add(node)


class FedSGD(FedAvgWithClientLimits):
    """Federated SGD: FedAvg over every available node (at least ``min_clients``), each
    checked by ``FullBatchCheck`` before its first round.

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
    max_num_examples : float (default: DEFAULT_MAX_NUM_EXAMPLES)
        Largest sample count one reply may claim.
    max_round_retries : int (default: 3)
        Retries of a round that got too few valid results.
    poll_interval : float (default: 0.005)
        Seconds between pulls while waiting for replies.
    """

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        min_clients: int = 1,
        schedule_timeout: float = 30.0,
        calculation_timeout: float = 300.0,
        weighted: bool = True,
        max_num_examples: float = DEFAULT_MAX_NUM_EXAMPLES,
        max_round_retries: int = 3,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        super().__init__(
            min_clients=min_clients,
            max_clients=None,
            schedule_timeout=schedule_timeout,
            calculation_timeout=calculation_timeout,
            weighted=weighted,
            max_num_examples=max_num_examples,
            max_round_retries=max_round_retries,
            poll_interval=poll_interval,
        )
        self.full_batch = FullBatchCheck(schedule_timeout, poll_interval)

    def admit_nodes(self, grid: Grid, nodes: list[int]) -> None:
        """Every node answers the full-batch check before its first round."""
        self.full_batch(grid, nodes)
