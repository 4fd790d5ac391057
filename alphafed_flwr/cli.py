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


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by the simulation and the server commands."""
    parser.add_argument("--rounds", type=int, default=None, help="overrides max_rounds")
    parser.add_argument("--seed", type=int, default=None,
                        help="makes partitioning, the initial model, sampling and local shuffling reproducible")
    parser.add_argument("--partition", default="iid", choices=("iid", "dirichlet", "sample"),
                        help="how clients split the training set (default iid)")
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    parser.add_argument("--samples", type=int, default=32, help="samples per client with --partition sample")
    parser.add_argument("--data-dir", default=None,
                        help="data folder (get_dataset_dir; default: the offline MNIST subset)")
    parser.add_argument("--task-id", default=None, help="task id (default: from launch_task)")
    parser.add_argument("--reset-optimizer", action="store_true", help="fresh client optimizer state every round")
    parser.add_argument("--unweighted", action="store_true",
                        help="unweighted mean of client updates (AlphaFed's original rule)")
    add_strategy_flags(parser)
    parser.add_argument("--target-epsilon", type=float, default=None,
                        help="DPFedAvgScheduler: privacy budget; the run ends, with its model saved, "
                             "before a round that would spend more")
    parser.add_argument("--client-eval", default="last", choices=("last", "test-rounds", "off"),
                        help="when clients test the global model on their own data (default: the last round)")
    parser.add_argument("--fresh", action="store_true",
                        help="start over even if --out holds the checkpoint of an unfinished run")
    parser.add_argument("--batches-per-exchange", type=int, default=1,
                        help="vertical: batches per feature/gradient exchange (K, default 1)")


def add_ray_flags(parser: argparse.ArgumentParser) -> None:
    """Ray placement flags of the simulation command (see ``simulation.engine.RayPlacement``)."""
    parser.add_argument("--gpus-per-client", type=float, default=0.0,
                        help="Ray GPUs per virtual client, fractions allowed (0.25: four per GPU); "
                             "0 (default): clients see no GPU")
    parser.add_argument("--ray-address", default=None,
                        help="join the existing Ray cluster whose head is at host:port (run the command "
                             "on one of its nodes; every node needs the same environment and data)")


def add_strategy_flags(parser: argparse.ArgumentParser) -> None:
    """``--strategy``, ``--strategy-arg`` and ``--max-num-examples`` (horizontal tasks)."""
    # pylint: disable=import-outside-toplevel
    from alphafed_flwr.strategies.aggregation import DEFAULT_MAX_NUM_EXAMPLES
    from alphafed_flwr.strategies.catalog import strategy_names

    parser.add_argument("--strategy", default="fedavg", type=str.lower, choices=strategy_names(),
                        help="the Flower strategy that aggregates (default fedavg; see the README's table)")
    parser.add_argument("--strategy-arg", dest="strategy_args", action="append", default=None,
                        metavar="KEY=VALUE",
                        help="a strategy parameter, e.g. eta=0.01 (repeat; TOML: a [strategy-args] table)")
    parser.add_argument("--max-num-examples", type=float, default=float(DEFAULT_MAX_NUM_EXAMPLES),
                        help="largest sample count one client update may claim; updates claiming more "
                             f"are rejected (default {DEFAULT_MAX_NUM_EXAMPLES:,})")


def strategy_args_from(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed ``--strategy-arg`` values (or TOML table), checked against ``--strategy``."""
    # pylint: disable=import-outside-toplevel
    from alphafed_flwr.strategies.catalog import build_strategy, parse_strategy_args
    from alphafed_flwr.strategies.errors import StrategyConfigError

    try:
        values = parse_strategy_args(args.strategy_args)
        build_strategy(args.strategy, values)  # fail fast, before anything starts
    except StrategyConfigError as exc:
        raise ConfigError(str(exc)) from exc
    return values


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
