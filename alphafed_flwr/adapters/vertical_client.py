"""ClientApp of a vertical-task collaborator (``query.hello``, ``query.psi``, ``train.exchange``).

Every message may run in a fresh process (deployment) or in any Ray actor (simulation), so
the collaborator's feature model, optimizer state, PSI state and round live in the node's
``context.state`` as records, the ID intersection in ``psi.json`` (with its SHA-256 in
``context.state``; in the state itself where the folder may not persist), and the round's
recorded inputs in a local cache file (see ``feature_replay``). Each completed round is also
checkpointed locally, so a restarted task can resume. In simulation (``CollaboratorSettings.live_state``) the feature
model, its optimizer and, at one batch per exchange, the sent features' autograd graph stay
in the actor instead, with a snapshot file for other processes (see ``live_state``).
"""

from __future__ import annotations

import hashlib
import json
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from alphafed_flwr.api.env import RunEnvironment, set_environment
from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.api.hetero_nn import HeteroNNCollaboratorScheduler
from alphafed_flwr.api.scheduler import guarded
from alphafed_flwr.label_protection import private_features
from alphafed_flwr.psi import PsiParty, canonical_ids, collaborator_step
from alphafed_flwr.strategies.checks import DEFAULT_MAX_ABS, ArrayRejected, check_array
from alphafed_flwr.strategies.codecs import decode_request, encode_reply
from alphafed_flwr.strategies.payload import decode, encode
from alphafed_flwr.strategies.protocol import (
    APPLY,
    BATCHES,
    BEGIN,
    CHECKPOINT_ROUNDS,
    COLLABORATOR,
    DIGESTS,
    EXCHANGE,
    FEATURE_KEY,
    FEATURES,
    FINISH,
    GRADS,
    HELLO,
    INTERSECTION_DIGEST,
    PSI,
    RESTORE,
    ROLE,
    ROUND,
    SALT,
    SEND,
    SPLIT_DIGEST,
    TEST,
    TEST_DIGESTS,
    TEST_FEATURES,
    TEST_SIZE,
    TIME_HANDLER,
    TIME_MODEL,
    TRAIN_SIZE,
    route,
)

from .feature_replay import (
    InputStore,
    RecordedRound,
    RecordingModel,
    batch_seed,
    ids_digest,
    record_batches,
    replay_backward,
    replay_features,
)
from .live_state import LIVE_TOKEN, KeptGraph, LiveEntry, LiveState, backward_kept, forward_kept
from .outputs import atomic_write_bytes, save_state_dict
from .records import OPT_ARRAYS, OPT_CONFIG, arrays_to_state, restore_optimizer, save_optimizer, state_to_arrays
from .templates import SchedulerSource, party_scheduler, stable_seed
from .vertical_common import (
    RoundCheckpoints,
    check_split,
    ids_set_digest,
    load_module_arrays,
    load_optimizer_arrays,
    module_arrays,
    optimizer_arrays,
    read_json,
    split_digest,
)

