"""Client side of SecAgg+ rounds: Flower's ``secaggplus_mod`` around the scheduler's training.

A ``SecureFedAvgScheduler`` node answers training messages only through SecAgg+ (a plain
training message would make it reveal its update, so it is refused). The mod runs the
protocol's stages; at the masked-vector stage it calls ``secure_train``'s inner function,
which turns the fit instructions into the usual training message, trains, and returns the
update (new state minus global state, float64) with the sample count capped at
``max_weight``; the mod quantizes, masks and sends it.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import parameters_to_ndarrays

from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.api.secure_fed_avg import SecureFedAvgScheduler
from alphafed_flwr.strategies.protocol import ARRAYS, CONFIG, NUM_EXAMPLES, SERVER_ROUND
from alphafed_flwr.strategies.secagg import KEYS, ROUND, fit_instructions, fit_reply

#: Config record that marks a SecAgg+ message (Flower's ``RECORD_KEY_CONFIGS``).
SECAGG_RECORD = "secaggplus_configs"


def is_secagg(message: Message) -> bool:
    """Whether ``message`` is a stage of Flower's SecAgg+ protocol."""
    return SECAGG_RECORD in message.content.config_records


def secure_train(
    message: Message,
    context: Context,
    scheduler: Callable[[], SecureFedAvgScheduler],
    train: Callable[[Message], Message],
) -> Message:
    """Run one SecAgg+ stage; the masked-vector stage trains through ``train``.

    Parameters
    ----------
    message, context : Message, Context
        The incoming stage message and the node's context (the mod keeps its state there).
    scheduler : Callable[[], SecureFedAvgScheduler]
        The node's scheduler (built only at the training stage).
    train : Callable[[Message], Message]
        The node's ordinary training handler (``HorizontalClient.train``).
    """

    def inner(msg: Message, ctxt: Context) -> Message:
        del ctxt
        sched = scheduler()
        fitins = fit_instructions(msg.content)
        keys = json.loads(str(fitins.config[KEYS]))
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError("SecAgg+ fit instructions: the key order is not a list of names")
        global_nd = parameters_to_ndarrays(fitins.parameters)
        if len(keys) != len(global_nd):
            raise ValueError("SecAgg+ fit instructions: key list and parameters differ in length")
        config = {k: v for k, v in fitins.config.items() if k != KEYS}
        msg.content = RecordDict({
            ARRAYS: ArrayRecord({k: Array(np.ascontiguousarray(a)) for k, a in zip(keys, global_nd, strict=True)}),
            CONFIG: ConfigRecord({**config, SERVER_ROUND: int(fitins.config[ROUND])}),  # type: ignore[arg-type]
        })
        reply = train(msg)
        local = reply.content.array_records[ARRAYS]
        num = int(next(iter(reply.content.metric_records.values()))[NUM_EXAMPLES])  # type: ignore[arg-type]
        num = max(1, min(num, int(sched.max_weight)))
        deltas = [np.asarray(local[k].numpy(), dtype=np.float64) - g.astype(np.float64)
                  for k, g in zip(keys, global_nd, strict=True)]
        largest = max((float(np.max(np.abs(d))) for d in deltas if d.size), default=0.0)
        weighted = largest * num / sched.max_weight
        if not np.isfinite(weighted) or weighted > sched.clipping_range:
            raise ValueError(
                f"this node's weighted update reaches {weighted:.4g}, outside SecAgg+'s quantization "
                f"range +-{sched.clipping_range:g}: not sent (raise clipping_range, or lower the "
                "learning rate)"
            )
        return Message(fit_reply(deltas, num), reply_to=msg)

    return secaggplus_mod(message, context, inner)


def refuse_plain_train(scheduler: object) -> None:
    """A SecureFedAvgScheduler node never answers a plain training message."""
    if isinstance(scheduler, SecureFedAvgScheduler):
        raise ConfigError(
            "this node runs a SecureFedAvgScheduler and answers training only through SecAgg+; "
            "the server sent a plain training message (is it running the same task?)"
        )
