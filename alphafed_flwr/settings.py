"""One run's settings: every field once, with its default, its flag and its help.

``RunSettings`` describes a run, whichever way it starts. The commands build it from their
flags (``add_flags`` generates them, ``from_args`` reads them back), the deployment writes
it into the app bundle as Flower's run config (``to_run_config``) and the ServerApp and
ClientApps read it back (``from_run_config``). The adapters get their own views of it:
``server_settings``, ``vertical_settings``, ``client_settings`` and
``collaborator_settings``. A new setting is one field here (plus its use).

Flower's run config holds no ``None``: a setting that is not set is left out of it (never
encoded as ``-1`` or ``""``), and reading it back gives the default. A ``flwr run`` app
folder (``python -m alphafed_flwr new``) therefore declares only the settings that have a
value; ``--run-config`` overrides those.

This module imports neither torch nor the adapters (the bundle's ClientApp imports it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alphafed_flwr.families import HORIZONTAL, VERTICAL
from alphafed_flwr.strategies.aggregation import DEFAULT_MAX_NUM_EXAMPLES

# How a value travels in the run config (and is checked when read back).
_INT, _FLOAT, _STR, _BOOL, _PATH, _JSON = "an integer", "a number", "a string", "a boolean", "a path", "a JSON table"

# Flag groups: which command offers which flags.
RUN = "run"  # every command that runs a task (simulation, server, app folder)
SIMULATION = "simulation"  # the simulation command only
VERTICAL_SERVER = "vertical-server"  # the server command's vertical-only flags


def _setting(
    default: Any,
    help: str,  # noqa: A002 - argparse's name  # pylint: disable=redefined-builtin
    *,
    key: str | None = None,
    kind: str = _STR,
    flag: str | None = None,
    dest: str | None = None,
    invert: bool = False,
    group: str = RUN,
    **argparse_kwargs: Any,
) -> Any:
    """A ``RunSettings`` field.

    Parameters
    ----------
    default : Any
        The default (a dict default becomes a factory).
    help : str
        Its ``--help`` text.
    key : str | None
        Its run config key; ``None``: not in the run config (the simulation's placement).
    kind : str
        How its value travels in the run config (checked when read back).
    flag : str | None
        Its command-line flag; ``None``: no flag of its own (set by the command).
    dest : str | None
        The flag's argparse ``dest`` (default: the field's name); kept where TOML config
        files already use the flag's name (``unweighted``, ``fresh``, ``collaborators``).
    invert : bool
        A ``store_true`` flag that sets the field to ``False`` (``--fresh``: ``resume``).
    group : str
        Which commands offer the flag (``RUN``, ``SIMULATION`` or ``VERTICAL_SERVER``).
    argparse_kwargs : Any
        Passed to ``add_argument`` (``type``, ``choices``, ``action``, ``metavar``).
    """
    meta = {"help": help, "key": key, "kind": kind, "flag": flag, "dest": dest, "invert": invert,
            "group": group, "argparse": argparse_kwargs}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunSettings:  # pylint: disable=too-many-instance-attributes
    """Everything that describes one run (see the module docstring)."""

    kind: str = _setting(HORIZONTAL, "horizontal (FedAvg family) or vertical (HeteroNN family)", key="mode")
    task_id: str | None = _setting(None, "task id (default: from launch_task)", key="task-id", flag="--task-id")
    out: Path = _setting(Path("runs/simulation"), "output folder", key="out-dir", kind=_PATH)
    data_dir: Path | None = _setting(
        None, "data folder (get_dataset_dir; default: the offline MNIST subset)",
        key="server-data-dir", kind=_PATH, flag="--data-dir",
    )
    clients_data_dir: Path | None = _setting(
        None, "data folder of nodes that have none of their own (flwr run's virtual nodes)",
        key="data-dir", kind=_PATH,
    )
    rounds: int | None = _setting(None, "overrides max_rounds", key="rounds", kind=_INT, flag="--rounds", type=int)
    seed: int | None = _setting(
        None, "makes partitioning, the initial model, sampling and local shuffling reproducible",
        key="seed", kind=_INT, flag="--seed", type=int,
    )
    partition: str = _setting(
        "iid", "how clients split the training set (default iid)", key="partition", flag="--partition",
        choices=("iid", "dirichlet", "sample"),
    )
    alpha: float = _setting(0.5, "Dirichlet concentration", key="alpha", kind=_FLOAT, flag="--alpha", type=float)
    samples: int = _setting(
        32, "samples per client with --partition sample", key="samples", kind=_INT, flag="--samples", type=int
    )
    reset_optimizer: bool = _setting(
        False, "fresh client optimizer state every round", key="reset-optimizer", kind=_BOOL,
        flag="--reset-optimizer", action="store_true",
    )
    weighted: bool = _setting(
        True, "unweighted mean of client updates (AlphaFed's original rule)", key="weighted", kind=_BOOL,
        flag="--unweighted", dest="unweighted", invert=True, action="store_true",
    )
    strategy: str = _setting(
        "fedavg", "the Flower strategy that aggregates (default fedavg; see the README's table)",
        key="strategy", flag="--strategy",
    )
    strategy_args: dict[str, Any] = _setting(
        {}, "a strategy parameter, e.g. eta=0.01 (repeat; TOML: a [strategy-args] table)",
        key="strategy-args", kind=_JSON, flag="--strategy-arg", action="append", metavar="KEY=VALUE",
    )
    max_num_examples: float = _setting(
        float(DEFAULT_MAX_NUM_EXAMPLES),
        "largest sample count one client update may claim; updates claiming more are rejected "
        f"(default {DEFAULT_MAX_NUM_EXAMPLES:,})",
        key="max-num-examples", kind=_FLOAT, flag="--max-num-examples", type=float,
    )
    target_epsilon: float | None = _setting(
        None, "DPFedAvgScheduler: privacy budget; the run ends, with its model saved, before a round "
        "that would spend more", key="target-epsilon", kind=_FLOAT, flag="--target-epsilon", type=float,
    )
    client_eval: str = _setting(
        "last", "when clients test the global model on their own data (default: the last round)",
        key="client-eval", flag="--client-eval", choices=("last", "test-rounds", "off"),
    )
    resume: bool = _setting(
        True, "start over even if --out holds the checkpoint of an unfinished run", key="resume", kind=_BOOL,
        flag="--fresh", dest="fresh", invert=True, action="store_true",
    )
    batches_per_exchange: int = _setting(
        1, "vertical: batches per feature/gradient exchange (K, default 1)", key="batches-per-exchange",
        kind=_INT, flag="--batches-per-exchange", type=int,
    )
    max_round_retries: int = _setting(
        3, "retries of a round that gets too few valid results", key="max-round-retries", kind=_INT,
        flag="--max-round-retries", type=int,
    )
    num_collaborators: int = _setting(
        1, "vertical: collaborators expected", key="num-collaborators", kind=_INT,
        flag="--collaborators", dest="collaborators", group=VERTICAL_SERVER, type=int,
    )
    # the simulation's placement (not in the run config)
    num_clients: int = _setting(3, "virtual clients (default 3)", flag="--num-clients", group=SIMULATION, type=int)
    cpus_per_client: float | None = _setting(
        None, "Ray CPUs per virtual client (default: 1 for FedAvg/FedSGD; the cores shared out among "
        "vertical collaborators)", flag="--cpus-per-client", group=SIMULATION, type=float,
    )
    gpus_per_client: float = _setting(
        0.0, "Ray GPUs per virtual client, fractions allowed (0.25: four per GPU); 0 (default): clients "
        "see no GPU", flag="--gpus-per-client", group=SIMULATION, type=float,
    )
    ray_address: str | None = _setting(
        None, "join the existing Ray cluster whose head is at host:port (run the command on one of its "
        "nodes; every node needs the same environment and data)", flag="--ray-address", group=SIMULATION,
    )

    def __post_init__(self) -> None:
        if self.kind not in (HORIZONTAL, VERTICAL):
            raise _config_error(f"the run's kind must be '{HORIZONTAL}' or '{VERTICAL}', got {self.kind!r}")

    # ----- command line ------------------------------------------------------------------
    @classmethod
    def from_args(cls, args: argparse.Namespace, **values: Any) -> RunSettings:
        """Settings from flags that ``add_flags`` made (``values`` set the rest, e.g. ``kind``).

        ``--strategy-arg`` values are parsed and checked against ``--strategy`` here.
        """
        found: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            dest = _dest(f)
            if dest is None or not hasattr(args, dest):
                continue
            value = getattr(args, dest)
            if f.metadata["invert"]:
                value = not value
            elif f.metadata["kind"] == _PATH and value is not None:
                value = Path(value)
            found[f.name] = value
        if "strategy_args" in found:
            found["strategy_args"] = _strategy_args(found.get("strategy", cls.strategy), found["strategy_args"])
        return cls(**{**found, **values})

    # ----- Flower's run config -----------------------------------------------------------
    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """The run config: every setting that has a value (``None``: the key is left out)."""
        config: dict[str, bool | int | float | str] = {}
        for f in dataclasses.fields(self):
            key, value = f.metadata["key"], getattr(self, f.name)
            if key is None or value is None:
                continue
            kind = f.metadata["kind"]
            if kind == _JSON:
                config[key] = json.dumps(value, sort_keys=True)
            elif kind == _PATH:
                config[key] = str(value)
            elif kind == _FLOAT:
                config[key] = float(value)
            else:
                config[key] = value
        return config

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> RunSettings:
        """Settings from a run config; a missing key keeps its default.

        Raises ``ConfigError`` naming the key for an unknown key or a value of the wrong type.
        """
        by_key = {f.metadata["key"]: f for f in dataclasses.fields(cls) if f.metadata["key"]}
        values: dict[str, Any] = {}
        for key, value in config.items():
            f = by_key.get(key)
            if f is None:
                raise _config_error(
                    f"run config: unknown key '{key}' (known: {', '.join(sorted(by_key))}); remove it "
                    "or fix its name in [tool.flwr.app.config] or --run-config"
                )
            values[f.name] = _decoded(key, f.metadata["kind"], value)
        return cls(**values)

    # ----- the adapters' views -----------------------------------------------------------
    def resolved(self) -> RunSettings:
        """The same settings with absolute folders (what the run itself uses)."""
        return dataclasses.replace(
            self,
            out=self.out.resolve(),
            data_dir=None if self.data_dir is None else self.data_dir.resolve(),
            clients_data_dir=None if self.clients_data_dir is None else self.clients_data_dir.resolve(),
        )

    def record(self) -> dict[str, Any]:
        """Every setting as JSON-able values (``summary.json``'s ``config``)."""
        return {
            f.name: (str(v) if isinstance(v, Path) else dict(v) if isinstance(v, dict) else v)
            for f in dataclasses.fields(self)
            for v in [getattr(self, f.name)]
        }

    def server_settings(self, **record: Any) -> Any:
        """The horizontal server's view (``HorizontalServer``); ``record`` adds to summary.json."""
        from alphafed_flwr.adapters.horizontal_server import ServerSettings  # pylint: disable=C0415

        return ServerSettings(
            out_dir=self.out,
            task_id=self.task_id or ServerSettings.task_id,
            rounds=self.rounds,
            data_dir=self.data_dir,
            seed=self.seed,
            weighted=self.weighted,
            client_eval=self.client_eval,
            resume=self.resume,
            max_round_retries=self.max_round_retries,
            strategy=self.strategy,
            strategy_args=dict(self.strategy_args),
            max_num_examples=self.max_num_examples,
            target_epsilon=self.target_epsilon,
            record={**record, **self.record()},
        )

    def vertical_settings(self, **record: Any) -> Any:
        """The vertical host's view (``VerticalHost``); ``record`` adds to summary.json."""
        from alphafed_flwr.adapters.vertical_host import VerticalSettings  # pylint: disable=C0415

        return VerticalSettings(
            out_dir=self.out,
            task_id=self.task_id or VerticalSettings.task_id,
            num_collaborators=self.num_collaborators,
            rounds=self.rounds,
            data_dir=self.data_dir,
            seed=self.seed,
            resume=self.resume,
            batches_per_exchange=self.batches_per_exchange,
            record={**record, **self.record()},
        )

    def client_settings(self, node_config: Mapping[str, Any] | None = None) -> Any:
        """A horizontal client's view (``HorizontalClient``).

        ``node_config``: a deployed node's own settings (``out-dir``, ``data-dir``, and with
        ``partition-id`` a partition of its data); ``None``: a simulation, whose virtual
        nodes share the run's folders and partition the data.
        """
        from alphafed_flwr.adapters.horizontal_client import ClientSettings  # pylint: disable=C0415

        if node_config is None:
            out, data, partition = str(self.out), _text(self.data_dir), self.partition
        else:
            out = _text(node_config.get("out-dir"))
            data = _text(node_config.get("data-dir")) or _text(self.clients_data_dir)
            partition = self.partition if "partition-id" in node_config else None
        return ClientSettings(
            task_id=self.task_id or ClientSettings.task_id,
            out_dir=out,
            data_dir=data,
            partition=partition,
            alpha=self.alpha,
            samples=self.samples,
            seed=self.seed,
            reset_optimizer=self.reset_optimizer,
        )

    def collaborator_settings(self, node_config: Mapping[str, Any] | None = None) -> Any:
        """A vertical collaborator's view (``VerticalCollaborator``); ``node_config`` as in
        ``client_settings`` (a deployed node without ``out-dir`` writes to ``./alphafed-client``)."""
        from alphafed_flwr.adapters.vertical_client import CollaboratorSettings  # pylint: disable=C0415

        if node_config is None:
            out, data = str(self.out), _text(self.data_dir)
        else:
            out = _text(node_config.get("out-dir")) or str(Path.cwd() / "alphafed-client")
            data = _text(node_config.get("data-dir"))
        return CollaboratorSettings(
            task_id=self.task_id or CollaboratorSettings.task_id, out_dir=out, data_dir=data, seed=self.seed
        )


def add_flags(parser: argparse.ArgumentParser, groups: Iterable[str] = (RUN,)) -> None:
    """Add the flags of ``groups`` (``RUN``, ``SIMULATION``, ``VERTICAL_SERVER``) to ``parser``."""
    wanted = set(groups)
    for f in dataclasses.fields(RunSettings):
        meta = f.metadata
        if meta["flag"] is None or meta["group"] not in wanted:
            continue
        kwargs = dict(meta["argparse"])
        if f.name == "strategy":  # the catalog's names (imports Flower's strategies: here only)
            from alphafed_flwr.strategies.catalog import strategy_names  # pylint: disable=C0415

            kwargs.update(type=str.lower, choices=strategy_names())
        default = False if meta["invert"] or kwargs.get("action") == "store_true" else (
            None if kwargs.get("action") == "append" else f.default
        )
        parser.add_argument(meta["flag"], dest=_dest(f), default=default, help=meta["help"], **kwargs)


def _dest(f: dataclasses.Field[Any]) -> str | None:
    if f.metadata["flag"] is None:
        return None
    return str(f.metadata["dest"] or f.name)


def _strategy_args(strategy: str, raw: Any) -> dict[str, Any]:
    """``--strategy-arg`` values (or a TOML table) parsed, and checked against the strategy."""
    # pylint: disable=import-outside-toplevel
    from alphafed_flwr.strategies.catalog import build_strategy, parse_strategy_args
    from alphafed_flwr.strategies.errors import StrategyConfigError

    try:
        values = parse_strategy_args(raw)
        build_strategy(strategy, values)  # fail fast, before anything starts
    except StrategyConfigError as exc:
        raise _config_error(str(exc)) from exc
    return values


def _decoded(key: str, kind: str, value: Any) -> Any:
    """A run config value, checked against its kind."""
    def wrong() -> Exception:
        return _config_error(
            f"run config key '{key}' must be {kind}, got {value!r} ({type(value).__name__}); fix it "
            "in [tool.flwr.app.config] or --run-config"
        )

    if kind == _BOOL:
        if not isinstance(value, bool):
            raise wrong()
        return value
    if kind == _INT:
        if not isinstance(value, int) or isinstance(value, bool):
            raise wrong()
        return value
    if kind == _FLOAT:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise wrong()
        return float(value)
    if not isinstance(value, str):
        raise wrong()
    if kind == _PATH:
        if not value:
            raise wrong()
        return Path(value)
    if kind == _JSON:
        try:
            table = json.loads(value)
        except json.JSONDecodeError as exc:
            raise wrong() from exc
        if not isinstance(table, dict):
            raise wrong()
        return table
    return value


def _config_error(message: str) -> Exception:
    """``ConfigError(message)`` (imported here: the scheduler API imports torch)."""
    from alphafed_flwr.api.errors import ConfigError  # pylint: disable=import-outside-toplevel

    return ConfigError(message)


def _text(value: Any) -> str | None:
    return None if value in ("", None) else str(value)