STATE = "vertical"
MODEL = "feature.model"
OPT_PREFIX = "feature."
PSI_ARRAYS, PSI_KEYS = "psi.arrays", "psi.keys"
PSI_FILE = "psi.json"  # this collaborator's intersection (its SHA-256 in the state: ``INTERSECTION_SHA256``)
INTERSECTION_SHA256 = "intersection-sha256"
# A collaborator's IDs during its PSI (``canonical_ids`` of ``local_ids()``), by scheduler:
# computed once, not at each of the PSI's messages (about a second at 1,000,000 IDs).
_PSI_IDS: weakref.WeakKeyDictionary[HeteroNNCollaboratorScheduler, dict[str, Any]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class CollaboratorSettings:
    """What a collaborator needs besides its messages.

    Parameters
    ----------
    task_id : str
        The task id.
    out_dir : str
        Base output folder; this party writes to ``<out_dir>/collaborators/<feature_key>``
        (checkpoints, cache of recorded inputs, feature model, TensorBoard).
    data_dir : str | None
        This party's data folder (``get_dataset_dir``).
    seed : int | None
        Seed of the feature model's initialisation.
    max_abs : float
        Largest absolute value accepted in a gradient from the host (``checks``).
    live_state : bool
        Keep the feature model, its optimizer and (one batch per exchange) the sent
        features' autograd graph in this process between messages, with a snapshot file for
        other processes, instead of in ``context.state`` (``live_state``; simulation).
    folder_persists : bool
        Every message of this node finds ``out_dir`` as the last one left it (a deployed
        node, or every actor on one machine): the ID intersection stays in ``psi.json`` and
        ``context.state`` keeps its SHA-256. False on a Ray cluster, whose actors may run on
        other machines: the intersection then travels in ``context.state`` with every message.
    """

    task_id: str = "local-task"
    out_dir: str = "alphafed-out"
    data_dir: str | None = None
    seed: int | None = None
    max_abs: float = DEFAULT_MAX_ABS
    live_state: bool = False
    folder_persists: bool = True


class VerticalCollaborator:
    """Handles one message for one collaborator node."""

    def __init__(self, source: SchedulerSource, settings: CollaboratorSettings, context: Context) -> None:
        self.settings = settings
        self.context = context
        sched = party_scheduler(source, self._environment, f"{context.run_id}:{context.node_id}")
        if not isinstance(sched, HeteroNNCollaboratorScheduler):
            raise ConfigError(f"{type(sched).__name__} is not a HeteroNNCollaboratorScheduler")
        self.sched = sched
        self.key = sched.feature_key
        self.folder = Path(settings.out_dir) / "collaborators" / self.key
        assert sched.environment is not None
        set_environment(sched.environment)
        self.checkpoints = RoundCheckpoints(self.folder / "checkpoint")
        self.store = InputStore(self.folder / "cache")
        self.state = context.state
        if STATE not in self.state.config_records:
            self.state[STATE] = ConfigRecord()
        self.config = self.state.config_records[STATE]
        self.live = LiveState(f"{context.run_id}:{context.node_id}", self.folder / "live")
        self.entry: LiveEntry | None = None

    def _environment(self, sched: Any) -> RunEnvironment:
        settings = self.settings
        return RunEnvironment(
            "collaborator",
            str(sched.feature_key),
            Path(settings.out_dir),
            None if settings.data_dir is None else Path(settings.data_dir),
            settings.task_id,
        )

    @property
    def salt(self) -> bytes:
        """The run's digest salt (from the host's hello)."""
        return bytes(self.config.get("salt", b""))  # type: ignore[arg-type]

    def _name(self, method: str) -> str:
        return f"{type(self.sched).__name__}.{method} ('{self.key}')"

    # ----- messages ----------------------------------------------------------------------
    def hello(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Introduce this party; say which rounds it could resume from."""
        self.config["salt"] = bytes(payload[SALT])
        saved = read_json(self.folder / PSI_FILE)
        return {
            ROLE: COLLABORATOR,
            FEATURE_KEY: self.key,
            CHECKPOINT_ROUNDS: self.checkpoints.rounds(),
            INTERSECTION_DIGEST: ids_set_digest(self.salt, saved["intersection"]) if saved else "",
        }

    def psi(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One step of the private set intersection (see ``alphafed_flwr.psi``)."""
        originals = _PSI_IDS.get(self.sched)
        if originals is None:
            originals = _PSI_IDS[self.sched] = canonical_ids(self.sched.local_ids())
        party = PsiParty.from_state(originals, self._psi_state(), canonical=True)
        try:  # the collaborator keeps the protocol's state and refuses what it does not allow
            reply, mine = collaborator_step(party, payload)
        finally:  # a refusal is kept too: it ends this party's PSI for the task
            self._save_psi_state(party)
        if mine is not None:
            del _PSI_IDS[self.sched]
            self._set_intersection(mine, originals)
            train_ids, test_ids = check_split(self.key, self.sched.train_ids, self.sched.test_ids)
            reply.update(
                {
                    SPLIT_DIGEST: split_digest(self.salt, train_ids, test_ids),
                    TRAIN_SIZE: len(train_ids),
                    TEST_SIZE: len(test_ids),
                }
            )
            self._keep_intersection(mine)
        return reply

    def exchange(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Apply gradients, send features, finish the round, send test features.

        The reply's ``time-handler`` and ``time-model`` (seconds in this handler, and in
        the feature model and the user's generators) let the host tell transport, adapter
        and user-code time apart.
        """
        started = time.perf_counter()
        try:
            payload = decode_request(payload, max_abs=self.settings.max_abs)  # codecs: the host's gradients
        except ArrayRejected as exc:  # name the batches
            batches = [i + 1 for i in payload.get(APPLY) or [] if isinstance(i, int)]
            raise ArrayRejected(f"the gradients of training batches {batches} for '{self.key}': {exc}") from exc
        model_seconds = 0.0
        sched = self.sched
        server_round = int(payload[ROUND])
        sched.set_round(server_round)
        if RESTORE in payload:
            self._restore(int(payload[RESTORE]))
        self._load_model()
        self._ensure_intersection()
        reply: dict[str, Any] = {}
        recorded: RecordedRound | None = None
        if payload.get(BEGIN):
            tick = time.perf_counter()
            recorded = self._record(server_round)
            model_seconds += time.perf_counter() - tick
            reply[BATCHES] = recorded.num_batches
        apply = list(payload.get(APPLY) or [])
        send = list(payload.get(SEND) or [])
        if apply or send:
            recorded = recorded or self.store.get(self.key, server_round) or self._record(server_round)
        model, optimizer = sched.feature_model, sched.feature_optimizer
        model.train()
        tick = time.perf_counter()
        if apply:
            grads = self._checked_gradients(payload, apply, recorded)
        if apply and sched.is_feature_trainable:
            for index, grad in zip(apply, grads, strict=True):
                optimizer.zero_grad(set_to_none=True)
                graph = self._kept_graph(server_round, index)
                if graph is not None:
                    backward_kept(model, graph, grad)
                else:
                    replay_backward(model, recorded.batch(index), grad, self._seed(server_round, index))
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        kept: KeptGraph | None = None
        if send:
            assert recorded is not None
            if self.settings.live_state and len(send) == 1 and sched.is_feature_trainable:
                features, kept = forward_kept(model, recorded.batch(send[0]), self._seed(server_round, send[0]),
                                              server_round, send[0])
                reply[FEATURES] = [features]
            else:
                reply[FEATURES] = [
                    replay_features(model, recorded.batch(i), self._seed(server_round, i)) for i in send
                ]
            self.config["feature-tail"] = [int(d) for d in reply[FEATURES][0].shape[1:]]
            reply[DIGESTS] = [recorded.digests[i] if i < len(recorded.digests) else "" for i in send]
        model_seconds += time.perf_counter() - tick
        self._save_model(kept)
        if payload.get(FINISH):
            self._finish_round(server_round)
        if payload.get(TEST):
            tick = time.perf_counter()
            reply.update(self._test_features())
            model_seconds += time.perf_counter() - tick
        sched.flush_outputs()
        reply = encode_reply(private_features(reply, getattr(sched, "embedding_dp", None)), payload)  # DP, codecs
        reply[TIME_MODEL] = model_seconds
        reply[TIME_HANDLER] = time.perf_counter() - started
        return reply

    # ----- helpers -------------------------------------------------------------------------
    def _checked_gradients(self, payload: dict[str, Any], apply: list[Any], recorded: RecordedRound) -> list[np.ndarray]:
        """The host's gradients for batches ``apply``, all checked before any is applied."""
        grads = payload.get(GRADS) or []
        if not isinstance(grads, list) or len(grads) != len(apply):
            raise ConfigError(f"'{self.key}': the host sent {len(grads)} gradients for batches {apply}")
        tail = self.config.get("feature-tail")
        sizes = recorded.sizes()
        for index, grad in zip(apply, grads, strict=True):
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(sizes):
                raise ConfigError(f"'{self.key}': the host sent a gradient for unknown batch {index!r}")
            what = f"the gradient of training batch {index + 1} for '{self.key}'"
            check_array(grad, "the host", what, max_abs=self.settings.max_abs,
                        tail=None if tail is None else tuple(tail))  # type: ignore[arg-type]
            if grad.shape[0] != sizes[index]:
                raise ArrayRejected(f"{what} from the host rejected: {grad.shape[0]} rows for {sizes[index]} samples")
        return grads

    def _kept_graph(self, server_round: int, index: int) -> KeptGraph | None:
        """The graph kept when this batch's features were sent, if this process still holds
        it for the model's current version (used once)."""
        graph = self.entry.graph if self.entry is not None else None
        if graph is None or (graph.server_round, graph.index) != (server_round, index):
            return None
        assert self.entry is not None
        self.entry.graph = None
        return graph

    def _seed(self, server_round: int, index: int) -> int:
        return batch_seed(self.settings.task_id, self.key, server_round, index)

    def _record(self, server_round: int) -> RecordedRound:
        sched = self.sched
        recorder = RecordingModel(sched.feature_model)
        generator = guarded(self._name("iterate_train_feature"), sched.iterate_train_feature, recorder, sched.train_ids)
        ids = guarded(self._name("iterate_train_feature"), record_batches, generator, recorder, self.key)
        digests = [ids_digest(self.salt, batch) if batch is not None else "" for batch in ids]
        return self.store.put(self.key, server_round, recorder.inputs, digests)

    def _test_features(self) -> dict[str, Any]:
        sched = self.sched
        model = sched.feature_model
        model.eval()
        try:
            with torch.no_grad():
                generator = guarded(self._name("iterate_test_feature"), sched.iterate_test_feature, model, sched.test_ids)
                items = guarded(self._name("iterate_test_feature"), list, generator)
        finally:
            model.train()
        features, digests = [], []
        for item in items:
            feats, ids = (item[0], item[1]) if isinstance(item, tuple) else (item, None)
            if not isinstance(feats, torch.Tensor):
                raise ConfigError(f"{self._name('iterate_test_feature')} must yield feature tensors")
            features.append(feats.detach().cpu().numpy())
            digests.append(ids_digest(self.salt, [str(i) for i in ids]) if ids is not None else "")
        return {TEST_FEATURES: features, TEST_DIGESTS: digests}

    def _load_model(self) -> None:
        """The feature model and optimizer of the node's current version: live in this
        process, from the live snapshot, from ``context.state``, or new."""
        sched = self.sched
        token = str(self.config.get(LIVE_TOKEN, ""))
        self.entry = self.live.current(token, sched)
        if self.entry is not None:
            return
        record = self.state.array_records.get(MODEL)
        if record is not None:
            sched.feature_model.load_state_dict(arrays_to_state(record))
        elif not token:
            if self.settings.seed is not None:
                torch.manual_seed(stable_seed(self.settings.seed, self.key))
            sched.reset_feature_model()
        sched.reset_feature_optimizer()
        if token and record is None:
            self.live.load(token, sched.feature_model, sched.feature_optimizer)
        else:
            restore_optimizer(self.state, sched.feature_optimizer, OPT_PREFIX)

    def _save_model(self, graph: KeptGraph | None = None) -> None:
        if self.settings.live_state:
            self.config[LIVE_TOKEN] = self.live.save(self.sched, graph)
            for key in (MODEL, OPT_PREFIX + OPT_ARRAYS, OPT_PREFIX + OPT_CONFIG):
                self.state.pop(key, None)
            return
        self.config.pop(LIVE_TOKEN, None)
        self.state[MODEL] = state_to_arrays(self.sched.feature_model.state_dict())
        save_optimizer(self.state, self.sched.feature_optimizer, OPT_PREFIX)

    def _finish_round(self, server_round: int) -> None:
        sched = self.sched
        arrays = module_arrays("feature", sched.feature_model)
        opt_arrays, opt_meta = optimizer_arrays("feature-opt", sched.feature_optimizer)
        self.checkpoints.save(server_round, {**arrays, **opt_arrays}, {"round": server_round, **opt_meta})
        save_state_dict(self.folder / "feature_model.pt", sched.feature_model.state_dict())

    def _restore(self, server_round: int) -> None:
        arrays, meta = self.checkpoints.load(server_round)
        sched = self.sched
        load_module_arrays("feature", sched.feature_model, arrays)
        load_optimizer_arrays("feature-opt", sched.feature_optimizer, arrays, meta)
        saved = read_json(self.folder / PSI_FILE)
        if saved is None:
            raise ConfigError(f"'{self.key}' has no saved intersection to resume from")
        self._keep_intersection(list(saved["intersection"]))
        self._save_model()

    def _ensure_intersection(self) -> None:
        if self.sched._intersection is None:  # pylint: disable=protected-access
            saved = self.config.get("intersection")
            if saved is None:
                saved = self._saved_intersection()
            self._set_intersection(list(saved), canonical_ids(self.sched.local_ids()))  # type: ignore[arg-type]

    def _keep_intersection(self, ids: list[str]) -> None:
        """Write ``psi.json``; ``context.state`` keeps its SHA-256, or the IDs themselves
        where the folder may not persist (``folder_persists``)."""
        data = json.dumps({"intersection": ids}).encode()
        atomic_write_bytes(self.folder / PSI_FILE, data)
        if self.settings.folder_persists:
            self.config[INTERSECTION_SHA256] = hashlib.sha256(data).hexdigest()
        else:
            self.config["intersection"] = ids

    def _saved_intersection(self) -> list[str]:
        """The intersection in ``psi.json``, checked against the SHA-256 in ``context.state``."""
        expected = self.config.get(INTERSECTION_SHA256)
        path = self.folder / PSI_FILE
        if expected is None or not path.exists():
            raise ConfigError(f"'{self.key}': training started before the private set intersection")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != expected:
            raise ConfigError(
                f"'{self.key}': {path} changed since this task's private set intersection "
                "(another task writing to the same out-dir?): give each task its own out-dir and restart it"
            )
        return list(json.loads(data)["intersection"])

    def _set_intersection(self, ids: list[str], originals: dict[str, Any]) -> None:
        """Record the intersection (``ids`` as strings) as this party's own ID objects
        (``originals``: ``canonical_ids`` of its local IDs)."""
        self.sched.set_intersection(map(originals.__getitem__, ids))

    def _psi_state(self) -> dict[str, Any]:
        arrays = self.state.array_records.get(PSI_ARRAYS, ArrayRecord())
        keys = self.state.config_records.get(PSI_KEYS, ConfigRecord())
        return {**{k: v.numpy() for k, v in arrays.items()}, **{k: bytes(v) for k, v in keys.items()}}  # type: ignore[arg-type]

    def _save_psi_state(self, party: PsiParty) -> None:
        state = party.to_state()
        self.state[PSI_ARRAYS] = ArrayRecord(
            {k: Array(np.asarray(v, order="C")) for k, v in state.items() if isinstance(v, np.ndarray)}
        )
        self.state[PSI_KEYS] = ConfigRecord({k: v for k, v in state.items() if isinstance(v, bytes)})


def collaborator_client_app(
    source_fn: Callable[[Context], SchedulerSource],
    settings_fn: Callable[[Context], CollaboratorSettings],
    app: ClientApp | None = None,
) -> ClientApp:
    """A ClientApp running a ``HeteroNNCollaboratorScheduler`` (``query.hello``,
    ``query.psi``, ``train.exchange``).

    Parameters
    ----------
    source_fn : Callable[[Context], SchedulerSource]
        Where the node's scheduler comes from.
    settings_fn : Callable[[Context], CollaboratorSettings]
        The node's settings.
    app : ClientApp | None
        Register the handlers on this ClientApp instead of a new one.
    """
    app = ClientApp() if app is None else app

    def handle(method: str) -> Callable[[Message, Context], Message]:
        def handler(message: Message, context: Context) -> Message:
            party = VerticalCollaborator(source_fn(context), settings_fn(context), context)
            reply = getattr(party, method)(decode(message.content))
            return Message(encode(reply), reply_to=message)

        return handler

    route(app, HELLO)(handle("hello"))
    route(app, PSI)(handle("psi"))
    route(app, EXCHANGE)(handle("exchange"))
    return app
