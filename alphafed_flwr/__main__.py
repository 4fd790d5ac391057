"""``python -m alphafed_flwr new|stop-local``: helpers for Flower's own launcher, ``flwr run``.

- ``new DIR task.py[:name] [run flags]`` writes a Flower app folder for the task;
- ``stop-local [--port N]`` stops the detached local SuperLink that ``flwr run`` started.

See ``alphafed_flwr.app_folder``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.cli import exit_with

COMMANDS = ("new", "stop-local")


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a sub-command; returns the exit code."""
    from alphafed_flwr import app_folder  # pylint: disable=import-outside-toplevel

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        raise ConfigError(f"usage: python -m alphafed_flwr {{{'|'.join(COMMANDS)}}} ... (see --help of each)")
    command, rest = args[0], args[1:]
    return app_folder.new(rest) if command == "new" else app_folder.stop_local(rest)


if __name__ == "__main__":
    exit_with(main)
