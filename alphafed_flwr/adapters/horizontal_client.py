"""ClientApp for FedAvg/FedSGD schedulers: Flower messages in, scheduler calls out.

- ``train``: load the global state, hand the message's ConfigRecord to the scheduler's
  ``apply_round_config`` (FedProx's ``proximal-mu``), run ``merge_epochs`` x ``train_an_epoch``, reply
  ``state_dict()`` as an ArrayRecord and ``num-examples``. The optimizer state lives in the
  node's ``context.state`` between rounds (unless ``reset_optimizer``).
- ``evaluate``: load the global state, run the user's test on local data, reply its
  numeric results.
- ``query.full_batch``: report whether the training loader is full-batch (FedSGD).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from alphafed_flwr.api.env import RunEnvironment, set_environment
from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.api.fed_avg import FedAvgScheduler, FedSGDScheduler, dataset_size
from alphafed_flwr.api.scheduler import call_user
from alphafed_flwr.strategies.protocol import (
    ARRAYS,
    CONFIG,
    EVALUATE,
    FULL_BATCH,
    FULL_BATCH_RECORD,
    METRICS,
    NUM_EXAMPLES,
    PARTY,
    SERVER_ROUND,
    TRAIN,
    TRAIN_SECONDS,
    route,
)

from .partition import PartitionSpec, partition_indices, partition_loader
from .records import arrays_to_state, restore_optimizer, save_optimizer, state_to_arrays
from .secagg_client import is_secagg, refuse_plain_train, secure_train
from .templates import SchedulerSource, party_scheduler, stable_seed

PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"


@dataclass(frozen=True)
class ClientSettings:
    """What a client needs besides its messages.

    Parameters
    ----------
    task_id : str
        The task id.
    out_dir : str | None
        Output folder (TensorBoard of this client); ``None`` keeps nothing.
    data_dir : str | None
        This client's data folder (``get_dataset_dir``).
    partition : str | None
        ``iid``, ``dirichlet`` or ``sample``: train on partition ``partition-id`` of
        ``num-partitions`` (node config); ``None``: use the whole local dataset.
    alpha : float
        Dirichlet concentration.
    samples : int
        Samples per client for ``sample``.
    seed : int | None
        Seed of partitioning and of local shuffling/dropout (per node and round).
    reset_optimizer : bool
        Build a fresh optimizer every round instead of keeping its state.
    """

    task_id: str = "local-task"
    out_dir: str | None = None
    data_dir: str | None = None
    partition: str | None = None
    alpha: float = 0.5
    samples: int = 32
    seed: int | None = None
    reset_optimizer: bool = False


class HorizontalClient:
    """Handles one message for one node."""

    def __init__(self, source: SchedulerSource, settings: ClientSettings, context: Context) -> None:
        self.settings = settings
        self.context = context
        config = context.node_config
        pid = config.get(PARTITION_ID)
        self.partition_id = None if pid is None else int(pid)
        self.party = f"client-{pid}" if pid is not None else f"node-{context.node_id}"
        self.env = RunEnvironment(
            role="client",
            party=self.party,
            out_dir=None if settings.out_dir is None else Path(settings.out_dir),
            data_dir=None if settings.data_dir is None else Path(settings.data_dir),
            task_id=settings.task_id,
        )
        set_environment(self.env)
        scheduler = party_scheduler(
            source, self.env, f"{context.run_id}:{context.node_id}", self._prepare
        )
        if not isinstance(scheduler, FedAvgScheduler):
            raise ConfigError(
                f"{type(scheduler).__name__} is not a FedAvgScheduler or FedSGDScheduler"
            )
        self.scheduler = scheduler

    def _prepare(self, scheduler: FedAvgScheduler) -> None:
        settings = self.settings
        if settings.partition is None:
            return
        num = self.context.node_config.get(NUM_PARTITIONS)
        if self.partition_id is None or num is None:
            raise ConfigError(
                f"partition '{settings.partition}' needs the node config keys "
                f"'{PARTITION_ID}' and '{NUM_PARTITIONS}' (client flags --partition-id and "
                "--num-partitions)"
            )
        spec = PartitionSpec(
            settings.partition, int(num), settings.alpha, settings.seed or 0, settings.samples
        )
        full_batch = isinstance(scheduler, FedSGDScheduler)
        pid = self.partition_id
        scheduler.set_train_loader_hook(
            lambda loader: partition_loader(
                loader, partition_indices(spec, loader.dataset, pid), full_batch
            )
        )

    def _start_round(self, message: Message) -> int:
        config = message.content.config_records.get(CONFIG, ConfigRecord())
        server_round = int(config.get(SERVER_ROUND, 1))  # type: ignore[arg-type]
        self.scheduler.set_round(server_round)
        arrays = message.content.array_records.get(ARRAYS)
        if arrays is not None:
            call_user(self.scheduler, "load_state_dict", arrays_to_state(arrays))
        return server_round

    def train(self, message: Message) -> Message:
        """Local training from the global state."""
        sched = self.scheduler
        self._start_round(message)
        if hasattr(sched, "apply_round_config"):  # e.g. FedProxScheduler reads "proximal-mu"
            config = message.content.config_records.get(CONFIG, ConfigRecord())
            call_user(sched, "apply_round_config", dict(config))
        sched.reset_optimizer()
        optimizer = sched.optimizer
        if not self.settings.reset_optimizer:
            restore_optimizer(self.context.state, optimizer)
        if self.settings.seed is not None:  # after every build: the same draws in any process
            torch.manual_seed(stable_seed(self.settings.seed, self.party, sched.current_round))
        start = time.perf_counter()
        num_examples = sched.run_local_round()
        seconds = time.perf_counter() - start
        content = RecordDict(
            {
                ARRAYS: state_to_arrays(call_user(sched, "state_dict"), "state_dict()"),
                METRICS: MetricRecord({NUM_EXAMPLES: num_examples, TRAIN_SECONDS: seconds}),
            }
        )
        if not self.settings.reset_optimizer:
            save_optimizer(self.context.state, optimizer)
        sched.flush_outputs()
        return Message(content, reply_to=message)

    def evaluate(self, message: Message) -> Message:
        """The user's test on local data, with the global state."""
        self._start_round(message)
        values = self.scheduler.collect_test()
        values[NUM_EXAMPLES] = dataset_size(self.scheduler.test_loader)
        self.scheduler.flush_outputs()
        content = RecordDict(
            {METRICS: MetricRecord(values), PARTY: ConfigRecord({PARTY: self.party})}
        )
        return Message(content, reply_to=message)

    def full_batch(self, message: Message) -> Message:
        """Whether the training loader as the user wrote it is full-batch."""
        answer = ConfigRecord({"ok": False, "reason": ""})
        if not isinstance(self.scheduler, FedSGDScheduler):
            answer["reason"] = f"{type(self.scheduler).__name__} is not a FedSGDScheduler"
        else:
            loader = self.scheduler.user_train_loader()
            answer["batch-size"] = int(loader.batch_size or 0)
            answer["dataset-size"] = dataset_size(loader)
            try:
                self.scheduler.check_full_batch()
                answer["ok"] = True
            except ConfigError as exc:
                answer["reason"] = f"{self.party}: {exc}"
        return Message(RecordDict({FULL_BATCH_RECORD: answer}), reply_to=message)


