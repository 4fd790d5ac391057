"""Errors raised to users of the scheduler API."""

from __future__ import annotations

import traceback
from pathlib import Path


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
