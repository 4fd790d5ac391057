"""One settings object per run: its run config round trip, its errors, and every command's
flags reaching the same settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from alphafed_flwr import app_folder, server
from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.settings import RUN, VERTICAL, RunSettings, add_flags
from alphafed_flwr.simulation.__main__ import build_parser, options_from

#: A value other than the default for every field that travels in the run config.
EVERY_FIELD_SET = RunSettings(
    kind=VERTICAL,
    task_id="t-1",
    out=Path("/runs/x"),
    data_dir=Path("/data/server"),
    clients_data_dir=Path("/data/clients"),
    rounds=7,
    seed=0,
    partition="dirichlet",
    alpha=0.1,
    samples=16,
    reset_optimizer=True,
    weighted=False,
    strategy="fedadam",
    strategy_args={"eta": 0.01, "tau": 1e-9},
    max_num_examples=500.0,
    target_epsilon=2.5,
    client_eval="off",
    resume=False,
    batches_per_exchange=4,
    max_round_retries=1,
    num_collaborators=2,
)


def _in_run_config() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(RunSettings) if f.metadata["key"]]


def test_every_run_config_field_differs_from_its_default_in_the_fixture() -> None:
    defaults = RunSettings()
    assert [f.name for f in _in_run_config() if getattr(EVERY_FIELD_SET, f.name) == getattr(defaults, f.name)] == []


@pytest.mark.parametrize("settings", [RunSettings(), EVERY_FIELD_SET], ids=["defaults", "every-field-set"])
def test_settings_survive_the_run_config(settings: RunSettings) -> None:
    config = settings.to_run_config()
    assert all(isinstance(v, (bool, int, float, str)) for v in config.values())
    assert RunSettings.from_run_config(config) == settings


def test_an_unset_setting_is_left_out_never_encoded() -> None:
    config = RunSettings().to_run_config()
    for name in ("seed", "rounds", "target-epsilon", "server-data-dir", "data-dir", "task-id"):
        assert name not in config
    assert -1 not in config.values() and "" not in config.values()
    assert RunSettings.from_run_config({}) == RunSettings()


def test_flowers_integers_are_accepted_for_numbers() -> None:
    """``--run-config "alpha=1"`` arrives as an integer."""
    assert RunSettings.from_run_config({"alpha": 1}).alpha == 1.0


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"seeds": 1}, "unknown key 'seeds'"),
        ({"seed": "1"}, "key 'seed' must be an integer"),
        ({"seed": True}, "key 'seed' must be an integer"),
        ({"resume": 1}, "key 'resume' must be a boolean"),
        ({"alpha": "0.5"}, "key 'alpha' must be a number"),
        ({"out-dir": ""}, "key 'out-dir' must be a path"),
        ({"strategy-args": "[1]"}, "key 'strategy-args' must be a JSON table"),
        ({"strategy-args": "{"}, "key 'strategy-args' must be a JSON table"),
        ({"mode": "diagonal"}, "kind must be 'horizontal' or 'vertical'"),
    ],
)
def test_a_bad_run_config_names_the_key_and_the_fix(config: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        RunSettings.from_run_config(config)
    if "key" in message:
        assert "--run-config" in str(info.value)


FLAGS = ["--rounds", "4", "--seed", "3", "--partition", "sample", "--samples", "8", "--alpha", "0.2",
         "--reset-optimizer", "--unweighted", "--strategy", "fedadam", "--strategy-arg", "eta=0.05",
         "--max-num-examples", "900", "--target-epsilon", "1.5", "--client-eval", "off", "--fresh",
         "--batches-per-exchange", "2", "--max-round-retries", "5", "--data-dir", "data", "--task-id", "t"]


def test_the_simulation_and_the_server_reach_the_same_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    simulated = options_from(build_parser().parse_args(["task.py", "--out", str(out), *FLAGS])).resolved()
    deployed = server.run_settings(
        server.build_parser().parse_args(["task.py", "--out", str(out), *FLAGS]), out, "t", "horizontal"
    )
    read_back = RunSettings.from_run_config(deployed.to_run_config())
    placement = {"num_clients": 3, "cpus_per_client": None, "gpus_per_client": 0.0, "ray_address": None}
    assert read_back == dataclasses.replace(simulated, **placement) == deployed
    assert read_back.strategy_args == {"eta": 0.05} and read_back.data_dir == tmp_path / "data"
    assert read_back.weighted is False and read_back.resume is False


def test_the_views_carry_the_settings() -> None:
    s = EVERY_FIELD_SET
    srv = s.server_settings(mode="deployment")
    assert (srv.rounds, srv.seed, srv.weighted, srv.resume, srv.strategy, srv.target_epsilon) == (
        7, 0, False, False, "fedadam", 2.5)
    assert srv.record["mode"] == "deployment" and srv.record["strategy_args"] == {"eta": 0.01, "tau": 1e-9}
    vert = s.vertical_settings()
    assert (vert.num_collaborators, vert.batches_per_exchange, vert.data_dir) == (2, 4, Path("/data/server"))
    node = s.client_settings({"out-dir": "/node/out", "partition-id": 1})
    assert (node.out_dir, node.data_dir, node.partition, node.alpha) == ("/node/out", "/data/clients", "dirichlet", 0.1)
    assert s.client_settings({"data-dir": "/mine"}).partition is None
    assert s.client_settings({"data-dir": "/mine"}).data_dir == "/mine"
    shared = s.client_settings()  # a simulation: the run's folders, partitioned
    assert (shared.out_dir, shared.data_dir, shared.partition) == ("/runs/x", "/data/server", "dirichlet")
    assert s.collaborator_settings({"out-dir": "/c"}).out_dir == "/c"
    assert s.collaborator_settings().data_dir == "/data/server"


def test_every_run_flag_is_generated_from_a_field() -> None:
    """The simulation, the server and the app folder offer the same run flags: the fields'."""
    import argparse

    parser = argparse.ArgumentParser()
    add_flags(parser, (RUN,))
    generated = {a.option_strings[0] for a in parser._actions if a.option_strings and a.dest != "help"}
    for command in (build_parser(), server.build_parser(), app_folder.build_parser()):
        offered = {s for a in command._actions for s in a.option_strings}
        assert generated <= offered
    flags = {f.metadata["flag"] for f in dataclasses.fields(RunSettings) if f.metadata["group"] == RUN}
    assert generated == flags - {None}
