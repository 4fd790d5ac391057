"""ClientApp handler of a secure HeteroNN collaborator (``train.secure``).

Extends the plain collaborator (hello, PSI, feature replay, checkpoints) with the CKKS
projection protocol of ``alphafed_flwr.secure_layer``. The collaborator's secret key, its
share ``E`` of the projection and the features awaiting their forward pass live in this
node's ``context.state``; the secret key is never put in a reply, never logged.

One ``train.secure`` request may carry, in this order: the gradients of the previous batch
(applied first: share update, feature-model step), a request for the encrypted features of
some batches, the host's forward ciphertexts of one batch (answered with the masked
projection part and ``[E]``), the end of the round, and the test's steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.api.log import logger
from alphafed_flwr.api.secure_hetero_nn import SecureHeteroNNCollaboratorScheduler
from alphafed_flwr.api.scheduler import guarded
from alphafed_flwr.secure_layer import (
    CkksParams,
    CollaboratorKeys,
    FeaturePlan,
    collaborator_backward,
    collaborator_forward,
    encrypt_features,
    encrypt_share,
    uniform,
)
from alphafed_flwr.strategies.checks import check_array
from alphafed_flwr.strategies.payload import decode, encode
from alphafed_flwr.strategies.protocol import (
    ALPHA,
    ALPHA_COUNTS,
    BATCHES,
    BEGIN,
    CKKS,
    CONTEXT,
    DIGESTS,
    DIMS,
    FGRAD,
    FINISH,
    FORWARD,
    FORWARD_BATCH,
    GRAD_BATCH,
    LR,
    ROUND,
    SECURE,
    SEND,
    SHARE as SHARE_KEY,
    SIZES,
    TEST,
    TEST_ALPHA,
    TEST_ALPHA_COUNTS,
    TEST_BATCH,
    TEST_DIGESTS,
    TEST_FORWARD,
    TEST_SIZES,
    TEST_Z,
    TIME_HANDLER,
    WGRAD,
    Z,
    route,
)

from .feature_replay import RecordedRound, ids_digest, replay_backward, replay_features
from .templates import SchedulerSource
from .vertical_client import CollaboratorSettings, VerticalCollaborator

SECURE_TYPE = SECURE  # kept for callers of the old name
KEYS, SHARE, PENDING = "secure.keys", "secure.share", "secure.alpha"


class SecureCollaborator(VerticalCollaborator):
    """Handles one ``train.secure`` message for one collaborator node."""

    def __init__(self, source: SchedulerSource, settings: CollaboratorSettings, context: Context) -> None:
        super().__init__(source, settings, context)
        if not isinstance(self.sched, SecureHeteroNNCollaboratorScheduler):
            raise ConfigError(
                f"the host runs secure HeteroNN, but '{self.key}' is a {type(self.sched).__name__}: "
                "derive the collaborator from SecureHeteroNNCollaboratorScheduler"
            )
        self.keys: CollaboratorKeys | None = None

    def secure(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One step of the secure protocol (see the module docstring)."""
        started = time.perf_counter()
        server_round = int(payload[ROUND])
        self.sched.set_round(server_round)
        self._load_model()
        self._ensure_intersection()
        reply: dict[str, Any] = {}
        if payload.get(BEGIN):
            reply.update(self._setup(payload))
        self.keys = self._keys()
        if payload.get(BEGIN):  # the round's inputs, recorded afresh (see feature_replay)
            recorded = self._record(server_round)
            reply[BATCHES] = recorded.num_batches
        else:
            recorded = self.store.get(self.key, server_round) or self._record(server_round)
        if GRAD_BATCH in payload:
            self._apply_gradients(payload, recorded, server_round)
        if payload.get(SEND):
            reply.update(self._send_features(list(payload[SEND]), recorded, server_round))
        if FORWARD in payload:
            reply.update(self._forward(payload[FORWARD], str(int(payload[FORWARD_BATCH])), Z))
        self._save_model()
        if payload.get(FINISH):
            self._finish_round(server_round)
        if payload.get(TEST):
            reply.update(self._test_alpha())
        if TEST_FORWARD in payload:
            reply.update(self._forward(payload[TEST_FORWARD], f"t{int(payload[TEST_BATCH])}", TEST_Z))
        self.sched.flush_outputs()
        reply[TIME_HANDLER] = time.perf_counter() - started
        return reply

    # ----- steps ---------------------------------------------------------------------------
    def _setup(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Check the host's configuration; create keys and the share once per task."""
        lr, dims = float(payload[LR]), payload[DIMS]
        if abs(lr - self.sched.project_layer_lr) > 1e-12 * max(1.0, lr):
            raise ConfigError(
                f"project_layer_lr differs: the host uses {lr}, '{self.key}' "
                f"{self.sched.project_layer_lr}; the shares of the projection only add up "
                "to SGD on it when both use the same rate"
            )
        params = CkksParams.from_list(list(payload[CKKS]))
        saved = self.state.config_records.get(KEYS)
        if saved is None or list(saved["params"]) != params.to_list():  # type: ignore[arg-type]
            keys = CollaboratorKeys.create(params)
            self.state[KEYS] = ConfigRecord({"private": keys.private_bytes(), "params": params.to_list()})
            n_in, n_out = int(dims[0]), int(dims[1])
            bound = 1.0 / np.sqrt(2.0 * n_in)  # see ProjectLayer: Var(W_h + E) = nn.Linear's
            self.state[SHARE] = ArrayRecord({"E": Array(uniform((n_in, n_out), bound))})
            logger.info("'%s': new CKKS keys (N=%d) and projection share", self.key, params.poly_modulus_degree)
        self.keys = self._keys()
        return {CONTEXT: self.keys.public_bytes()}

    def _keys(self) -> CollaboratorKeys:
        saved = self.state.config_records.get(KEYS)
        if saved is None:
            raise ConfigError(f"'{self.key}': secure training step before the round's start")
        params = CkksParams.from_list(list(saved["params"]))  # type: ignore[arg-type]
        return CollaboratorKeys.from_private_bytes(bytes(saved["private"]), params)  # type: ignore[arg-type]

    @property
    def share(self) -> np.ndarray:
        """This party's share E of the projection (n x m)."""
        return self.state.array_records[SHARE]["E"].numpy()

    def _pending(self) -> ArrayRecord:
        if PENDING not in self.state.array_records:
            self.state[PENDING] = ArrayRecord()
        return self.state.array_records[PENDING]

    def _send_features(self, batches: list[int], recorded: RecordedRound, server_round: int) -> dict[str, Any]:
        """``[alpha]`` of each requested batch (kept in the state until its forward)."""
        assert self.keys is not None
        cts: list[bytes] = []
        counts, sizes = [], []
        n_in, n_out = self.share.shape
        pending = self._pending()
        for index in batches:
            if not isinstance(index, int) or not 0 <= index < recorded.num_batches:
                raise ConfigError(f"'{self.key}': the host asked for unknown batch {index!r}")
            alpha = replay_features(self.sched.feature_model, recorded.batch(index), self._seed(server_round, index))
            alpha = self._checked_alpha(alpha, n_in, f"training batch {index + 1}")
            pending[str(index)] = Array(alpha)
            batch = encrypt_features(self.keys, alpha, FeaturePlan.make(len(alpha), n_in, n_out, self.keys.params.slots))
            cts += batch
            counts.append(len(batch))
            sizes.append(len(alpha))
        digests = [recorded.digests[i] if i < len(recorded.digests) else "" for i in batches]
        return {ALPHA: cts, ALPHA_COUNTS: counts, SIZES: sizes, DIGESTS: digests}

    def _checked_alpha(self, alpha: np.ndarray, n_in: int, what: str) -> np.ndarray:
        if alpha.ndim != 2 or alpha.shape[1] != n_in:
            raise ConfigError(
                f"'{self.key}': the feature model yields features of shape {tuple(alpha.shape)} "
                f"for {what}; the host's project_layer_config says (batch, {n_in})"
            )
        check_array(alpha, f"'{self.key}'", f"the features of {what}")
        return np.asarray(alpha, dtype=np.float64)

    def _forward(self, cts: Any, slot: str, name: str) -> dict[str, Any]:
        """Decrypt a forward; reply ``alpha W_h + eps_b + alpha E`` and ``[E]``."""
        assert self.keys is not None
        pending = self._pending()
        if slot not in pending or not isinstance(cts, list):
            raise ConfigError(f"'{self.key}': a forward for batch {slot} whose features were not sent")
        alpha = pending[slot].numpy()
        share = self.share
        plan = FeaturePlan.make(len(alpha), *share.shape, self.keys.params.slots)
        part = collaborator_forward(self.keys, cts, alpha, share, plan)
        if name == TEST_Z:
            del pending[slot]
            return {name: part}
        return {name: part, SHARE_KEY: encrypt_share(self.keys, share)}

    def _apply_gradients(self, payload: dict[str, Any], recorded: RecordedRound, server_round: int) -> None:
        """Update the share with the masked weight gradient; step the feature model."""
        assert self.keys is not None
        index = int(payload[GRAD_BATCH])
        pending = self._pending()
        if str(index) not in pending:
            raise ConfigError(f"'{self.key}': gradients for batch {index + 1} whose features were not sent")
        alpha = pending[str(index)].numpy()
        del pending[str(index)]
        share = self.share
        plan = FeaturePlan.make(len(alpha), *share.shape, self.keys.params.slots)
        grad_w, grad_x = collaborator_backward(self.keys, list(payload[WGRAD]), list(payload[FGRAD]), plan)
        what = f"the feature gradient of training batch {index + 1} for '{self.key}'"
        check_array(grad_x, "the host", what, max_abs=self.settings.max_abs)
        updated = share - self.sched.project_layer_lr * grad_w
        self.state[SHARE] = ArrayRecord({"E": Array(updated)})
        if self.sched.is_feature_trainable:
            model, optimizer = self.sched.feature_model, self.sched.feature_optimizer
            model.train()
            optimizer.zero_grad(set_to_none=True)
            replay_backward(model, recorded.batch(index), grad_x.astype(np.float32), self._seed(server_round, index))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def _test_alpha(self) -> dict[str, Any]:
        """``[alpha]`` of every test batch (eval mode), kept until each batch's forward."""
        assert self.keys is not None
        sched = self.sched
        model = sched.feature_model
        model.eval()
        try:
            with torch.no_grad():
                generator = guarded(self._name("iterate_test_feature"), sched.iterate_test_feature, model, sched.test_ids)
                items = guarded(self._name("iterate_test_feature"), list, generator)
        finally:
            model.train()
        n_in, n_out = self.share.shape
        pending = self._pending()
        cts: list[bytes] = []
        counts, sizes, digests = [], [], []
        for i, item in enumerate(items):
            feats, ids = (item[0], item[1]) if isinstance(item, tuple) else (item, None)
            if not isinstance(feats, torch.Tensor):
                raise ConfigError(f"{self._name('iterate_test_feature')} must yield feature tensors")
            alpha = self._checked_alpha(feats.detach().cpu().numpy(), n_in, f"test batch {i + 1}")
            pending[f"t{i}"] = Array(alpha)
            batch = encrypt_features(self.keys, alpha, FeaturePlan.make(len(alpha), n_in, n_out, self.keys.params.slots))
            cts += batch
            counts.append(len(batch))
            sizes.append(len(alpha))
            digests.append(ids_digest(self.salt, [str(x) for x in ids]) if ids is not None else "")
        return {TEST_ALPHA: cts, TEST_ALPHA_COUNTS: counts, TEST_SIZES: sizes, TEST_DIGESTS: digests}


def add_secure_handler(
    app: ClientApp,
    source_fn: Callable[[Context], SchedulerSource],
    settings_fn: Callable[[Context], CollaboratorSettings],
) -> ClientApp:
    """Register ``train.secure`` on a collaborator ClientApp (see ``collaborator_client_app``)."""

    def handler(message: Message, context: Context) -> Message:
        party = SecureCollaborator(source_fn(context), settings_fn(context), context)
        return Message(encode(party.secure(decode(message.content))), reply_to=message)

    route(app, SECURE)(handler)
    return app
