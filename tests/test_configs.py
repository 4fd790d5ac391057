"""The ``--config`` TOML files in configs/: each parses into the settings it promises."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from alphafed_flwr.api import FedAvgScheduler, HeteroNNCollaboratorScheduler, HeteroNNHostScheduler
from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.cli import apply_config_file
from alphafed_flwr.loader import load_object
from alphafed_flwr.simulation.__main__ import build_parser, options_from

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.toml"))

EXPECTED = {  # what each file is documented to run (README, the files' comments)
    "fedavg_mnist": {"num_clients": 3, "rounds": 20, "partition": "iid", "seed": 0, "weighted": True},
    "fedavg_mnist_dirichlet": {"num_clients": 5, "rounds": 20, "partition": "dirichlet", "alpha": 0.5},
    "fedsgd_mnist": {"num_clients": 3, "rounds": 60, "partition": "iid"},
    "vertical_mnist": {"rounds": 20, "batches_per_exchange": 1, "seed": 0},
    "fedavg_mnist_dirichlet01": {"num_clients": 10, "partition": "dirichlet", "alpha": 0.1, "strategy": "fedavg"},
    "fedadam_mnist_dirichlet": {"strategy": "fedadam", "partition": "dirichlet", "alpha": 0.1},
    "fedprox_mnist_dirichlet": {"strategy": "fedprox", "partition": "dirichlet", "alpha": 0.1},
}


@pytest.fixture(autouse=True)
def in_repository_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """The files' paths are relative to the repository root, where the README runs them."""
    monkeypatch.chdir(ROOT)


def test_the_documented_config_files_exist() -> None:
    assert {"fedavg_mnist", "fedavg_mnist_dirichlet", "fedsgd_mnist", "vertical_mnist"} <= {p.stem for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_a_config_file_sets_every_key_it_names(path: Path) -> None:
    args = apply_config_file(build_parser(), ["--config", str(path.relative_to(ROOT))])
    values = tomllib.loads(path.read_text())
    for key, value in values.items():
        assert getattr(args, key.replace("-", "_")) == value, key
    options = options_from(args)
    for name, value in EXPECTED.get(path.stem, {}).items():
        assert getattr(options, name) == value, name
    assert options.out == Path(values["out"]) and str(options.out).startswith("runs/")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_a_config_file_names_task_files_that_load(path: Path) -> None:
    args = apply_config_file(build_parser(), ["--config", str(path.relative_to(ROOT))])
    if args.host or args.collaborator:
        assert not args.task and args.collaborator
        load_object(args.host, HeteroNNHostScheduler)
        for ref in args.collaborator:
            load_object(ref, HeteroNNCollaboratorScheduler)
    else:
        assert isinstance(load_object(args.task, FedAvgScheduler).obj, FedAvgScheduler)


def test_flags_on_the_command_line_win_over_the_file() -> None:
    args = apply_config_file(build_parser(), ["--config", "configs/fedavg_mnist.toml", "--rounds", "2",
                                              "--num-clients", "7"])
    assert (args.rounds, args.num_clients, args.partition) == (2, 7, "iid")


def test_an_unknown_key_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('task = "simulations/mnist/fedavg.py"\nnum-client = 3\n')
    with pytest.raises(ConfigError, match="unknown key 'num-client'"):
        apply_config_file(build_parser(), ["--config", str(bad)])
