"""Load a scheduler (or a DataChecker) from a task file: ``path/to/task.py[:name]``.

The file runs as a module under ``launch_capture``, so a tutorial-style script that ends in
``scheduler.launch_task(...)`` registers its scheduler instead of starting training.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from alphafed_flwr import _alias
from alphafed_flwr.api.errors import ConfigError, UserCodeError

T = TypeVar("T")


@dataclass(frozen=True)
class TaskRef:
    """A parsed ``path[:name]`` reference."""

    path: Path
    name: str | None = None

    @classmethod
    def parse(cls, text: str) -> TaskRef:
        """Split ``path/to/task.py:name``; the name part must be a Python identifier."""
        path, sep, name = text.rpartition(":")
        if sep and name.isidentifier() and path:
            return cls(Path(path).expanduser(), name)
        return cls(Path(text).expanduser(), None)

    def __str__(self) -> str:
        return f"{self.path}:{self.name}" if self.name else str(self.path)


@dataclass
class LoadedTask:
    """A task file's module, the object found in it and the ``launch_task`` id, if any."""

    module: ModuleType
    obj: Any
    task_id: str | None


def load_module(path: Path) -> tuple[ModuleType, list[tuple[Any, str | None]]]:
    """Execute ``path`` as a fresh module; return it and its captured ``launch_task`` calls.

    The file's folder goes on ``sys.path`` so that it can import its sibling modules.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise ConfigError(
            f"task file '{path}' does not exist: give the path of a Python file "
            "(path/to/task.py or path/to/task.py:SchedulerName)"
        )
    if path.suffix != ".py":
        raise ConfigError(f"task file '{path}' is not a .py file")
    _alias.install()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    module_name = f"alphafed_task_{path.stem}_{digest}"
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load '{path}' as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    from alphafed_flwr.api.scheduler import launch_capture  # pylint: disable=import-outside-toplevel  # torch

    with launch_capture() as calls:
        try:
            spec.loader.exec_module(module)
        except (ConfigError, UserCodeError):
            sys.modules.pop(module_name, None)
            raise
        except SyntaxError as exc:
            sys.modules.pop(module_name, None)
            raise ConfigError(
                f"syntax error in {exc.filename}:{exc.lineno}: {exc.msg}"
            ) from exc
        except Exception as exc:  # noqa: BLE001 - reported with the user's line
            sys.modules.pop(module_name, None)
            raise UserCodeError(f"loading task file '{path.name}'", exc) from exc
    return module, calls


def load_object(
    ref: TaskRef | str,
    kind: type[T] | tuple[type, ...],
    init_kwargs: dict[str, Any] | None = None,
) -> LoadedTask:
    """Find an instance of ``kind`` in a task file.

    With ``:name``: that attribute (an instance, or a class instantiated without arguments).
    Without: the object registered through ``launch_task``, else the only module-level
    instance, else the only concrete class defined in the file (instantiated). Classes are
    instantiated with ``init_kwargs``.
    """
    init_kwargs = init_kwargs or {}
    ref = TaskRef.parse(ref) if isinstance(ref, str) else ref
    kinds = kind if isinstance(kind, tuple) else (kind,)
    wanted = " or ".join(k.__name__ for k in kinds)
    module, calls = load_module(ref.path)
    launched = [(obj, tid) for obj, tid in calls if isinstance(obj, kinds)]
    if ref.name is not None:
        if not hasattr(module, ref.name):
            names = sorted(n for n, v in vars(module).items() if _is_candidate(v, kinds, module))
            raise ConfigError(
                f"'{ref.name}' is not defined in {ref.path}; "
                f"{wanted} objects and classes there: {names or 'none'}"
            )
        obj = getattr(module, ref.name)
        task_id = next((tid for o, tid in launched if o is obj), None)
        return LoadedTask(module, _materialize(obj, kinds, ref, init_kwargs), task_id)
    if launched:
        if len(launched) > 1:
            raise ConfigError(
                f"{ref.path} calls launch_task() {len(launched)} times; "
                f"choose one with {ref.path}:NAME"
            )
        return LoadedTask(module, launched[0][0], launched[0][1])
    instances = {n: v for n, v in vars(module).items() if isinstance(v, kinds)}
    classes = {
        n: v
        for n, v in vars(module).items()
        if inspect.isclass(v)
        and issubclass(v, kinds)
        and v.__module__ == module.__name__
        and not inspect.isabstract(v)
    }
    for found in (instances, classes):
        if len(found) == 1:
            (name, obj), = found.items()
            return LoadedTask(module, _materialize(obj, kinds, TaskRef(ref.path, name), init_kwargs), None)
        if len(found) > 1:
            raise ConfigError(
                f"{ref.path} defines several {wanted}s ({', '.join(sorted(found))}): "
                f"choose one with {ref.path}:NAME"
            )
    raise ConfigError(
        f"{ref.path} defines no {wanted}: define a subclass, create an instance, "
        "or call launch_task() on one"
    )


def _is_candidate(value: Any, kinds: tuple[type, ...], module: ModuleType) -> bool:
    if isinstance(value, kinds):
        return True
    return inspect.isclass(value) and issubclass(value, kinds) and value.__module__ == module.__name__


def _materialize(
    obj: Any, kinds: tuple[type, ...], ref: TaskRef, init_kwargs: dict[str, Any]
) -> Any:
    wanted = " or ".join(k.__name__ for k in kinds)
    if isinstance(obj, kinds):
        return obj
    if inspect.isclass(obj) and issubclass(obj, kinds):
        required = [
            p.name
            for p in inspect.signature(obj).parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in init_kwargs
        ]
        if required:
            raise ConfigError(
                f"{ref} is a class whose constructor needs {required}: create the "
                "instance in the file (e.g. scheduler = "
                f"{obj.__name__}(...); scheduler.launch_task()) and point at it"
            )
        try:
            return obj(**init_kwargs)
        except (ConfigError, UserCodeError):
            raise
        except Exception as exc:  # noqa: BLE001
            raise UserCodeError(f"{obj.__name__}()", exc) from exc
    raise ConfigError(f"{ref} is a {type(obj).__name__}, not a {wanted}")
