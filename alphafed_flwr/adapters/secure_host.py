"""The host of a secure HeteroNN task: ``VerticalHost`` plus the CKKS projection callbacks.

The host holds only public CKKS contexts (no secret key), its shares ``W_h`` of the
collaborators' projections (``project_layer[key].weight``, transposed) and, between the
forward and the backward of a batch, the batch's ciphertexts and masks. What it sees of a
collaborator's features is the projection ``z = alpha (W_h + E)``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.api.log import logger
from alphafed_flwr.api.scheduler import guarded
from alphafed_flwr.api.secure_hetero_nn import SecureHeteroNNHostScheduler
from alphafed_flwr.secure_layer import (
    CkksParams,
    FeaturePlan,
    HostBatchState,
    host_backward,
    host_forward,
    load_vector,
    public_context,
    unmask_projection,
)
from alphafed_flwr.strategies.checks import check_array
from alphafed_flwr.strategies.protocol import CKKS, DIMS, FGRAD, GRAD_BATCH, LR, SHARE, WGRAD, Z

from .vertical_host import VerticalHost, VerticalSettings


class SecureVerticalHost(VerticalHost):
    """Runs a ``SecureHeteroNNHostScheduler`` (implements ``SecureSplitLearningHost``).

    Parameters
    ----------
    scheduler : SecureHeteroNNHostScheduler
        The host's scheduler.
    settings : VerticalSettings
        Run settings (``resume`` is ignored: a secure run starts over, see the README).
    """

    def __init__(self, scheduler: SecureHeteroNNHostScheduler, settings: VerticalSettings) -> None:
        if not isinstance(scheduler, SecureHeteroNNHostScheduler):
            raise ConfigError(f"{type(scheduler).__name__} is not a SecureHeteroNNHostScheduler")
        super().__init__(scheduler, settings)
        self.sched: SecureHeteroNNHostScheduler = scheduler
        self.params: CkksParams = scheduler.ckks_params or CkksParams()
        self.contexts: dict[str, Any] = {}
        self._states: dict[str, HostBatchState] = {}
        self._test_states: dict[str, list[HostBatchState]] = {}
        self.crypto_seconds = 0.0

    def _try_resume(self, collaborators: dict[str, dict[str, Any]], local: list[Any]) -> int | None:
        logger.info("Secure HeteroNN does not resume (the projection shares are not checkpointed): starting over")
        return None

    # ----- SecureSplitLearningHost ---------------------------------------------------------
    def secure_setup(self, key: str) -> dict[str, Any]:
        """Learning rate, projection dims and CKKS parameters for ``key``."""
        dims = self.sched.project_layer.dims.get(key)
        if dims is None:
            raise ConfigError(
                f"collaborator '{key}' has no entry in project_layer_config "
                f"({[k for k, _, _ in self.sched.project_layer_config]}): add ('{key}', in_dim, out_dim)"
            )
        return {LR: self.sched.project_layer_lr, DIMS: list(dims), CKKS: self.params.to_list()}

    def set_context(self, key: str, context: bytes) -> None:
        """Load a collaborator's public context (refused if it carries a secret key)."""
        self.contexts[key] = public_context(context)

    def _w_host(self, key: str) -> np.ndarray:
        return self.sched.project_layer[key].weight.detach().double().numpy().T  # n x m

    def forward(self, key: str, index: int, cts: list[bytes]) -> list[bytes]:
        """Forward ciphertexts of one training batch (keeps its state for the backward)."""
        out, self._states[key] = self._forward(key, cts, f"training batch {index + 1}")
        return out

    def _forward(self, key: str, cts: list[bytes], what: str) -> tuple[list[bytes], HostBatchState]:
        start = time.perf_counter()
        n_in, n_out = self.sched.project_layer.dims[key]
        batch = self._batch[0].shape[0] if self._batch is not None else None
        rows = self._rows_of(cts, n_in, n_out, batch, what)
        out, state = host_forward(self.contexts[key], self.params, cts, self._w_host(key), FeaturePlan.make(rows, n_in, n_out, self.params.slots))
        self.crypto_seconds += time.perf_counter() - start
        return out, state

    def _rows_of(self, cts: list[bytes], n_in: int, n_out: int, batch: int | None, what: str) -> int:
        if batch is None:
            raise ConfigError(f"{what}: no host batch to match the collaborator's features")
        plan = FeaturePlan.make(batch, n_in, n_out, self.params.slots)
        if len(cts) != plan.cts:
            raise ConfigError(f"{what}: {len(cts)} feature ciphertexts for {batch} samples ({plan.cts} expected)")
        return batch

    def train_secure(self, parts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Unmask the projections, call ``train_a_batch``, run the secure backward."""
        assert self._batch is not None
        own, labels = self._batch
        leaves: dict[str, torch.Tensor] = {}
        for key, reply in parts.items():
            state = self._states[key]
            what = f"the projection of training batch {self._batch_index} from '{key}'"
            z = unmask_projection(reply.get(Z), state, self.params, what)  # type: ignore[arg-type]
            check_array(z, f"collaborator '{key}'", what)
            state.share_ct = load_vector(self.contexts[key], reply.get(SHARE), f"{what}: the share", self.params.slots)  # type: ignore[arg-type]
            leaves[key] = torch.from_numpy(z.astype(np.float32)).requires_grad_(True)
        sched = self.sched
        sched.project_optimizer.stepped = False
        projection = {self.feature_key: sched.project_own(own), **leaves}
        start = time.perf_counter()
        guarded(f"{type(sched).__name__}.train_a_batch (training batch {self._batch_index})", sched.train_a_batch, projection, labels)
        self._model_seconds += time.perf_counter() - start
        if not sched.project_optimizer.stepped:
            raise ConfigError(
                f"{type(sched).__name__}.train_a_batch did not call self.optimizer.step() (or "
                f"self.project_optimizer.step()) in batch {self._batch_index}: the shared "
                "projections are updated only with it"
            )
        out = {}
        for key, leaf in leaves.items():
            if leaf.grad is None:
                raise ConfigError(
                    f"train_a_batch did not back-propagate into the projection of '{key}' "
                    f"(batch {self._batch_index}): use every party's projection in the loss"
                )
            out[key] = self._backward(key, leaf.grad.double().numpy())
        self._batch = None
        return out

    def _backward(self, key: str, delta: np.ndarray) -> dict[str, Any]:
        start = time.perf_counter()
        check_array(delta, "the host", f"the projection gradient for '{key}'")
        w_host = self._w_host(key)
        wgrad, fgrad, eps_g = host_backward(self.contexts[key], self.params, self._states.pop(key), delta, w_host)
        weight = self.sched.project_layer[key].weight
        with torch.no_grad():  # W_h <- W_h - lr * (-eps_g): the host's share of the SGD step
            weight.add_(torch.from_numpy(self.sched.project_layer_lr * eps_g.T).to(weight.dtype))
        self.crypto_seconds += time.perf_counter() - start
        return {GRAD_BATCH: self._batch_index - 1, WGRAD: wgrad, FGRAD: fgrad}

    def test_forward(self, key: str, index: int, cts: list[bytes]) -> list[bytes]:
        """Forward ciphertexts of test batch ``index`` (after ``test_batches``)."""
        own = self._test_data[index][0]
        n_in, n_out = self.sched.project_layer.dims[key]
        rows = self._rows_of(cts, n_in, n_out, own.shape[0], f"test batch {index + 1}")
        start = time.perf_counter()
        out, state = host_forward(self.contexts[key], self.params, cts, self._w_host(key), FeaturePlan.make(rows, n_in, n_out, self.params.slots))
        self.crypto_seconds += time.perf_counter() - start
        self._test_states.setdefault(key, []).append(state)
        return out

    def test_secure(self, parts: dict[str, list[np.ndarray]]) -> dict[str, float]:
        """Unmask every test projection; the user's test on the projections."""
        sched = self.sched
        features: dict[str, list[np.ndarray]] = {}
        for key, replies in parts.items():
            states = self._test_states.pop(key, [])
            features[key] = [
                check_array(unmask_projection(r, s, self.params, f"the projection of test batch {i + 1} from '{key}'"),
                            f"collaborator '{key}'", f"test batch {i + 1}").astype(np.float32)
                for i, (r, s) in enumerate(zip(replies, states, strict=True))
            ]
        with torch.no_grad():
            self._test_data = [(sched.project_own(own), labels) for own, labels in self._test_data]
        return self.test(features)

    def end_round(self, server_round: int, test: dict[str, float], seconds: float, stats: dict[str, float]) -> None:
        """As ``VerticalHost.end_round``, with the host's CKKS seconds in the round's stats."""
        stats = {**stats, "host-crypto-seconds": self.crypto_seconds}
        self.crypto_seconds = 0.0
        super().end_round(server_round, test, seconds, stats)

    def finish(self, status: str, error: str | None = None, seconds: float = 0.0) -> dict[str, Any]:
        """As ``VerticalHost.finish``, plus the host's side of the projections."""
        if status == "completed":
            from .outputs import save_state_dict  # pylint: disable=import-outside-toplevel

            save_state_dict(self.out / "host" / "project_layer.pt", self.sched.project_layer.state_dict())
        return super().finish(status, error, seconds)
