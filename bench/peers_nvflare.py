"""NVFlare 2.9 side of ``bench/vertical_peers.py``: the job's learner for NVFlare's SplitNN workflow.

Runs only inside the bench's NVFlare venv: the bench copies this file and ``peers_job.py``
into the NVFlare job it generates (``SplitNNController`` on the server,
``SplitNNLearnerExecutor`` + ``PeersSplitLearner`` on two sites), as NVFlare's CIFAR-10
split-learning example does with its ``CIFAR10LearnerSplitNN``:

- ``site-1`` (split id 0) holds the right halves and its bottom CNN. It drives the loop:
  per batch, its bottom model's activations go to ``site-2`` in an aux request (a DXO
  serialized with FOBS, float32), the reply carries their gradient, and it back-propagates
  and steps at once (the example defers this step to the next batch: the same updates);
- ``site-2`` (split id 1) holds the labels, the left halves, its bottom CNN and the MLP top
  model; its aux handler trains both on a batch and returns the activations' gradient.

After each epoch ``site-1`` sends the test set's activations (batches of 1,000) and
``site-2`` appends the epoch's test accuracy to ``$PEERS_RESULT`` (one JSON line).
"""

from __future__ import annotations

import json
import os

import numpy as np
import peers_job as job
import torch
import torch.nn.functional as F
from torch import nn

from nvflare.apis.dxo import DXO, from_shareable
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.learner_spec import Learner
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.workflows.splitnn_workflow import SplitNNConstants, SplitNNDataKind
from nvflare.app_opt.pt.decomposers import TensorDecomposer
from nvflare.fuel.utils import fobs

EPOCH = "_peers_epoch_"
LAST = "_peers_last_test_batch_"
RESULT_ENV = "PEERS_RESULT"


class PeersSplitNN(nn.Module):
    """All three seeded parts; ``split_id`` says which ones this site trains."""

    def __init__(self, split_id: int = 0) -> None:
        super().__init__()
        self.split_id = split_id
        self.right = job.build("right")
        self.left = job.build("left")
        self.top = job.build("top")

    def get_split_id(self) -> int:
        return self.split_id

    def own_parts(self) -> list[nn.Module]:
        return [self.right] if self.split_id == 0 else [self.left, self.top]


