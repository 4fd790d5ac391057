"""``python -m alphafed_flwr.simulation``: run AlphaFed schedulers in a Ray-backed Flower simulation.

Horizontal (FedAvg/FedSGD)::

    python -m alphafed_flwr.simulation path/to/task.py[:name] --num-clients 3 --rounds 20 \\
        --partition iid|dirichlet --alpha 0.5 --seed 0 --out runs/x [--data-dir DIR]

Vertical (HeteroNN split learning)::

    python -m alphafed_flwr.simulation --host host.py[:name] --collaborator collab.py[:name] \\
        [--collaborator other.py ...] --rounds 5 --out runs/v

``--config configs/NAME.toml`` takes the same settings from a file (flags win).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.api.fed_avg import FedAvgScheduler
from alphafed_flwr.api.log import logger
from alphafed_flwr.cli import apply_config_file, exit_with
from alphafed_flwr.loader import load_object
from alphafed_flwr.settings import HORIZONTAL, RUN, SIMULATION, VERTICAL, RunSettings, add_flags

from .horizontal import simulate_horizontal


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (the settings' flags come from ``RunSettings``)."""
    parser = argparse.ArgumentParser(
        prog="python -m alphafed_flwr.simulation",
        description="Run AlphaFed schedulers with virtual clients in a Ray-backed Flower simulation.",
    )
    parser.add_argument("task", nargs="?", help="FedAvg/FedSGD task file: path/to/task.py[:name]")
    parser.add_argument("--config", help="TOML file with any of these settings (flags win)")
    parser.add_argument("--host", help="vertical: the host's task file, path.py[:name]")
    parser.add_argument(
        "--collaborator", action="append", default=None,
        help="vertical: a collaborator's task file (repeat for each collaborator)",
    )
    parser.add_argument("--out", default=str(RunSettings.out), help=f"output folder (default {RunSettings.out})")
    add_flags(parser, (RUN, SIMULATION))
    return parser


def options_from(args: argparse.Namespace) -> RunSettings:
    """The run's settings from parsed arguments."""
    vertical = bool(args.host or args.collaborator)
    return RunSettings.from_args(
        args,
        kind=VERTICAL if vertical else HORIZONTAL,
        out=Path(args.out),
        num_collaborators=len(args.collaborator or []) or RunSettings.num_collaborators,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = build_parser()
    args = apply_config_file(parser, argv)
    if args.num_clients < 1:
        raise ConfigError(f"--num-clients must be >= 1, got {args.num_clients}")
    if args.rounds is not None and args.rounds < 1:
        raise ConfigError(f"--rounds must be >= 1, got {args.rounds}")
    options = options_from(args)
    if args.host or args.collaborator:
        from .vertical import simulate_vertical  # pylint: disable=import-outside-toplevel

        if args.task:
            raise ConfigError("give either a task file or --host/--collaborator, not both")
        summary = simulate_vertical(args.host, args.collaborator or [], options)
    else:
        if not args.task:
            raise ConfigError(
                "no task: give path/to/task.py[:name], or --host and --collaborator for a "
                "vertical task (see --help)"
            )
        loaded = load_object(args.task, FedAvgScheduler)
        if options.task_id is None:
            options = dataclasses.replace(options, task_id=loaded.task_id)
        summary = simulate_horizontal(loaded.obj, options)
    logger.info("Summary: %s", json.dumps(_short(summary)))
    return 0 if summary.get("status") == "completed" else 1


def _short(summary: dict) -> dict:
    return {k: summary.get(k) for k in ("status", "rounds_completed", "final_test", "run_seconds")}


if __name__ == "__main__":
    exit_with(main)
