"""The ``alphafed`` logger, formatted like Flower's console log (``INFO :      message``)."""

from __future__ import annotations

import logging
import os
import sys

_COLORS = {
    "DEBUG": "\033[94m",
    "INFO": "\033[92m",
    "WARNING": "\033[93m",
    "ERROR": "\033[91m",
    "CRITICAL": "\033[95m",
}
_RESET = "\033[0m"


class FlowerStyleFormatter(logging.Formatter):
    """Same layout as ``flwr.supercore.logger.ConsoleHandler``, coloured on a terminal."""

    def __init__(self, colored: bool) -> None:
        super().__init__()
        self.colored = colored

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname
        pad = " " * (8 - len(level))
        color, reset = (_COLORS.get(level, ""), _RESET) if self.colored else ("", "")
        return f"{color}{level} {reset}: {pad} {record.getMessage()}" + (
            "\n" + self.formatException(record.exc_info) if record.exc_info else ""
        )


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record (tests swap it)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        del value


def _make_logger() -> logging.Logger:
    log = logging.getLogger("alphafed")
    if not log.handlers:
        handler = _StderrHandler()
        # Coloured like Flower's own console handler (which colours unconditionally).
        handler.setFormatter(FlowerStyleFormatter(colored="NO_COLOR" not in os.environ))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


logger = _make_logger()
