"""The scheduler base class, ``DataChecker`` and the ``launch_task`` hook (pure torch)."""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import torch

from .env import RunEnvironment, current_environment, default_device
from .errors import ConfigError, TaskFailed, UserCodeError
from .fs import party_root
from .loggers import logger, task_logger
from .metrics import MetricsGroup, csv_path_for, declared_metrics, numeric_items
from .mock import current_mock

__all__ = ["ConfigError", "DataChecker", "Scheduler", "TaskComplete", "TaskFailed", "launch_capture"]

# Who runs a scheduler whose script calls launch_task() outside our tools.
DIRECT_LAUNCHER = "alphafed_flwr.simulation.local:launch_directly"

_captures: list[list[tuple[Any, str | None]]] = []

#: Roles whose scheduler is AlphaFed's aggregator (``is_aggregator``).
AGGREGATOR_ROLES = ("server", "host")

#: File in a party's root folder (``alphafed.fs.get_root_dir``) that keeps its push_log.
PUSH_LOG_FILE = "push_log.log"


@contextmanager
def launch_capture() -> Iterator[list[tuple[Scheduler, str | None]]]:
    """While active, ``launch_task`` records ``(scheduler, task_id)`` instead of running."""
    calls: list[tuple[Scheduler, str | None]] = []
    _captures.append(calls)
    try:
        yield calls
    finally:
        _captures.remove(calls)


class TaskComplete(Exception):
    """Raised by user code to end the task early (AlphaFed compatibility)."""


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


