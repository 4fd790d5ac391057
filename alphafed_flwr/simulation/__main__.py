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
from alphafed_flwr.cli import apply_config_file, exit_with
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
    parser.add_argument("--batches-per-exchange", type=int, default=1,
                        help="vertical: batches per feature/gradient exchange (K, default 1)")
    parser.add_argument("--num-clients", type=int, default=3, help="virtual clients (default 3)")
    parser.add_argument("--rounds", type=int, default=None, help="overrides max_rounds")
    parser.add_argument("--partition", default="iid", choices=("iid", "dirichlet", "sample"),
                        help="how clients split the training set (default iid)")
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    parser.add_argument("--samples", type=int, default=32,
                        help="samples per client with --partition sample")
    parser.add_argument("--seed", type=int, default=None, help="makes the run reproducible")
    parser.add_argument("--out", default="runs/simulation", help="output folder")
    parser.add_argument("--data-dir", default=None,
                        help="data folder of every party (default: offline MNIST subset)")
    parser.add_argument("--task-id", default=None, help="task id (default: from launch_task)")
    parser.add_argument("--reset-optimizer", action="store_true",
                        help="fresh client optimizer state every round")
    parser.add_argument("--unweighted", action="store_true",
                        help="unweighted mean of client updates (AlphaFed's original rule)")
    parser.add_argument("--client-eval", default="last", choices=("last", "test-rounds", "off"),
                        help="when clients test the global model on their own data "
                             "(default: the last round)")
    parser.add_argument("--fresh", action="store_true",
                        help="start over even if --out holds the checkpoint of an unfinished run")
    parser.add_argument("--cpus-per-client", type=float, default=1.0,
                        help="Ray CPUs per virtual client (default 1)")
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
        client_eval=args.client_eval,
        fresh=args.fresh,
        cpus_per_client=args.cpus_per_client,
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
