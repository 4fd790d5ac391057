"""AlphaFed's loggers (``alphafed.loggers``): ``logger`` and ``task_logger``.

Both write in Flower's console style. ``task_logger`` (``alphafed.task``) carries the
messages of ``Scheduler.push_log``; it propagates to ``logger``'s handler.
"""

from __future__ import annotations

import logging

from .log import logger

__all__ = ["logger", "task_logger"]

task_logger = logging.getLogger("alphafed.task")
