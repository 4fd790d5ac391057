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
    FedProxScheduler,
    FedSGDScheduler,
    RunEnvironment,
    UserCodeError,
    get_dataset_dir,
    register_metrics,
)
from alphafed_flwr.api.env import set_environment
from alphafed_flwr.api.scheduler import call_user, launch_capture


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


# ----- FedProx ---------------------------------------------------------------------------
class Prox(FedProxScheduler):
    """A FedProx task whose epoch moves the weights to fixed values and takes the loss."""

    def build_model(self) -> nn.Module:
        return nn.Linear(2, 1)

    def build_optimizer(self, model: nn.Module) -> optim.Optimizer:
        return optim.SGD(model.parameters(), lr=0.1)

    def build_train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.randn(6, 2), torch.randn(6, 1)), batch_size=3)

    def build_test_dataloader(self) -> DataLoader:
        return self.build_train_dataloader()

    def train_an_epoch(self) -> None:
        with torch.no_grad():
            self.model.weight.copy_(torch.tensor([[1.0, -2.0]]))
            self.model.bias.copy_(torch.tensor([0.5]))
        self.model.zero_grad()
        def task_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a * b + 0.0 * self.model.bias.sum()  # 0.3, with a graph to the model

        self.loss = self.calc_prox_loss(task_loss, torch.tensor(0.5), b=torch.tensor(0.6))
        self.loss.backward()

    def test(self) -> None:
        pass


GLOBAL = {"weight": torch.tensor([[0.5, 0.0]]), "bias": torch.tensor([1.5])}


def test_the_proximal_term_matches_a_hand_computation() -> None:
    sched = Prox(mu=0.2)
    sched.load_state_dict(GLOBAL)
    assert sched.run_local_round() == 6
    # w - w_global = (0.5, -2.0 | -1.0): ||.||^2 = 0.25 + 4 + 1 = 5.25; (mu/2) * 5.25 = 0.525.
    # (The SDK's unsquared per-tensor norms would give 0.1 * (sqrt(4.25) + 1) = 0.306.)
    assert sched.loss.item() == pytest.approx(0.5 * 0.6 + 0.525)
    # d/dw (mu/2)||w - w_global||^2 = mu * (w - w_global)
    assert torch.allclose(sched.model.weight.grad, torch.tensor([[0.1, -0.4]]))
    assert torch.allclose(sched.model.bias.grad, torch.tensor([-0.2]))
    assert torch.equal(sched.global_model.weight, GLOBAL["weight"])  # the round's copy is kept
    assert not any(p.requires_grad for p in sched.global_model.parameters())


def test_fedprox_with_mu_zero_is_the_plain_loss_and_needs_a_round() -> None:
    sched = Prox(mu=0.0)
    with pytest.raises(ConfigError, match="call it from train_an_epoch"):
        sched.calc_prox_loss(lambda: torch.tensor(1.0))
    sched.load_state_dict(GLOBAL)
    sched.run_local_round()
    assert sched.loss.item() == pytest.approx(0.3)


def test_fedprox_trains_on_the_aggregator_too(tmp_path: Path) -> None:
    sched = Prox(mu=0.2, involve_aggregator=True)
    sched.bind(RunEnvironment("server", "server-trainer", None))
    sched.load_state_dict(GLOBAL)
    sched.run_local_round()
    assert sched.is_aggregator and sched.loss.item() == pytest.approx(0.825)


def test_fedprox_takes_proximal_mu_from_the_round_config() -> None:
    sched = Prox(mu=0.2)
    sched.apply_round_config({"server-round": 3})
    assert sched.mu == 0.2
    sched.apply_round_config({"server-round": 3, "proximal-mu": 0.4})
    assert sched.mu == 0.4
    sched.load_state_dict(GLOBAL)
    sched.run_local_round()
    assert sched.loss.item() == pytest.approx(0.3 + 0.2 * 5.25)
    for bad in (-0.1, float("nan"), "0.1", True):
        with pytest.raises(ConfigError, match="proximal-mu"):
            sched.apply_round_config({"proximal-mu": bad})
        with pytest.raises(ConfigError, match="mu must be"):
            Prox(mu=bad)
    plain = Complete()
    plain.apply_round_config({"proximal-mu": 0.4})  # FedAvg ignores it
    assert not hasattr(plain, "mu")