class PeersSplitLearner(Learner):
    """The job's two sites on NVFlare's SplitNN workflow (see the module docstring)."""

    def __init__(self, data_dir: str, split_id: int = 0) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.split_id = split_id
        self.model: PeersSplitNN | None = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self.clock = job.EpochClock(job.NVFLARE)
        self.train_x = self.train_y = self.test_x = self.test_y = None
        self.test_correct = 0
        self.test_total = 0
        fobs.register(TensorDecomposer)

    # ----- set-up ----------------------------------------------------------------------------
    def initialize(self, parts: dict, fl_ctx: FLContext) -> None:
        self.model = PeersSplitNN(self.split_id)
        self.optimizers = [job.optimizer(part) for part in self.model.own_parts()]
        images, labels = job.cached_split(self.data_dir, True)
        test_images, test_labels = job.cached_split(self.data_dir, False)
        half = job.right_half if self.split_id == 0 else job.left_half
        self.train_x, self.test_x = half(images), half(test_images)
        self.train_y, self.test_y = labels, test_labels
        self.clock.threads(f"site-{self.split_id + 1}")
        if self.split_id == 1:
            engine = fl_ctx.get_engine()
            engine.register_aux_message_handler(SplitNNConstants.TASK_TRAIN_LABEL_STEP, self._train_label_side)
            engine.register_aux_message_handler(SplitNNConstants.TASK_VALID_LABEL_STEP, self._test_label_side)
        self.log_info(fl_ctx, f"split id {self.split_id}, {job.configure_threads()} torch threads, "
                              f"{len(self.train_x)} training and {len(self.test_x)} test images")

    def init_model(self, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        """Load the persistor's weights (the same seeded ones) into this site's model."""
        weights = from_shareable(shareable).data
        state = self.model.state_dict()
        loaded = {k: torch.as_tensor(np.reshape(v, state[k].shape)) for k, v in weights.items() if k in state}
        if not loaded:
            raise ValueError("no global weights matched the model")
        state.update(loaded)
        self.model.load_state_dict(state)
        return make_reply(ReturnCode.OK)

    # ----- site-1: the loop ------------------------------------------------------------------
    def train(self, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if self.split_id != 0:
            return make_reply(ReturnCode.OK)  # site-2 serves aux requests only
        epochs = shareable.get_header(AppConstants.NUM_ROUNDS)
        names = list(shareable.get_header(SplitNNConstants.TARGET_NAMES))
        other = next(name for name in names if name != fl_ctx.get_identity_name())
        engine = fl_ctx.get_engine()
        step = 0
        for epoch in range(1, epochs + 1):
            self.clock.mark(epoch, "start")
            for ids in job.batches(job.epoch_order(range(len(self.train_x)), epoch)):
                if abort_signal.triggered:
                    return make_reply(ReturnCode.TASK_ABORTED)
                self.model.train()
                activations = self.model.right(self.train_x[torch.tensor(ids)])
                request = self._request(SplitNNDataKind.ACTIVATIONS, activations.detach(), ids, step, epoch)
                reply = self._ask(engine, other, SplitNNConstants.TASK_TRAIN_LABEL_STEP, request, fl_ctx)
                gradient = fobs.loads(from_shareable(reply).data[SplitNNConstants.DATA])
                for opt in self.optimizers:
                    opt.zero_grad()
                activations.backward(gradient)
                for opt in self.optimizers:
                    opt.step()
                step += 1
            self._test(engine, other, epoch, fl_ctx)
        return make_reply(ReturnCode.OK)

    def _test(self, engine, other: str, epoch: int, fl_ctx: FLContext) -> None:
        self.model.eval()
        ids = list(range(len(self.test_x)))
        chunks = list(job.batches(ids, job.TEST_BATCH_SIZE))
        with torch.no_grad():
            for i, chunk in enumerate(chunks):
                activations = self.model.right(self.test_x[torch.tensor(chunk)])
                request = self._request(SplitNNDataKind.ACTIVATIONS, activations, chunk, i, epoch)
                request.set_header(LAST, i == len(chunks) - 1)
                self._ask(engine, other, SplitNNConstants.TASK_VALID_LABEL_STEP, request, fl_ctx)

    @staticmethod
    def _request(kind: str, tensor: torch.Tensor, ids: list[int], step: int, epoch: int) -> Shareable:
        dxo = DXO(data={SplitNNConstants.DATA: fobs.dumps(tensor)}, data_kind=kind)
        dxo.set_meta_prop(SplitNNConstants.BATCH_INDICES, np.asarray(ids))
        request = dxo.to_shareable()
        request.set_header(AppConstants.CURRENT_ROUND, step)
        request.set_header(EPOCH, epoch)
        return request

    @staticmethod
    def _ask(engine, other: str, topic: str, request: Shareable, fl_ctx: FLContext) -> Shareable:
        replies = engine.send_aux_request(
            targets=other, topic=topic, request=request, timeout=SplitNNConstants.TIMEOUT, fl_ctx=fl_ctx
        )
        reply = replies.get(other)
        if reply is None or reply.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            raise RuntimeError(f"{topic}: no good reply from {other}: {reply}")
        return reply

    # ----- site-2: aux handlers --------------------------------------------------------------
    def _train_label_side(self, topic: str, request: Shareable, fl_ctx: FLContext) -> Shareable:
        dxo = from_shareable(request)
        ids = torch.as_tensor(dxo.get_meta_prop(SplitNNConstants.BATCH_INDICES))
        received = fobs.loads(dxo.data[SplitNNConstants.DATA]).requires_grad_(True)
        self.model.train()
        for opt in self.optimizers:
            opt.zero_grad()
        fused = torch.cat((self.model.left(self.train_x[ids]), received), 1)
        F.nll_loss(self.model.top(fused), self.train_y[ids]).backward()
        for opt in self.optimizers:
            opt.step()
        self.clock.mark(int(request.get_header(EPOCH)), "step")
        return DXO(data={SplitNNConstants.DATA: fobs.dumps(received.grad)},
                   data_kind=SplitNNDataKind.GRADIENT).to_shareable()

    def _test_label_side(self, topic: str, request: Shareable, fl_ctx: FLContext) -> Shareable:
        dxo = from_shareable(request)
        ids = torch.as_tensor(dxo.get_meta_prop(SplitNNConstants.BATCH_INDICES))
        received = fobs.loads(dxo.data[SplitNNConstants.DATA])
        self.model.eval()
        with torch.no_grad():
            out = self.model.top(torch.cat((self.model.left(self.test_x[ids]), received), 1))
        self.test_correct += int((out.argmax(1) == self.test_y[ids]).sum())
        self.test_total += len(ids)
        if request.get_header(LAST):
            accuracy = self.test_correct / self.test_total
            epoch = int(request.get_header(EPOCH))
            self.log_info(fl_ctx, f"epoch {epoch} test accuracy {accuracy:.4f} ({self.test_total} images)")
            path = os.environ.get(RESULT_ENV) or os.path.join(fl_ctx.get_prop(FLContextKey.APP_ROOT), "result.jsonl")
            with open(path, "a", encoding="utf-8") as out_file:
                out_file.write(json.dumps({"epoch": epoch, "accuracy": accuracy, "images": self.test_total}) + "\n")
            self.test_correct = self.test_total = 0
        return make_reply(ReturnCode.OK)