def horizontal_client_app(
    source_fn: Callable[[Context], SchedulerSource],
    settings_fn: Callable[[Context], ClientSettings],
    app: ClientApp | None = None,
) -> ClientApp:
    """A ClientApp running FedAvg/FedSGD schedulers (``train``, ``evaluate``,
    ``query.full_batch``).

    Parameters
    ----------
    source_fn : Callable[[Context], SchedulerSource]
        Where the node's scheduler comes from.
    settings_fn : Callable[[Context], ClientSettings]
        The node's settings (from the closure in a simulation, from node/run config in
        deployment).
    app : ClientApp | None
        Register the handlers on this ClientApp instead of a new one.
    """
    app = ClientApp() if app is None else app

    def client(context: Context) -> HorizontalClient:
        return HorizontalClient(source_fn(context), settings_fn(context), context)

    @route(app, TRAIN)
    def train(message: Message, context: Context) -> Message:
        if is_secagg(message):  # SecureFedAvgScheduler: Flower's secaggplus_mod runs the stages
            node: list[HorizontalClient] = []

            def scheduler() -> FedAvgScheduler:
                node.append(client(context))
                return node[0].scheduler

            return secure_train(message, context, scheduler, lambda msg: node[0].train(msg))  # type: ignore[arg-type]
        node_client = client(context)
        refuse_plain_train(node_client.scheduler)
        return node_client.train(message)

    @route(app, EVALUATE)
    def evaluate(message: Message, context: Context) -> Message:
        return client(context).evaluate(message)

    @route(app, FULL_BATCH)
    def full_batch(message: Message, context: Context) -> Message:
        return client(context).full_batch(message)

    return app
