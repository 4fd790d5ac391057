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
import json
from collections.abc import Sequence
from pathlib import Path

from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.api.fed_avg import FedAvgScheduler
from alphafed_flwr.api.log import logger
from alphafed_flwr.cli import (
    add_ray_flags,
    add_run_flags,
    apply_config_file,
    exit_with,
    strategy_args_from,
)
from alphafed_flwr.loader import load_object

from .horizontal import SimulationOptions, simulate_horizontal


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
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
    parser.add_argument("--num-clients", type=int, default=3, help="virtual clients (default 3)")
    parser.add_argument("--out", default="runs/simulation", help="output folder")
    add_run_flags(parser)
    parser.add_argument("--cpus-per-client", type=float, default=None,
                        help="Ray CPUs per virtual client (default: 1 for FedAvg/FedSGD; the cores "
                             "shared out among vertical collaborators)")
    add_ray_flags(parser)
    return parser


def options_from(args: argparse.Namespace) -> SimulationOptions:
    """Simulation options from parsed arguments."""
    return SimulationOptions(
        num_clients=args.num_clients,
        rounds=args.rounds,
        partition=args.partition,
        alpha=args.alpha,
        samples=args.samples,
        seed=args.seed,
        out=Path(args.out),
        data_dir=None if args.data_dir is None else Path(args.data_dir),
        reset_optimizer=args.reset_optimizer,
        weighted=not args.unweighted,
        strategy=args.strategy,
        strategy_args=strategy_args_from(args),
        max_num_examples=args.max_num_examples,
        target_epsilon=args.target_epsilon,
        client_eval=args.client_eval,
        fresh=args.fresh,
        cpus_per_client=args.cpus_per_client,
        gpus_per_client=args.gpus_per_client,
        ray_address=args.ray_address,
        task_id=args.task_id,
        batches_per_exchange=args.batches_per_exchange,
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
            options.task_id = loaded.task_id
        summary = simulate_horizontal(loaded.obj, options)
    logger.info("Summary: %s", json.dumps(_short(summary)))
    return 0 if summary.get("status") == "completed" else 1


def _short(summary: dict) -> dict:
    return {k: summary.get(k) for k in ("status", "rounds_completed", "final_test", "run_seconds")}


if __name__ == "__main__":
    exit_with(main)