class Scheduler:
    """Framework side shared by all schedulers.

    Subclasses list the methods users must implement in ``REQUIRED_METHODS``; a class that
    lacks one cannot be instantiated, and the error names every missing method.

    Parameters
    ----------
    name : str | None
        Task name; defaults to the task id.
    max_rounds : int
        Rounds to run; 0 means a single round.
    calculation_timeout : int
        Seconds the local work of one round (or one exchange) may take.
    schedule_timeout : int
        Seconds to wait for parties to gather or to answer control steps.
    log_rounds : int
        Test every ``log_rounds`` rounds (0: only the first and last round).
    """

    #: Methods users must implement; a tuple lists alternative names (AlphaFed 0.1.x/0.4.x).
    REQUIRED_METHODS: ClassVar[tuple[str | tuple[str, ...], ...]] = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> Scheduler:
        missing = [
            " or ".join(names)
            for names in map(_names, cls.REQUIRED_METHODS)
            if not any(_implemented(cls, name) for name in names)
        ]
        if missing:
            required = ", ".join(" or ".join(_names(m)) for m in cls.REQUIRED_METHODS)
            raise ConfigError(
                f"{cls.__name__} does not implement {', '.join(missing)}: add "
                f"{'this method' if len(missing) == 1 else 'these methods'} to the class "
                f"(a {_api_base(cls)} subclass implements {required})"
            )
        return super().__new__(cls)

    def __init__(
        self,
        name: str | None = None,
        max_rounds: int = 0,
        calculation_timeout: int = 300,
        schedule_timeout: int = 30,
        log_rounds: int = 0,
    ) -> None:
        self.name = name
        self.max_rounds = _check_int("max_rounds", max_rounds, 0)
        self.calculation_timeout = _check_int("calculation_timeout", calculation_timeout, 1)
        self.schedule_timeout = _check_int("schedule_timeout", schedule_timeout, 1)
        self.log_rounds = _check_int("log_rounds", log_rounds, 0)
        self._round = 1
        self._task_id: str | None = None
        self._env: RunEnvironment | None = None
        self._metrics: dict[str, MetricsGroup] = {}
        self._tb_writer: Any = None

    # ----- framework-provided attributes ---------------------------------------------
    @property
    def current_round(self) -> int:
        """The round being run, starting at 1."""
        return self._round

    @current_round.setter
    def current_round(self, value: int) -> None:
        self._round = _check_int("current_round", value, 1)

    @property
    def task_id(self) -> str:
        """The task id given to ``launch_task``, else the name, else ``"local-task"``."""
        env = self._party_env()
        if self._task_id:
            return self._task_id
        if self.name:
            return self.name
        return env.task_id if env else "local-task"

    @task_id.setter
    def task_id(self, value: str | None) -> None:
        self._task_id = value

    @property
    def id(self) -> str:
        """This party's id: ``server``, ``client-<partition>``, a feature key, ``local``
        outside a run (AlphaFed: the node id). Assignable."""
        if "_id" in self.__dict__:
            return self.__dict__["_id"]
        env = self._party_env()
        return env.party if env is not None else "local"

    @id.setter
    def id(self, value: str) -> None:
        self.__dict__["_id"] = value

    @property
    def is_aggregator(self) -> bool:
        """Whether this party aggregates (the server, the vertical host). Assignable."""
        if "_is_aggregator" in self.__dict__:
            return self.__dict__["_is_aggregator"]
        env = self._party_env()
        return env is not None and env.role in AGGREGATOR_ROLES

    @is_aggregator.setter
    def is_aggregator(self, value: bool) -> None:
        self.__dict__["_is_aggregator"] = bool(value)

    @property
    def device(self) -> torch.device:
        """The torch device the task's code uses: what it assigns to ``self.device``
        (AlphaFed tasks do so in ``__init__``), else the run's default (the CPU)."""
        if "_device" in self.__dict__:
            return self.__dict__["_device"]
        return default_device(self._party_env())

    @device.setter
    def device(self, value: torch.device | str) -> None:
        self.__dict__["_device"] = torch.device(value)

    def push_log(self, message: str) -> None:
        """Log ``message`` (``alphafed.task`` logger) and, in a run with an output folder,
        append it with the time and round to ``<party root>/push_log.log``."""
        if not isinstance(message, str) or not message:
            raise ConfigError(f"push_log needs a non-empty string, got {message!r}")
        task_logger.info("[%s] %s", self.id, message)
        env = self._env
        if env is None or env.out_dir is None:
            return
        path = party_root(env) / PUSH_LOG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        with path.open("a", encoding="utf-8") as handle:
            handle.write(f"{stamp}\tround {self._round}\t{message}\n")

    def _party_env(self) -> RunEnvironment | None:
        """The bound environment, else this process's (safe before ``__init__``)."""
        return self.__dict__.get("_env") or current_environment()

    @property
    def environment(self) -> RunEnvironment | None:
        """Where this scheduler runs (set by the adapter)."""
        return self._env

    @property
    def tb_writer(self) -> Any:
        """A TensorBoard ``SummaryWriter`` writing into this party's output folder."""
        if self._tb_writer is None:
            from torch.utils.tensorboard import SummaryWriter  # lazy: tensorboard is heavy

            env = self._env
            log_dir = env.tensorboard_dir if env is not None else None
            self._tb_writer = SummaryWriter(log_dir=str(log_dir) if log_dir else None)
        return self._tb_writer

    def get_metrics(self, name: str) -> MetricsGroup:
        """The metrics group ``name`` declared with ``@register_metrics``."""
        if name not in self._metrics:
            declared = dict(declared_metrics(self))
            if name not in declared:
                known = sorted(set(declared) | set(self._metrics))
                raise ConfigError(
                    f"no metrics group '{name}': declare it with "
                    f"@register_metrics(name='{name}', keys=[...]) on a method "
                    f"(declared groups: {known or 'none'})"
                )
            self._ensure_metrics(name, declared[name])
        return self._metrics[name]

    def _ensure_metrics(self, name: str, keys: list[str]) -> None:
        if name not in self._metrics:
            env = self._env
            path = (
                csv_path_for(env.out_dir, name)
                if env is not None and env.out_dir is not None and env.role in WRITES_METRICS
                else None
            )
            self._metrics[name] = MetricsGroup(name, keys, lambda: self._round, path)

    # ----- task life cycle -------------------------------------------------------------
    def launch_task(self, task_id: str | None = None, **_: Any) -> None:
        """Start the task.

        Loaded by alphafed-flwr's tools (simulation, server, client), this only registers
        the scheduler. Run directly (``python script.py``), it starts a local simulation.
        """
        self._task_id = task_id
        if _captures:
            _captures[-1].append((self, task_id))
            return
        _launch_directly(self, task_id)

    def submit(self, task_id: str) -> None:
        """AlphaFed 0.4.x's ``launch_task``: registers the scheduler when alphafed-flwr's
        tools load the script; run directly, it starts a local simulation."""
        self.launch_task(task_id=task_id)

    def _run(
        self,
        id: str | None = None,
        task_id: str | None = None,
        is_initiator: bool = False,
        recover: bool = False,
    ) -> None:
        """AlphaFed's per-party entry point, called by its mock-mode and run scripts.

        Loaded by alphafed-flwr's tools, it only registers the scheduler. Run directly,
        the initiator starts a local simulation with one virtual client per other node of
        the enclosing ``mock_context`` (``$ALPHAFED_LOCAL_CLIENTS`` or 3 without one),
        resuming from its checkpoint if ``recover``; any other party is refused, because
        the initiator's simulation already runs every party.
        """
        if id is not None:
            self.id = id
        self._task_id = task_id
        if _captures:
            _captures[-1].append((self, task_id))
            return
        if not is_initiator:
            logger.error(
                "%s._run(id=%r, is_initiator=False): alphafed-flwr simulates every party in "
                "the initiator's process, so a data owner's script has nothing to run. Run "
                "only the initiator's script (is_initiator=True), or: python -m "
                "alphafed_flwr.simulation <task file> --num-clients N",
                type(self).__name__,
                id,
            )
            raise SystemExit(2)
        mock = current_mock()
        others = mock.other_nodes() if mock is not None else []
        _launch_directly(self, task_id, num_clients=len(others) or None, fresh=not recover)

    def validate_context(self) -> None:
        """Check the configuration; subclasses call ``super().validate_context()`` first."""

    def is_task_finished(self) -> bool:
        """Whether the task ends after the current round (default: max rounds reached)."""
        return self._is_reach_max_rounds()

    def _is_reach_max_rounds(self) -> bool:
        return self._round >= max(self.max_rounds, 1)

    # ----- used by adapters ------------------------------------------------------------
    def bind(self, env: RunEnvironment) -> None:
        """Attach the run environment (adapters call this once per scheduler instance)."""
        self._env = env
        for name, keys in declared_metrics(self):
            self._ensure_metrics(name, keys)

    def set_round(self, server_round: int) -> None:
        """Set ``current_round``."""
        self._round = server_round

    def call_first(self, names: tuple[str, ...], *args: Any) -> Any:
        """Call the first of ``names`` the user implemented (e.g. ``test``/``run_test``)."""
        for name in names:
            if _implemented(type(self), name):
                return call_user(self, name, *args)
        raise ConfigError(f"{type(self).__name__} implements none of {', '.join(names)}")

    def lazy(self, attr: str, names: tuple[str, ...], kind: type, *args: Any) -> Any:
        """``self.<attr>``, built once by the first of ``names`` the user implemented, and
        checked to be an instance of ``kind`` (for ``model``, ``optimizer``, loaders...)."""
        value = getattr(self, attr, None)
        if value is None:
            value = self.call_first(names, *args)
            if not isinstance(value, kind):
                raise ConfigError(
                    f"{type(self).__name__}.{names[0]} must return a "
                    f"{kind.__module__}.{kind.__qualname__}, got {type(value).__name__}"
                )
            setattr(self, attr, value)
        return value

    def call_test(self, *args: Any) -> Any:
        """Run the user's ``test`` (or ``run_test``) and wrap its errors."""
        return self.call_first(TEST_METHODS, *args)

    def collect_test(self, *args: Any) -> dict[str, float]:
        """Run the user's test; return the numeric values it recorded or returned.

        Values come from the rows appended to metrics groups during the call and from a
        returned dict (AlphaFed 0.1.x tests returned one).
        """
        before = {name: len(group.rows) for name, group in self._metrics.items()}
        returned = self.call_test(*args)
        rows = [
            row
            for name, group in self._metrics.items()
            for row in group.rows[before.get(name, 0) :]
        ]
        if isinstance(returned, Mapping):
            rows.append(dict(returned))
        return numeric_items(rows)

    def flush_outputs(self) -> None:
        """Flush TensorBoard events so that nothing is lost if the process ends."""
        if self._tb_writer is not None:
            self._tb_writer.flush()

    def close_outputs(self) -> None:
        """Close the TensorBoard writer."""
        if self._tb_writer is not None:
            self._tb_writer.close()
            self._tb_writer = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tb_writer"] = None  # writers hold files and threads; each process opens its own
        return state


