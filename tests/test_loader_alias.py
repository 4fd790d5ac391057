"""The ``alphafed`` alias, loading task files, and command-line errors."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from tasks import write_fedavg

from alphafed_flwr.api import ConfigError, FedAvgScheduler, UserCodeError
from alphafed_flwr.loader import TaskRef, load_object
from alphafed_flwr.simulation.__main__ import main as simulation_main


def test_alias_names_are_our_modules() -> None:
    import alphafed_flwr.api.fed_avg as ours

    fed_avg = importlib.import_module("alphafed.fed_avg")
    scheduler = importlib.import_module("alphafed.scheduler")
    hetero = importlib.import_module("alphafed.hetero_nn")
    assert fed_avg is ours
    assert scheduler.DataChecker.__module__ == "alphafed_flwr.api.scheduler"
    assert hetero.HeteroNNHostScheduler.__module__ == "alphafed_flwr.api.hetero_nn"
    from alphafed import get_dataset_dir, logger  # noqa: F401

    assert importlib.import_module("alphafed.fed_prox.scheduler") is importlib.import_module(
        "alphafed.fed_prox"
    )
    with pytest.raises(ImportError, match="platform messaging.*scheduler subclass.*instead"):
        importlib.import_module("alphafed.contractor")


def test_the_alias_is_active_in_a_fresh_interpreter() -> None:
    code = "from alphafed.fed_avg import FedAvgScheduler; print(FedAvgScheduler.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "alphafed_flwr.api.fed_avg"


def test_a_tutorial_script_registers_its_scheduler_instead_of_training(tmp_path: Path) -> None:
    path = write_fedavg(tmp_path)
    loaded = load_object(str(path), FedAvgScheduler)
    assert type(loaded.obj).__name__ == "TinyTask"
    assert loaded.task_id == "tiny-task" and loaded.obj.task_id == "tiny-task"
    assert loaded.obj._model is None  # nothing was built, nothing trained


def test_task_refs_and_their_errors(tmp_path: Path) -> None:
    assert TaskRef.parse("a/b.py:Sched") == TaskRef(Path("a/b.py"), "Sched")
    assert TaskRef.parse("C:/x/b.py") == TaskRef(Path("C:/x/b.py"), None)
    with pytest.raises(ConfigError, match="does not exist"):
        load_object(str(tmp_path / "missing.py"), FedAvgScheduler)
    path = write_fedavg(tmp_path)
    with pytest.raises(ConfigError, match="'Nope' is not defined in .*TinyTask"):
        load_object(f"{path}:Nope", FedAvgScheduler)
    (tmp_path / "boom.py").write_text("x = 1\nraise ValueError('bad config')\n")
    with pytest.raises(UserCodeError, match=r"ValueError: bad config at .*boom.py:2"):
        load_object(str(tmp_path / "boom.py"), FedAvgScheduler)


def test_a_class_reference_is_instantiated_when_it_needs_no_arguments(tmp_path: Path) -> None:
    path = write_fedavg(tmp_path)
    loaded = load_object(f"{path}:TinyTask", FedAvgScheduler)
    assert isinstance(loaded.obj, loaded.module.TinyTask)
    assert loaded.obj is not loaded.module.scheduler  # a new instance, not the launched one
    assert loaded.task_id is None and loaded.obj._model is None


def test_cli_errors_are_one_clear_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from alphafed_flwr.cli import run_cli

    code = run_cli(simulation_main, [str(tmp_path / "nope.py"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    (tmp_path / "partial.py").write_text(
        "from alphafed.fed_avg import FedAvgScheduler\n"
        "class Half(FedAvgScheduler):\n    def build_model(self):\n        return None\n"
        "s = Half()\n"
    )
    code = run_cli(simulation_main, [str(tmp_path / "partial.py")])
    err = capsys.readouterr().err
    assert code == 2 and "Half does not implement build_optimizer" in err


def test_fedsgd_with_a_mini_batch_loader_fails_before_training(
    tmp_path: Path, tiny_mnist: Path, capsys: pytest.CaptureFixture
) -> None:
    from alphafed_flwr.cli import run_cli

    path = write_fedavg(tmp_path, base="FedSGDScheduler", batch_size=64, args="max_rounds=2")
    code = run_cli(
        simulation_main,
        [str(path), "--data-dir", str(tiny_mnist), "--out", str(tmp_path / "o"), "--num-clients", "2"],
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "batch_size=64 while its dataset has 240 samples" in err
    assert not (tmp_path / "o" / "summary.json").exists()


def test_a_task_importing_a_missing_sdk_name_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from alphafed_flwr.cli import run_cli

    (tmp_path / "dp.py").write_text("import torch\nfrom alphafed.fed_avg.dp_contractor import DPFedAvgContractor\n")
    code = run_cli(simulation_main, [str(tmp_path / "dp.py"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "alphafed.fed_avg.dp_contractor is AlphaFed's platform messaging" in err
    assert "FedAvgScheduler" in err and "instead" in err and "dp.py:2" in err
