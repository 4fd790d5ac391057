"""Errors raised to users of the scheduler API."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any


class AlphaFedError(Exception):
    """An error the user can fix; command-line tools print it without a traceback."""


class ConfigError(AlphaFedError, ValueError):
    """A task, scheduler or command-line configuration is invalid."""


class TaskFailed(AlphaFedError, RuntimeError):
    """The task cannot continue (for example: too few clients, a round that keeps failing)."""


class UserCodeError(AlphaFedError):
    """User code (a scheduler method or task script) raised an exception.

    The message names the user's method and the innermost line of user code, so the error
    points at the user's line rather than at framework internals.
    """

    def __init__(self, what: str, exc: BaseException) -> None:
        self.what = what
        self.original = exc
        self.location = user_code_location(exc)
        where = f" at {self.location}" if self.location else ""
        super().__init__(f"{what} raised {type(exc).__name__}: {exc}{where}")


_FRAMEWORK_ROOT = Path(__file__).resolve().parents[1]


def user_code_location(exc: BaseException) -> str:
    """Return ``file:line (function)`` of the innermost traceback frame outside alphafed-flwr,
    torch and the standard library, or of the innermost frame if none qualifies."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        path = Path(frame.filename)
        if _is_user_file(path):
            return f"{frame.filename}:{frame.lineno} ({frame.name})"
    if frames:
        frame = frames[-1]
        return f"{frame.filename}:{frame.lineno} ({frame.name})"
    return ""


def _is_user_file(path: Path) -> bool:
    text = str(path)
    if "site-packages" in text or "dist-packages" in text or text.startswith("<"):
        return False
    try:
        path.resolve().relative_to(_FRAMEWORK_ROOT)
    except ValueError:
        return "/lib/python" not in text
    return False


class NotProvidedError(AlphaFedError, ImportError):
    """An AlphaFed SDK name that alphafed-flwr does not provide (yet).

    Parameters
    ----------
    name : str
        The SDK name (``alphafed.fed_avg.DPFedAvgScheduler``, ``alphafed.contractor``).
    gap : str
        Why it is missing (no Flower counterpart, or the issue that will add it).
    instead : str
        What to use instead.
    """

    def __init__(self, name: str, gap: str, instead: str) -> None:
        self.gap = gap
        self.instead = instead
        super().__init__(f"{name} {gap}; {instead}", name=name)


def missing_names(module: str, entries: dict[str, tuple[str, str]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` raising ``NotProvidedError`` for the names in ``entries``.

    Parameters
    ----------
    module : str
        The module's name (for the ``AttributeError`` of other names).
    entries : dict[str, tuple[str, str]]
        ``{name: (gap, instead)}``, as for ``NotProvidedError``.
    """

    def __getattr__(name: str) -> Any:
        if name in entries:
            raise NotProvidedError(name, *entries[name])
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
