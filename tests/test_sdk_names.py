"""Every public name of alphamed-federated 0.4.9 either works under the ``alphafed`` alias
or raises an ImportError that says what to use instead.

The names come from ``fixtures/alphafed_0.4.9_public_names.txt`` (generated from the SDK's
wheel by ``fixtures/extract_public_names.py``), so no test downloads the wheel.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from alphafed_flwr.api.errors import NotProvidedError

FIXTURE = Path(__file__).parent / "fixtures" / "alphafed_0.4.9_public_names.txt"


def sdk_names() -> list[tuple[str, str, str]]:
    """``(module, name, kind)`` for each line of the fixture."""
    lines = FIXTURE.read_text().splitlines()
    return [tuple(line.split()) for line in lines if line and not line.startswith("#")]  # type: ignore[misc]


NAMES = sdk_names()

#: Modules whose every name (other than submodules) must work, as the brief promises.
MUST_WORK = {
    "alphafed",
    "alphafed.fs",
    "alphafed.loggers",
    "alphafed.mock",
    "alphafed.scheduler",
    "alphafed.fed_prox",
    "alphafed.fed_prox.scheduler",
    "alphafed.fed_avg.fed_avg",
    "alphafed.hetero_nn.hetero_nn",
}
#: Further names that must work (submodules included).
MUST_WORK_NAMES = {
    *(("alphafed", m) for m in ("fs", "loggers", "mock", "scheduler", "fed_avg", "fed_prox", "hetero_nn")),
    ("alphafed.fed_avg", "fed_avg"),
    ("alphafed.fed_prox", "scheduler"),
    ("alphafed.hetero_nn", "hetero_nn"),
    ("alphafed.fed_avg", "FedAvgScheduler"),
    ("alphafed.fed_avg", "FedSGDScheduler"),
    ("alphafed.hetero_nn", "HeteroNNHostScheduler"),
    ("alphafed.hetero_nn", "HeteroNNCollaboratorScheduler"),
    ("alphafed.fed_avg", "DPFedAvgScheduler"),
    ("alphafed.fed_avg", "SecureFedAvgScheduler"),
    ("alphafed.fed_avg", "dp_fed_avg"),
    ("alphafed.fed_avg", "secure_fed_avg"),
    ("alphafed.fed_avg.dp_fed_avg", "DPFedAvgScheduler"),
    ("alphafed.fed_avg.secure_fed_avg", "SecureFedAvgScheduler"),
}


def must_work(module: str, name: str, kind: str) -> bool:
    return (kind != "module" and module in MUST_WORK) or (module, name) in MUST_WORK_NAMES


#: Names whose gap is another issue; the error must name it.
PENDING = {
    "SecureHeteroNNHostScheduler": "issue 14",
    "SecureHeteroNNCollaboratorScheduler": "issue 14",
}


def resolve(module: str, name: str, kind: str) -> Any:
    """Import ``module`` and get ``name`` from it, as ``from module import name`` would."""
    if kind == "module":
        submodule = importlib.import_module(f"{module}.{name}")
        assert getattr(importlib.import_module(module), name) is submodule
        return submodule
    return getattr(importlib.import_module(module), name)


def check_kind(value: Any, kind: str) -> None:
    if kind == "module":
        assert isinstance(value, ModuleType)
    elif kind == "exception":
        assert inspect.isclass(value) and issubclass(value, Exception)
    elif kind == "class":
        assert inspect.isclass(value) and not issubclass(value, BaseException)
    elif kind == "function":
        assert callable(value) and not inspect.isclass(value)
    else:
        assert kind == "value"


def test_the_fixture_covers_the_sdk_api() -> None:
    modules = {module for module, _, _ in NAMES}
    assert len(NAMES) > 200 and MUST_WORK <= modules
    assert ("alphafed.fed_prox", "FedProxScheduler", "class") in NAMES
    assert ("alphafed.fs", "get_dataset_dir", "function") in NAMES


@pytest.mark.parametrize(("module", "name", "kind"), NAMES, ids=[f"{m}.{n}" for m, n, _ in NAMES])
def test_each_sdk_name_works_or_says_what_to_use_instead(module: str, name: str, kind: str) -> None:
    try:
        value = resolve(module, name, kind)
    except ImportError as exc:
        assert not must_work(module, name, kind), exc
        assert isinstance(exc, NotProvidedError), f"{type(exc).__name__}: {exc}"
        assert exc.instead and exc.instead in str(exc)
        assert "instead" in exc.instead
        if name in PENDING:
            assert PENDING[name] in str(exc)
        return
    check_kind(value, kind)


def test_the_working_names_are_ours() -> None:
    from alphafed import logger, task_logger
    from alphafed.fed_prox import FedProxScheduler
    from alphafed.scheduler import ConfigError, Scheduler, TaskComplete, TaskFailed

    from alphafed_flwr import api

    assert FedProxScheduler is api.FedProxScheduler
    assert issubclass(FedProxScheduler, api.FedAvgScheduler)
    assert issubclass(api.FedAvgScheduler, Scheduler)
    assert (ConfigError, TaskFailed, TaskComplete) == (api.ConfigError, api.TaskFailed, api.TaskComplete)
    assert isinstance(logger, logging.Logger) and task_logger.parent is logger