def _launch_directly(scheduler: Any, task_id: str | None, **options: Any) -> None:
    """Hand a script run directly (``python script.py``) to ``DIRECT_LAUNCHER``."""
    module, _, attr = DIRECT_LAUNCHER.partition(":")
    launcher: Callable[..., None] = getattr(importlib.import_module(module), attr)
    launcher(scheduler, task_id, **options)


#: AlphaFed 0.1.x called the test ``test``, 0.4.x ``run_test``; either is accepted.
TEST_METHODS = ("test", "run_test")

#: Roles whose metrics groups are written as CSV files (clients reply theirs to the server).
WRITES_METRICS = ("server", "host", "local")


def guarded(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call user code ``fn``; its exceptions become ``UserCodeError`` naming ``what``."""
    try:
        return fn(*args, **kwargs)
    except (ConfigError, UserCodeError, TaskComplete, StopIteration):
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with the user's location
        raise UserCodeError(what, exc) from exc


def call_user(obj: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call ``obj.method(*args, **kwargs)``; user exceptions become ``UserCodeError``."""
    return guarded(f"{type(obj).__name__}.{method}", getattr(obj, method), *args, **kwargs)


def _names(entry: str | tuple[str, ...]) -> tuple[str, ...]:
    return (entry,) if isinstance(entry, str) else entry


def _implemented(cls: type, method: str) -> bool:
    """Whether ``method`` is defined by a user class rather than by this package."""
    for klass in cls.__mro__:
        if method in klass.__dict__:
            value = klass.__dict__[method]
            return callable(value) and not klass.__module__.startswith("alphafed_flwr.")
    return False


def _api_base(cls: type) -> str:
    for klass in cls.__mro__:
        if klass.__module__.startswith("alphafed_flwr.api."):
            return klass.__name__
    return "Scheduler"


class DataChecker(ABC):
    """Checks a party's local data before it joins a task.

    Parameters
    ----------
    task_id : str | None
        The task whose data is checked (AlphaFed 0.4.x passes it to ``submit`` instead).
    """

    def __init__(self, task_id: str | None = None) -> None:
        self.task_id = task_id

    def submit(self, task_id: str) -> None:
        """AlphaFed 0.4.x: hand the checker to the platform. Loaded by alphafed-flwr's tools,
        this registers it; run directly, it runs the check and logs the result."""
        self.task_id = task_id
        if _captures:
            _captures[-1].append((self, task_id))
            return
        ok, reason = self.execute_verification()
        if ok:
            logger.info("Data check of task %s passed: %s", task_id, reason)
        else:
            logger.error("Data check of task %s failed: %s", task_id, reason)

    @abstractmethod
    def verify_data(self) -> tuple[bool, str]:
        """Return ``(ok, reason)``."""

    def execute_verification(self) -> tuple[bool, str]:
        """Run ``verify_data``; an exception or a malformed result is a failed check."""
        try:
            result = self.verify_data()
        except Exception as exc:  # noqa: BLE001 - reported as the check's reason
            return False, str(UserCodeError(f"{type(self).__name__}.verify_data", exc))
        if (
            not isinstance(result, tuple)
            or len(result) != 2
            or not isinstance(result[0], bool)
        ):
            return False, (
                f"{type(self).__name__}.verify_data must return (bool, str), got {result!r}"
            )
        return result[0], str(result[1])