# ----- members the SDK's base classes give task code -------------------------------------
def test_id_is_aggregator_and_device_follow_the_party_and_can_be_assigned() -> None:
    server, client = Complete(), Complete()
    server.bind(RunEnvironment("server", "server", None))
    client.bind(RunEnvironment("client", "client-2", None, device="meta"))
    assert (server.id, server.is_aggregator, server.device) == ("server", True, torch.device("cpu"))
    assert (client.id, client.is_aggregator, client.device) == ("client-2", False, torch.device("meta"))
    client.device, client.id, client.is_aggregator = "cpu", "node-a", True
    assert (client.id, client.is_aggregator, client.device) == ("node-a", True, torch.device("cpu"))
    assert Complete().id == "local" and not Complete().is_aggregator

    class EarlyDevice(Complete):
        def __init__(self) -> None:
            self.device = torch.device("meta")  # set before super().__init__, as some tasks do
            super().__init__()

    assert EarlyDevice().device == torch.device("meta")


def test_push_log_logs_and_records_into_the_party_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sched = Complete()
    sched.push_log("outside a run")  # logged only
    sched.bind(RunEnvironment("client", "client-1", tmp_path))
    sched.set_round(4)
    sched.push_log("local context is ready")
    assert "[client-1] local context is ready" in capsys.readouterr().err
    lines = (tmp_path / "parties" / "client-1" / "push_log.log").read_text().splitlines()
    assert len(lines) == 1 and lines[0].endswith("\tround 4\tlocal context is ready")
    with pytest.raises(ConfigError, match="non-empty string"):
        sched.push_log("")


def test_fs_folders_are_the_party_folders(tmp_path: Path) -> None:
    from alphafed import fs

    set_environment(RunEnvironment("client", "client-0", tmp_path / "out", tmp_path / "data", "t1"))
    root = tmp_path / "out" / "parties" / "client-0"
    assert fs.get_root_dir("t1") == str(root)
    for name in ("runtime", "share", "result", "model"):
        folder = getattr(fs, f"get_{name}_dir")()
        assert folder == str(root / name) and Path(folder).is_dir()
    assert fs.get_dataset_dir("t1") == str(tmp_path / "data")
    set_environment(None)  # outside a run: <cache>/tasks/<task id>/local
    assert fs.get_result_dir("my task") == str(tmp_path / "cache" / "tasks" / "my_task" / "local" / "result")
    with pytest.raises(ConfigError, match="task_id must be a string"):
        fs.get_root_dir(7)  # type: ignore[arg-type]


def test_submit_registers_like_launch_task(monkeypatch: pytest.MonkeyPatch) -> None:
    import alphafed_flwr.simulation.local as local

    runs: list[tuple] = []
    monkeypatch.setattr(local, "launch_directly", lambda s, t, **kw: runs.append((s, t, kw)))
    sched = Complete()
    with launch_capture() as calls:
        sched.submit("task-9")
    assert calls == [(sched, "task-9")] and not runs and sched.task_id == "task-9"
    sched.submit("task-10")  # run directly: a local simulation
    assert runs == [(sched, "task-10", {})]


def test_mock_mode_runs_the_initiator_and_refuses_a_data_owner(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import alphafed_flwr.simulation.local as local
    from alphafed.mock import is_mock_mode, mock_context, mock_node_id, mock_nodes

    runs: list[tuple] = []
    monkeypatch.setattr(local, "launch_directly", lambda s, t, **kw: runs.append((t, kw)))
    assert not is_mock_mode() and mock_node_id() is None and mock_nodes() == []
    with mock_context(id="agg", nodes=["agg", "d1", "d2"]):
        assert is_mock_mode() and mock_node_id() == "agg" and mock_nodes() == ["agg", "d1", "d2"]
        Complete()._run(id="agg", task_id="mock-1", is_initiator=True)
        with pytest.raises(SystemExit) as info:
            Complete()._run(id="d1", task_id="mock-1")
    assert runs == [("mock-1", {"num_clients": 2, "fresh": True})]
    assert info.value.code == 2
    assert "Run only the initiator's script" in capsys.readouterr().err
    Complete()._run(id="agg", task_id="t", is_initiator=True, recover=True)  # no mock context
    assert runs[-1] == ("t", {"num_clients": None, "fresh": False})
    with launch_capture() as calls:
        data_owner = Complete()
        data_owner._run(id="d1", task_id="mock-1")  # loaded by our tools: registered
    assert calls == [(data_owner, "mock-1")] and data_owner.id == "d1"
    with pytest.raises(ConfigError, match="distinct strings"):
        mock_context(nodes=["a", "a"])


def test_a_data_checker_without_task_id_submits(capsys: pytest.CaptureFixture) -> None:
    class Empty(DataChecker):
        def verify_data(self) -> tuple[bool, str]:
            return False, "no images in /data"

    checker = Empty()
    with launch_capture() as calls:
        checker.submit("t2")
    assert calls == [(checker, "t2")]
    checker.submit("t2")  # run directly: the check runs and its result is logged
    assert "Data check of task t2 failed: no images in /data" in capsys.readouterr().err
