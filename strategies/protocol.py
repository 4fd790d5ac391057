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

Payload keys
------------
The vertical messages' payloads (hello, the PSI's split check, the plain and the secure
exchange), grouped by the message and direction that carries them.
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


# ----- payloads of the vertical exchange ----------------------------------------------
# A vertical message's content is one payload (``payload.encode``): a flat mapping from
# these keys to scalars, lists, arrays or bytes. The private set intersection's own keys
# belong to ``alphafed_flwr.psi``.

# query.hello: the host's greeting ...
#: The run's salt of keyed digests (batch IDs, ID sets, splits).
SALT = "salt"
#: The task id.
TASK = "task"
# ... and the collaborator's answer.
#: The answering party's role; a collaborator says ``COLLABORATOR``.
ROLE = "role"
COLLABORATOR = "collaborator"
#: The collaborator's ``feature_key``: its name in the host's features and in logs.
FEATURE_KEY = "feature-key"
#: Rounds the collaborator holds checkpoints of (resume).
CHECKPOINT_ROUNDS = "checkpoint-rounds"
#: Keyed digest of the collaborator's saved intersection ("" if none; resume).
INTERSECTION_DIGEST = "intersection-digest"

# query.psi: the collaborator's last PSI reply adds its train/test split.
#: Keyed digest of the collaborator's (train IDs, test IDs).
SPLIT_DIGEST = "split-digest"
TRAIN_SIZE = "train-size"
TEST_SIZE = "test-size"

# train.exchange and train.secure requests (host to collaborator).
#: The round the request belongs to (every request).
ROUND = "round"
#: The round's first request: record the round's inputs, reply ``BATCHES``.
BEGIN = "begin"
#: Restore the checkpoint of this round first (a resumed run's first request).
RESTORE = "restore"
#: Zero-based training batches whose features to send.
SEND = "send"
#: Zero-based training batches whose gradients ``GRADS`` carries (plain exchange).
APPLY = "apply"
#: The gradients of the ``APPLY`` batches, in order (plain exchange; see ``codecs``).
GRADS = "grads"
#: The codec the collaborator's features must use (absent: float32; see ``codecs``).
FEATURE_CODEC = "feature-codec"
#: The round's last request: checkpoint the round.
FINISH = "finish"
#: Send the test features.
TEST = "test"

# train.exchange and train.secure replies (collaborator to host).
#: The collaborator's training batch count (reply to ``BEGIN``).
BATCHES = "batches"
#: The features of the ``SEND`` batches, and their sample-ID digests ("" without IDs).
FEATURES = "features"
DIGESTS = "digests"
#: Every test batch's features and sample-ID digests (reply to ``TEST``).
TEST_FEATURES = "test-features"
TEST_DIGESTS = "test-digests"
#: Seconds in the collaborator's handler, and in its model and generators (statistics).
TIME_HANDLER = "time-handler"
TIME_MODEL = "time-model"

# train.secure only (see ``secure_split`` and ``alphafed_flwr.secure_layer``).
#: Round start: the projection's learning rate, its (in, out) dims, the CKKS parameters.
LR = "lr"
DIMS = "dims"
CKKS = "ckks"
#: Reply to the round start: the collaborator's public CKKS context (bytes).
CONTEXT = "context"
#: Encrypted features of the ``SEND`` batches (flat ciphertexts), the ciphertexts per
#: batch, and each batch's size; ``DIGESTS`` as in the plain exchange.
ALPHA = "alpha"
ALPHA_COUNTS = "alpha-counts"
SIZES = "sizes"
#: The host's forward ciphertexts of training batch ``FORWARD_BATCH``.
FORWARD = "forward"
FORWARD_BATCH = "forward-batch"
#: Reply to a forward: the masked projection part and the encrypted share ``[E]``.
Z = "z"
SHARE = "share"
#: The gradient ciphertexts (weight, features) of training batch ``GRAD_BATCH``.
GRAD_BATCH = "grad-batch"
WGRAD = "wgrad"
FGRAD = "fgrad"
#: The test's counterparts of ``ALPHA``, ``ALPHA_COUNTS``, ``SIZES`` (reply to ``TEST``) ...
TEST_ALPHA = "test-alpha"
TEST_ALPHA_COUNTS = "test-alpha-counts"
TEST_SIZES = "test-sizes"
#: ... of ``FORWARD``/``FORWARD_BATCH`` (request) and of ``Z`` (reply).
TEST_FORWARD = "test-forward"
TEST_BATCH = "test-batch"
TEST_Z = "test-z"


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
