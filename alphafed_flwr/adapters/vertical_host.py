"""The host of a vertical task, in the ServerApp: implements ``SplitLearningHost``.

The host's process lives for the whole run, so its own generator stays alive across a
round and its features keep their autograd graph: ``train_a_batch`` back-propagates into
the host's feature model directly. Collaborators' features arrive as leaf tensors that
require grad; their ``.grad`` after ``train_a_batch`` is what goes back to them.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alphafed_flwr.api.env import RunEnvironment, set_environment
from alphafed_flwr.api.errors import ConfigError, TaskFailed
from alphafed_flwr.api.hetero_nn import HeteroNNHostScheduler
from alphafed_flwr.api.log import logger
from alphafed_flwr.api.scheduler import TaskComplete, call_user, guarded
from alphafed_flwr.label_protection import GradientGuard, LabelProtection
from alphafed_flwr.psi import PsiError, PsiParty, canonical_ids, run_psi
from alphafed_flwr.strategies.protocol import (
    CHECKPOINT_ROUNDS,
    INTERSECTION_DIGEST,
    RESTORE,
    SALT,
    SPLIT_DIGEST,
    TASK,
    TEST_SIZE,
    TRAIN_SIZE,
)
from alphafed_flwr.strategies.split_learning import HostBatch, PayloadExchange, SplitLearning

from .feature_replay import batch_seed, ids_digest
from .horizontal_server import is_test_round
from .lifecycle import failures_recorded, finish_summary, resumed_summary
from .outputs import RunSummary, save_state_dict
from .vertical_common import (
    RoundCheckpoints,
    check_split,
    ids_set_digest,
    load_module_arrays,
    load_optimizer_arrays,
    module_arrays,
    optimizer_arrays,
    split_digest,
)


@dataclass(frozen=True)
class VerticalSettings:
    """Settings of a vertical run.

    Parameters
    ----------
    out_dir : Path
        The host's output folder.
    task_id : str
        The task id.
    num_collaborators : int
        Collaborators expected.
    rounds : int | None
        Overrides the host's ``max_rounds``.
    data_dir : Path | None
        The host's data folder.
    seed : int | None
        Seed of the models' initialisation.
    resume : bool
        Continue from the last round that every party completed, if checkpoints agree.
    batches_per_exchange : int
        K, batches per feature/gradient exchange.
    record : dict[str, Any]
        Extra configuration for ``summary.json``.
    """

    out_dir: Path
    task_id: str = "local-task"
    num_collaborators: int = 1
    rounds: int | None = None
    data_dir: Path | None = None
    seed: int | None = None
    resume: bool = True
    batches_per_exchange: int = 1
    record: dict[str, Any] = field(default_factory=dict)


class VerticalHost:
    """Runs a ``HeteroNNHostScheduler`` as the host of a split-learning run.

    Parameters
    ----------
    scheduler : HeteroNNHostScheduler
        The host's scheduler.
    settings : VerticalSettings
        Run settings.
    """

    def __init__(self, scheduler: HeteroNNHostScheduler, settings: VerticalSettings) -> None:
        self.scheduler = scheduler
        self.settings = settings
        self.feature_key = scheduler.feature_key
        self.out = Path(settings.out_dir)
        self.max_rounds = settings.rounds or max(scheduler.max_rounds, 1)
        scheduler.max_rounds = self.max_rounds
        self.env = RunEnvironment("host", "host", self.out, settings.data_dir, settings.task_id)
        scheduler.bind(self.env)
        self.checkpoints = RoundCheckpoints(self.out / "checkpoint")
        self.salt = secrets.token_bytes(16)
        self.summary = RunSummary(self.out, {**settings.record, "max_rounds": self.max_rounds})
        self._restore_round: int | None = None
        self._generator: Iterator[Any] | None = None
        self._batch: tuple[torch.Tensor, Any] | None = None
        self._batch_index = 0
        self._round = 0
        self._test_data: list[tuple[torch.Tensor, Any]] = []
        self._intersection: list[str] = []
        self._finished = False
        self._model_seconds = 0.0  # time in the host's own user code this round
        self.guard = GradientGuard(LabelProtection.parse(getattr(scheduler, "label_protection", None)))

    # ----- SplitLearningHost -----------------------------------------------------------
    def hello(self) -> dict[str, Any]:
        """The salt of the keyed digests (batch IDs, splits) for this run."""
        return {SALT: self.salt, TASK: self.settings.task_id}

    def prepare(self, collaborators: dict[str, dict[str, Any]], exchange: PayloadExchange) -> int:
        """Resume if every party has the host's last checkpoint round, else run the PSI."""
        sched = self.scheduler
        call_user(sched, "validate_context")
        local = sched.local_ids()
        resumed = self._try_resume(collaborators, local) if self.settings.resume else None
        if resumed is not None:
            return resumed
        self._clear_outputs()
        if self.settings.seed is not None:
            torch.manual_seed(self.settings.seed)
        originals = canonical_ids(local)
        party = PsiParty.create(originals, num_keys=2, canonical=True)
        names = list(collaborators)
        start = time.monotonic()
        logger.info("Private set intersection of %d host IDs with %s", len(party.ids), ", ".join(names))
        split: list[list[Any]] = []

        def on_common(common: list[str]) -> None:  # while the collaborators resolve theirs
            sched.set_intersection(map(originals.__getitem__, common))
            split.extend(check_split(self.feature_key, sched.train_ids, sched.test_ids))

        try:
            common, replies = run_psi(party, names, lambda reqs: exchange(reqs), on_common=on_common)
        except PsiError as exc:
            raise TaskFailed(f"private set intersection failed: {exc}") from exc
        train_ids, test_ids = split
        mine = split_digest(self.salt, train_ids, test_ids)
        for name, reply in replies.items():
            if reply.get(SPLIT_DIGEST) != mine:
                raise TaskFailed(
                    f"'{name}' splits the {len(common)} common IDs differently from the host "
                    f"(host: {len(train_ids)} train / {len(test_ids)} test; '{name}': "
                    f"{reply.get(TRAIN_SIZE)} / {reply.get(TEST_SIZE)}): split_dataset must be "
                    "deterministic and the same on every party"
                )
        self._intersection = [str(i) for i in common]
        logger.info(
            "Private set intersection: %d common IDs (%d train, %d test) in %.1fs",
            len(common), len(train_ids), len(test_ids), time.monotonic() - start,
        )
        if not train_ids:
            raise TaskFailed("no common training IDs: the parties share no samples to train on")
        return 1

    def begin_round(self, server_round: int) -> dict[str, Any]:
        """Set the round and open the host's training generator."""
        sched = self.scheduler
        self._round = server_round
        sched.set_round(server_round)
        sched.feature_model.train()
        sched.infer_model.train()
        self._batch_index = 0
        self._batch = None
        self._generator = iter(call_user(sched, "iterate_train_feature", sched.feature_model, sched.train_ids))
        extra: dict[str, Any] = {}
        if self._restore_round is not None:
            extra[RESTORE] = self._restore_round
            self._restore_round = None
        return extra

    def next_batch(self) -> HostBatch | None:
        """Pull the host's next training batch (its features keep their graph)."""
        assert self._generator is not None
        torch.manual_seed(batch_seed(self.settings.task_id, self.feature_key, self._round, self._batch_index))
        start = time.perf_counter()
        try:
            item = guarded(f"{type(self.scheduler).__name__}.iterate_train_feature", next, self._generator)
        except StopIteration:
            return None
        finally:
            self._model_seconds += time.perf_counter() - start
        features, labels, ids = _unpack_host_item(item, "iterate_train_feature")
        self._batch = (features, labels)
        self._batch_index += 1
        return _host_batch(features, ids, self.salt)

    def train_batch(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call ``train_a_batch`` with all parties' features; return the collaborators' gradients."""
        assert self._batch is not None
        own, labels = self._batch
        leaves = {key: torch.from_numpy(np.array(arr, copy=True)).requires_grad_(True) for key, arr in features.items()}
        projection = {self.feature_key: own, **leaves}
        shapes = ", ".join(f"'{k}' {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}" for k, v in projection.items())
        what = f"{type(self.scheduler).__name__}.train_a_batch (training batch {self._batch_index}; features {shapes})"
        start = time.perf_counter()
        guarded(what, self.scheduler.train_a_batch, projection, labels)
        self._model_seconds += time.perf_counter() - start
        grads = {}
        for key, leaf in leaves.items():
            if leaf.grad is None:
                raise ConfigError(
                    f"train_a_batch did not back-propagate into the features of '{key}' "
                    f"(batch {self._batch_index}): use every party's features in the loss and "
                    "call loss.backward()"
                )
            grads[key] = self.guard.apply(key, leaf.grad, labels).numpy()  # label protection
        self._batch = None
        return grads

    def is_test_round(self, server_round: int) -> bool:
        """AlphaFed's schedule: round 1, every ``log_rounds``, the last round."""
        return is_test_round(server_round, self.scheduler.log_rounds, self.max_rounds)

    def test_batches(self) -> list[HostBatch]:
        """Run the host's test generator (eval mode, no gradient)."""
        sched = self.scheduler
        sched.feature_model.eval()
        self._test_data = []
        batches = []
        try:
            with torch.no_grad():
                generator = call_user(sched, "iterate_test_feature", sched.feature_model, sched.test_ids)
                items = guarded(f"{type(sched).__name__}.iterate_test_feature", list, generator)
                for item in items:
                    features, labels, ids = _unpack_host_item(item, "iterate_test_feature")
                    self._test_data.append((features, labels))
                    batches.append(_host_batch(features, ids, self.salt))
        finally:
            sched.feature_model.train()
        return batches

    def test(self, features: dict[str, list[np.ndarray]]) -> dict[str, float]:
        """The user's test on every party's test features (positional arguments)."""
        sched = self.scheduler
        projections = [
            {self.feature_key: own, **{k: torch.from_numpy(np.array(v[i], copy=True)) for k, v in features.items()}}
            for i, (own, _) in enumerate(self._test_data)
        ]
        labels = [lab for _, lab in self._test_data]
        sched.feature_model.eval()
        sched.infer_model.eval()
        try:
            with torch.no_grad():
                return sched.collect_test(projections, labels)
        finally:
            sched.feature_model.train()
            sched.infer_model.train()
            self._test_data = []

    def is_finished(self, server_round: int) -> bool:
        """The user's ``is_task_finished()`` (``TaskComplete`` counts as finished)."""
        try:
            self._finished = bool(call_user(self.scheduler, "is_task_finished"))
        except TaskComplete:
            self._finished = True
        return self._finished

    def end_round(
        self, server_round: int, test: dict[str, float], seconds: float, stats: dict[str, float]
    ) -> None:
        """Checkpoint the host, record the round (with its timings), print the progress line."""
        stats = {**stats, **self.guard.round_stats(), "host-model-seconds": self._model_seconds}
        self._model_seconds = 0.0
        self.summary.add_round(
            {
                "round": server_round,
                "seconds": round(seconds, 3),
                "test": test,
                "stats": {k: round(v, 4) for k, v in stats.items()},
            }
        )
        sched = self.scheduler
        arrays = {**module_arrays("feature", sched.feature_model), **module_arrays("infer", sched.infer_model)}
        finished = self._finished or server_round >= self.max_rounds
        meta: dict[str, Any] = {
            "round": server_round,
            "finished": finished,
            "intersection": self._intersection,
            "summary": self.summary.data,
        }
        for prefix, opt in (("feature-opt", sched.feature_optimizer), ("infer-opt", sched.infer_optimizer)):
            opt_arrays, opt_meta = optimizer_arrays(prefix, opt)
            arrays.update(opt_arrays)
            meta.update(opt_meta)
        self.checkpoints.save(server_round, arrays, meta)
        sched.flush_outputs()
        logger.info(
            "Round %d/%d: %.1fs%s", server_round, self.max_rounds, seconds,
            f", test {' '.join(f'{k}={v:.4g}' for k, v in test.items())}" if test else "",
        )

    # ----- resume and outputs ----------------------------------------------------------
    def _try_resume(self, collaborators: dict[str, dict[str, Any]], local: list[Any]) -> int | None:
        rounds = self.checkpoints.rounds()
        if not rounds:
            return None
        last = rounds[-1]
        arrays, meta = self.checkpoints.load(last)
        if meta.get("finished") or last >= self.max_rounds:
            logger.info("The checkpoint in %s is from a finished run: starting over", self.checkpoints.folder)
            return None
        digest = ids_set_digest(self.salt, meta["intersection"])
        lacking = [
            k for k, info in collaborators.items()
            if last not in list(info.get(CHECKPOINT_ROUNDS) or []) or info.get(INTERSECTION_DIGEST) != digest
        ]
        if lacking:
            logger.warning(
                "Not resuming from round %d: %s %s no matching checkpoint; starting over",
                last, ", ".join(lacking), "has" if len(lacking) == 1 else "have",
            )
            return None
        sched = self.scheduler
        originals = canonical_ids(local)
        missing = [i for i in meta["intersection"] if i not in originals]
        if missing:
            raise TaskFailed(f"the host's IDs changed since the checkpoint ({len(missing)} common IDs are gone)")
        sched.set_intersection(originals[i] for i in meta["intersection"])
        self._intersection = list(meta["intersection"])
        load_module_arrays("feature", sched.feature_model, arrays)
        load_module_arrays("infer", sched.infer_model, arrays)
        load_optimizer_arrays("feature-opt", sched.feature_optimizer, arrays, meta)
        load_optimizer_arrays("infer-opt", sched.infer_optimizer, arrays, meta)
        self.summary = resumed_summary(self.out, self.summary.data["config"], meta, last)
        self._restore_round = last
        logger.info("Resuming after round %d (every party has its checkpoint)", last)
        return last + 1

    def _clear_outputs(self) -> None:
        for old in self.checkpoints.rounds():
            for child in (self.checkpoints.folder / f"round-{old}").iterdir():
                child.unlink()
            (self.checkpoints.folder / f"round-{old}").rmdir()
        for csv in (self.out / "metrics").rglob("*.csv"):
            csv.unlink()

    def finish(self, status: str, error: str | None = None, seconds: float = 0.0) -> dict[str, Any]:
        """Write the models and the summary; return the summary."""
        sched = self.scheduler
        if status == "completed":
            save_state_dict(self.out / "host" / "feature_model.pt", sched.feature_model.state_dict())
            save_state_dict(self.out / "host" / "infer_model.pt", sched.infer_model.state_dict())
        finish_summary(self.summary, status, seconds, error)
        sched.close_outputs()
        return self.summary.data


def _host_batch(features: torch.Tensor, ids: list[str] | None, salt: bytes) -> HostBatch:
    """What the strategy checks collaborators' batches against."""
    digest = ids_digest(salt, ids) if ids is not None else ""
    return HostBatch(int(features.shape[0]), digest, str(features.dtype).replace("torch.", ""))


def _unpack_host_item(item: Any, method: str) -> tuple[torch.Tensor, Any, list[str] | None]:
    if not isinstance(item, tuple) or len(item) not in (2, 3):
        raise ConfigError(
            f"the host's {method} must yield (features, labels) or (features, labels, ids), "
            f"got {type(item).__name__}"
        )
    features, labels = item[0], item[1]
    if not isinstance(features, torch.Tensor) or features.ndim < 1:
        raise ConfigError(f"the host's {method} must yield a features tensor first")
    ids = [str(i) for i in item[2]] if len(item) == 3 else None
    return features, labels, ids


def run_vertical_host(grid: Any, host: VerticalHost, strategy: SplitLearning) -> dict[str, Any]:
    """Run the split-learning strategy with ``host``; return the summary (raise on failure)."""
    set_environment(host.env)
    start = time.monotonic()
    with failures_recorded(lambda reason: host.finish("failed", reason, time.monotonic() - start)):
        strategy.start(grid, host, host.max_rounds)
    summary = host.finish("completed", seconds=time.monotonic() - start)
    logger.info("Outputs written to %s (host/, collaborators/, metrics/, tensorboard/, summary.json)", host.out)
    return summary


def run_host(grid: Any, scheduler: HeteroNNHostScheduler, settings: VerticalSettings) -> dict[str, Any]:
    """Run a host scheduler with its family's adapter and strategy (plain or secure
    HeteroNN); return the summary (raise on failure)."""
    from alphafed_flwr.families import family_of  # pylint: disable=import-outside-toplevel
    from alphafed_flwr.strategies.codecs import ExchangeCodecs  # pylint: disable=import-outside-toplevel

    family = family_of(scheduler)
    strategy = family.strategy_class()(
        num_collaborators=settings.num_collaborators,
        schedule_timeout=float(scheduler.schedule_timeout),
        calculation_timeout=float(scheduler.calculation_timeout),
        batches_per_exchange=settings.batches_per_exchange,
        codecs=ExchangeCodecs.parse(getattr(scheduler, "exchange_codecs", None)),
    )
    return run_vertical_host(grid, family.server_adapter()(scheduler, settings), strategy)
