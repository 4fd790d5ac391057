"""Shared command-line plumbing: clean errors and exit codes, config files."""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alphafed_flwr.api.errors import AlphaFedError, ConfigError, TaskFailed, UserCodeError
from alphafed_flwr.api.log import logger

EXIT_OK = 0
EXIT_FAILED = 1  # the task ran and failed
EXIT_USAGE = 2  # bad input: fix the command, the task file or the data


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main``; user errors print one clear message (no traceback) and set the exit code."""
    try:
        return main(argv)
    except ConfigError as exc:
        logger.error("%s", exc)
        return EXIT_USAGE
    except (TaskFailed, UserCodeError) as exc:
        logger.error("%s", exc)
        return EXIT_FAILED
    except AlphaFedError as exc:
        logger.error("%s", exc)
        return EXIT_FAILED
    except KeyboardInterrupt:
        logger.error("Interrupted")
        return 130
    except RuntimeError as exc:
        cause = _alphafed_cause(exc)
        if cause is None:
            raise
        logger.error("%s", cause)
        return EXIT_USAGE if isinstance(cause, ConfigError) else EXIT_FAILED


def _alphafed_cause(exc: BaseException) -> AlphaFedError | None:
    """Flower wraps errors of the ServerApp thread; find ours in the chain."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 10:
        if isinstance(current, AlphaFedError):
            return current
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def exit_with(main: Callable[[Sequence[str] | None], int]) -> None:
    """``sys.exit(run_cli(main))``."""
    sys.exit(run_cli(main))


def apply_config_file(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    """Parse ``argv``; values from ``--config FILE.toml`` fill flags the command line omits.

    TOML keys are the long flag names without dashes (``num-clients = 3``); relative paths
    in it are relative to the working directory, like those on the command line.
    """
    args = parser.parse_args(argv)
    config_path = getattr(args, "config", None)
    if not config_path:
        return args
    path = Path(config_path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        values: dict[str, Any] = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file '{path}' is not valid TOML: {exc}") from exc
    defaults = {a.dest: a.default for a in parser._actions}  # pylint: disable=protected-access
    known = {a.dest for a in parser._actions}  # pylint: disable=protected-access
    for key, value in values.items():
        dest = key.replace("-", "_")
        if dest not in known:
            raise ConfigError(f"config file '{path}': unknown key '{key}'")
        if getattr(args, dest) == defaults.get(dest):
            setattr(args, dest, value)
    return args
