"""The scheduler API: construction errors, lazy resources, metrics, DataChecker, environment."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch import nn, optim
from torch.utils.data import DataLoader, TensorDataset

from alphafed_flwr.api import (
    ConfigError,
    DataChecker,
    FedAvgScheduler,
    FedSGDScheduler,
    RunEnvironment,
    UserCodeError,
    get_dataset_dir,
    register_metrics,
)
from alphafed_flwr.api.env import set_environment
from alphafed_flwr.api.scheduler import call_user


class Complete(FedAvgScheduler):
    built = 0

    def build_model(self) -> nn.Module:
        Complete.built += 1
        return nn.Linear(2, 1)

    def build_optimizer(self, model: nn.Module) -> optim.Optimizer:
        return optim.SGD(model.parameters(), lr=0.1)

    def build_train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.randn(10, 2), torch.randn(10, 1)), batch_size=4)

    def build_test_dataloader(self) -> DataLoader:
        return self.build_train_dataloader()

    def train_an_epoch(self) -> None:
        pass

    @register_metrics(name="scores", keys=["loss", "accuracy"])
    @register_metrics(name="timing", keys=["seconds"])
    def test(self) -> None:
        self.get_metrics("scores").append_metrics_item({"loss": 0.5, "accuracy": torch.tensor(0.75)})
        self.get_metrics("timing").append_metrics_item({"seconds": 1.0})


def test_a_missing_method_is_named_with_the_fix() -> None:
    class Partial(FedAvgScheduler):
        def build_model(self) -> nn.Module:
            return nn.Linear(1, 1)

    with pytest.raises(ConfigError) as info:
        Partial()
    message = str(info.value)
    for name in ("build_optimizer", "build_train_dataloader", "train_an_epoch", "test or run_test"):
        assert name in message
    assert "add these methods" in message


def test_run_test_is_accepted_instead_of_test() -> None:
    class WithRunTest(Complete):
        test = None  # type: ignore[assignment]

        def run_test(self) -> dict:
            return {"accuracy": 0.5}

    assert WithRunTest().collect_test() == {"accuracy": 0.5}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_clients": 3, "max_clients": 2}, "min_clients (3) > max_clients (2)"),
        ({"merge_epochs": 0}, "merge_epochs must be a positive integer"),
        ({"max_rounds": -1}, "max_rounds must be >= 0"),
        ({"min_clients": "2"}, "min_clients must be an integer"),
    ],
)
def test_configuration_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Complete(**kwargs)


@pytest.mark.parametrize("argument", ["max_clients", "merge_epochs"])
def test_fedsgd_refuses_max_clients_and_merge_epochs(argument: str) -> None:
    fedsgd = type("S", (FedSGDScheduler,), dict(Complete.__dict__))
    with pytest.raises(ConfigError, match=f"takes no {argument}"):
        fedsgd(**{argument: 2})


def test_lazy_resources_are_built_once() -> None:
    Complete.built = 0
    sched = Complete()
    assert Complete.built == 0
    assert sched.model is sched.model and Complete.built == 1
    assert sched.optimizer is sched.optimizer
    assert sched.train_loader is sched.train_loader
    assert sched.validation_loader is None


def test_metrics_rows_are_written_and_flushed_per_row(tmp_path: Path) -> None:
    sched = Complete()
    sched.bind(RunEnvironment("server", "server", tmp_path))
    sched.set_round(3)
    values = sched.collect_test()
    assert values == {"loss": 0.5, "accuracy": 0.75, "seconds": 1.0}
    rows = list(csv.DictReader((tmp_path / "metrics" / "scores.csv").open()))
    assert rows == [{"round": "3", "loss": "0.5", "accuracy": "0.75"}]
    assert (tmp_path / "metrics" / "timing.csv").exists()


def test_metrics_rows_must_have_exactly_the_registered_keys() -> None:
    sched = Complete()
    sched.collect_test()
    group = sched.get_metrics("scores")
    with pytest.raises(ConfigError, match=r"missing key\(s\) \['accuracy'\]"):
        group.append_metrics_item({"loss": 1.0})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['f1'\]"):
        group.append_metrics_item({"loss": 1.0, "accuracy": 1.0, "f1": 2.0})
    with pytest.raises(ConfigError, match="no metrics group 'nope'"):
        sched.get_metrics("nope")


def test_validate_context_chain_and_user_errors_point_at_the_user_line() -> None:
    class Checked(Complete):
        def validate_context(self) -> None:
            super().validate_context()
            raise AssertionError("no data")

    with pytest.raises(UserCodeError) as info:
        call_user(Checked(), "validate_context")
    assert "Checked.validate_context raised AssertionError: no data" in str(info.value)
    assert "test_api.py" in str(info.value)


def test_tb_writer_writes_into_the_party_folder(tmp_path: Path) -> None:
    sched = Complete()
    sched.bind(RunEnvironment("client", "client-1", tmp_path))
    sched.tb_writer.add_scalar("x", 1.0, 1)
    sched.close_outputs()
    assert list((tmp_path / "tensorboard" / "client-1").glob("events.out.tfevents.*"))


def test_data_checker_reports_reasons_and_exceptions() -> None:
    class Ok(DataChecker):
        def verify_data(self) -> tuple[bool, str]:
            return True, f"task {self.task_id} fine"

    class Broken(DataChecker):
        def verify_data(self) -> tuple[bool, str]:
            raise FileNotFoundError("/data/MNIST")

    class Wrong(DataChecker):
        def verify_data(self):  # noqa: ANN202
            return "yes"

    assert Ok("t1").execute_verification() == (True, "task t1 fine")
    ok, reason = Broken("t").execute_verification()
    assert not ok and "FileNotFoundError: /data/MNIST" in reason
    ok, reason = Wrong("t").execute_verification()
    assert not ok and "must return (bool, str)" in reason


def test_get_dataset_dir_prefers_the_party_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_environment(RunEnvironment("client", "c", None, tmp_path / "mine"))
    assert get_dataset_dir("t") == str(tmp_path / "mine")
    set_environment(None)
    monkeypatch.setenv("ALPHAFED_DATA_DIR", str(tmp_path / "env"))
    assert get_dataset_dir() == str(tmp_path / "env")
