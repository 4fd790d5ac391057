"""The wire protocol: every message type and record key that servers and clients share.

Strategies (server side) and adapters (client side) import these names instead of
repeating string literals, so one edit here changes both ends. The names of Flower's own
conventions (``train``, ``evaluate``, the ``arrays``/``config``/``metrics`` records and the
``num-examples`` weight) are Flower's; ours are the ``query.*`` and ``train.*`` types.

Message types
-------------
``train`` / ``evaluate``
    Horizontal training and client evaluation (Flower's ``MessageType``).
``query.full_batch``
    FedSGD: is this node's training loader full-batch?
``query.hello`` / ``query.psi`` / ``train.exchange``
    Split learning: greet a collaborator, run the private set intersection, exchange
    features and gradients.
``train.secure``
    Secure HeteroNN: the CKKS-encrypted exchange.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.app import MessageType
from flwr.clientapp import ClientApp

# ----- message types ------------------------------------------------------------------
TRAIN: str = MessageType.TRAIN
EVALUATE: str = MessageType.EVALUATE
FULL_BATCH = "query.full_batch"
HELLO = "query.hello"
PSI = "query.psi"
EXCHANGE = "train.exchange"
SECURE = "train.secure"

#: Message types a horizontal (FedAvg/FedSGD/DP/SecAgg+) node serves.
HORIZONTAL_TYPES: tuple[str, ...] = (TRAIN, EVALUATE, FULL_BATCH)
#: Message types a vertical collaborator (plain or secure HeteroNN) serves.
COLLABORATOR_TYPES: tuple[str, ...] = (HELLO, PSI, EXCHANGE, SECURE)

# ----- records of horizontal messages -------------------------------------------------
#: ArrayRecord: the global state (instructions) or the node's state (replies).
ARRAYS = "arrays"
#: ConfigRecord: the round's configuration (e.g. ``proximal-mu``, ``server-round``).
CONFIG = "config"
#: MetricRecord: a reply's metrics, with its weight ``num-examples``.
METRICS = "metrics"
#: ConfigRecord of an evaluate reply: which party tested (key ``party`` too).
PARTY = "party"
#: ConfigRecord of a full-batch answer: ``ok``, ``batch-size``, ``dataset-size``, ``reason``.
FULL_BATCH_RECORD = "full_batch"

# ----- metric and config keys ---------------------------------------------------------
#: A reply's sample count: the weight of its update.
NUM_EXAMPLES = "num-examples"
#: The round an instruction belongs to (Flower's key in the ``config`` record).
SERVER_ROUND = "server-round"
#: Seconds a client spent training (informational).
TRAIN_SECONDS = "train-seconds"
#: The round's proximal term weight under Flower's FedProx strategy. The scheduler API
#: (which never imports Flower) mirrors it as ``api.fed_prox.PROXIMAL_MU_KEY``.
PROXIMAL_MU = "proximal-mu"


def category_and_action(message_type: str) -> tuple[str, str]:
    """Split ``"train.exchange"`` into ``("train", "exchange")``; ``"train"`` gives ``("train", "default")``."""
    category, _, action = message_type.partition(".")
    return category, action or "default"


def route(app: ClientApp, message_type: str) -> Callable[[Any], Any]:
    """``app``'s decorator that registers a handler for ``message_type``.

    Parameters
    ----------
    app : ClientApp
        The ClientApp to register on.
    message_type : str
        One of this module's message types, e.g. ``EXCHANGE``.
    """
    category, action = category_and_action(message_type)
    return getattr(app, category)(action)  # type: ignore[no-any-return]
