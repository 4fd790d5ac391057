"""Where each party's scheduler instance comes from, and the per-process cache of them.

- ``PickledTemplate``: the driver's scheduler object, serialized with cloudpickle and shipped
  inside the ClientApp to its own Ray actors (one trust domain: a simulation on one machine).
- ``TaskFileTemplate``: the task file, loaded from the Flower app bundle (deployment); no
  pickle ever crosses the network.

Instances are cached per process and party (least recently used first out), so a Ray actor
or a warm executor does not rebuild models and datasets for every message. Nothing that must
survive lives only in this cache: weights come with each message and optimizer state lives
in the node's ``context.state``.
"""

from __future__ import annotations

import copy
import hashlib
import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import cloudpickle

from alphafed_flwr.api.env import RunEnvironment
from alphafed_flwr.api.scheduler import Scheduler
from alphafed_flwr.loader import TaskRef, load_object

CACHE_SIZE = 16


class SchedulerSource(Protocol):
    """Produces fresh, unbuilt scheduler instances of one task."""

    key: str

    def new_instance(self) -> Scheduler:
        """A fresh copy of the task's scheduler."""


class PickledTemplate:
    """A scheduler object carried as cloudpickle bytes (simulation only).

    Parameters
    ----------
    scheduler : Scheduler
        The unbuilt scheduler (as loaded from the task file or passed in Python).
    """

    def __init__(self, scheduler: Scheduler) -> None:
        module = sys.modules.get(type(scheduler).__module__)
        if module is not None and type(scheduler).__module__.startswith("alphafed_task_"):
            cloudpickle.register_pickle_by_value(module)  # task files are not importable by name
        self.payload = cloudpickle.dumps(scheduler)
        self.key = hashlib.sha1(self.payload).hexdigest()

    def new_instance(self) -> Scheduler:
        """Unpickle a fresh copy (on a GPU-less client, a CUDA ``device`` becomes the CPU)."""
        instance: Scheduler = cloudpickle.loads(self.payload)
        fit_device(instance, self.key)
        return instance


_device_warned: set[str] = set()


def fit_device(instance: Scheduler, key: str) -> None:
    """Run on the CPU a scheduler whose ``__init__`` chose CUDA in another process.

    AlphaFed tasks pick ``self.device`` in ``__init__``; in a simulation ``__init__`` runs
    in the driver, so on a machine with a GPU every client would get ``cuda`` even when
    Ray gave it no GPU (and hides every GPU from it). Such a client runs on the CPU, with
    a warning (once per task and process).
    """
    import torch  # pylint: disable=import-outside-toplevel

    if instance.device.type != "cuda" or torch.cuda.is_available():
        return
    instance.device = "cpu"
    if key not in _device_warned:
        _device_warned.add(key)
        from alphafed_flwr.api.log import logger  # pylint: disable=import-outside-toplevel

        logger.warning(
            "%s chose device cuda, but this process has no GPU (Ray gives a client GPUs only "
            "with --gpus-per-client): it runs on the CPU",
            type(instance).__name__,
        )


class TaskFileTemplate:
    """A scheduler loaded from a task file (``path[:name]``), once per process.

    Parameters
    ----------
    ref : str
        ``path/to/task.py[:name]``.
    kind : type | tuple[type, ...]
        Scheduler class(es) the object must be an instance of.
    """

    _loaded: dict[str, Scheduler] = {}

    def __init__(self, ref: str, kind: type | tuple[type, ...] = Scheduler) -> None:
        self.ref = ref
        self.kind = kind
        self.key = hashlib.sha1(f"{TaskRef.parse(ref).path.resolve()}:{ref}".encode()).hexdigest()

    def new_instance(self) -> Scheduler:
        """A deep copy of the loaded scheduler."""
        if self.key not in self._loaded:
            self._loaded[self.key] = load_object(self.ref, self.kind).obj
        return copy.deepcopy(self._loaded[self.key])


def stable_seed(*parts: object) -> int:
    """A seed derived from ``parts`` that is the same in every process (unlike ``hash``)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


_instances: OrderedDict[tuple[str, str], Scheduler] = OrderedDict()


def party_scheduler(
    source: SchedulerSource,
    env: RunEnvironment | Callable[[Scheduler], RunEnvironment],
    scope: str,
    prepare: Callable[[Any], None] | None = None,
) -> Scheduler:
    """The cached scheduler of one party (``scope`` distinguishes runs and nodes).

    A new instance is bound to ``env`` (or to ``env(instance)``) and passed to ``prepare``,
    once.
    """
    key = (source.key, scope)
    sched = _instances.get(key)
    if sched is None:
        sched = source.new_instance()
        sched.bind(env if isinstance(env, RunEnvironment) else env(sched))
        if prepare is not None:
            prepare(sched)
        _instances[key] = sched
        while len(_instances) > CACHE_SIZE:
            _, old = _instances.popitem(last=False)
            old.close_outputs()
    else:
        _instances.move_to_end(key)
    return sched
