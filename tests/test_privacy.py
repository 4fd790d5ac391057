"""Issue 11: central DP (noise, accounting, budget, missing replies) and SecAgg+ (masking,
dropouts, threshold). In-process grids only: no Ray, no timing thresholds."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from dp_accounting import dp_event, rdp
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.common import bytes_to_ndarray
from privacy_grid import CopyingGrid
from privacy_tasks import TinyDP, TinySecure

from fakegrid import client_app_handler
from alphafed_flwr.adapters.horizontal_client import ClientSettings, horizontal_client_app
from alphafed_flwr.adapters.horizontal_server import HorizontalServer, ServerSettings
from alphafed_flwr.adapters.secagg_client import refuse_plain_train, secure_train
from alphafed_flwr.adapters.templates import PickledTemplate
from alphafed_flwr.api.errors import ConfigError, TaskFailed
from alphafed_flwr.strategies import DriverConfig, RoundDriver, RoundFailed, RoundOutcome
from alphafed_flwr.strategies.privacy import DPSettings, PrivateFedAvg
from alphafed_flwr.strategies.secagg import SecAggPlusFedAvg, SecAggSettings, quantization_range


class Keep:
    """Hooks that keep every round's arrays."""

    def __init__(self) -> None:
        self.rounds: list[ArrayRecord] = []

    def on_round_end(self, server_round, arrays, train_metrics):  # noqa: ANN001, ANN201
        self.rounds.append(arrays)
        self.metrics = train_metrics
        return RoundOutcome()

    def on_client_evaluation(self, server_round, replies):  # noqa: ANN001, ANN201
        pass

    def local_train(self, server_round, arrays, config):  # noqa: ANN001, ANN201
        return None


@pytest.fixture()
def warnings_log() -> list[str]:
    lines: list[str] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Handler(logging.WARNING)
    logging.getLogger("flwr").addHandler(handler)
    yield lines
    logging.getLogger("flwr").removeHandler(handler)


def independent_epsilon(z: float, rounds: int, delta: float) -> float:
    """Google's dp-accounting, called directly: one Gaussian mechanism per round."""
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_event.GaussianDpEvent(z), rounds)
    return float(accountant.get_epsilon(delta))


# ----------------------------------------------------------------------------- central DP
def shifting(update: np.ndarray, silent_first: int = 0):
    """A node that returns the global arrays plus ``update`` (silent for its first calls)."""
    calls = {"n": 0}

    def handle(msg: Message, context) -> Message | None:  # noqa: ANN001
        calls["n"] += 1
        if calls["n"] <= silent_first:
            return None
        w = msg.content.array_records["arrays"]["w"].numpy()
        arrays = ArrayRecord({"w": Array((w + update).astype(np.float32))})
        return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 7})}), reply_to=msg)

    return handle


def drive_dp(handlers, rounds: int, z: float, S: float, **config):  # noqa: ANN001, ANN201
    dp = PrivateFedAvg(DPSettings(noise_multiplier=z, clipping_norm=S))
    cfg = DriverConfig(schedule_timeout=1, calculation_timeout=0.2, weighted=False, seed=0, **config)
    hooks = Keep()
    initial = ArrayRecord({"w": Array(np.zeros(4000, np.float32))})
    RoundDriver(dp, cfg, admit_nodes=dp.admit).run(CopyingGrid(handlers), initial, rounds, hooks=hooks)
    return dp, hooks


def test_noise_std_is_z_s_over_the_sampled_m_and_updates_are_clipped_to_s() -> None:
    z, S, d = 0.8, 2.0, 4000
    big = np.full(d, 10.0 / np.sqrt(d), np.float32)  # every update has norm 10, clipped to S
    handlers = {n: shifting(big) for n in range(1, 9)}
    dp, hooks = drive_dp(handlers, rounds=6, z=z, S=S, fraction=0.5)  # q=0.5 of 8 nodes: m=4
    assert dp.dp.num_sampled_clients == 4
    steps = [hooks.rounds[0]["w"].numpy()] + [
        b["w"].numpy() - a["w"].numpy() for a, b in zip(hooks.rounds, hooks.rounds[1:])
    ]
    noise = np.concatenate([s - S / np.sqrt(d) for s in steps]).astype(np.float64)
    expected = z * S / 4
    n = noise.size
    assert abs(noise.std() / expected - 1) < 5 / np.sqrt(2 * n)  # std of a sample std: sigma/sqrt(2n)
    assert abs(noise.mean()) < 5 * expected / np.sqrt(n)  # the clipped mean S/sqrt(d) was added


def test_reported_epsilon_matches_the_accountant_computed_independently() -> None:
    handlers = {n: shifting(np.full(4000, 0.01, np.float32)) for n in range(1, 4)}
    dp, _ = drive_dp(handlers, rounds=3, z=1.1, S=1.0)
    epsilon, delta = dp.privacy_spent()
    assert delta == 1e-5
    assert epsilon == pytest.approx(independent_epsilon(1.1, 3, 1e-5), rel=1e-9)
    assert epsilon > independent_epsilon(1.1, 2, 1e-5)


def test_a_missing_reply_refuses_the_round_and_the_retry_is_accounted_once(warnings_log: list[str]) -> None:
    handlers = {1: shifting(np.zeros(4000, np.float32)), 2: shifting(np.zeros(4000, np.float32)),
                3: shifting(np.zeros(4000, np.float32), silent_first=1)}
    dp, hooks = drive_dp(handlers, rounds=1, z=1.1, S=1.0)
    assert len(hooks.rounds) == 1
    assert any("2 valid updates, 3 expected (3 sampled clients)" in line for line in warnings_log)
    assert dp.accountant.num_releases == 1
    assert dp.privacy_spent()[0] == pytest.approx(independent_epsilon(1.1, 1, 1e-5), rel=1e-9)


def run_in_process(scheduler, out: Path, nodes: int = 3, handlers=None, **settings):  # noqa: ANN001, ANN201
    """HorizontalServer with real ClientApps on an in-process grid."""
    template = PickledTemplate(scheduler)
    app = horizontal_client_app(lambda _: template, lambda _: ClientSettings(out_dir=str(out)))
    grid = CopyingGrid(handlers or {n: client_app_handler(app) for n in range(1, nodes + 1)})
    trainer = template.new_instance() if scheduler.involve_aggregator else None
    server = HorizontalServer(template.new_instance(), ServerSettings(out_dir=out, seed=0, **settings), trainer)
    return server.run(grid), grid


def test_a_run_stops_at_its_epsilon_budget_with_its_model_saved(tmp_path: Path) -> None:
    z, delta = 1.0, 1e-5
    budget = (independent_epsilon(z, 2, delta) + independent_epsilon(z, 3, delta)) / 2
    summary, _ = run_in_process(TinyDP(w_cap=10, q=1.0, S=1.0, z=z, max_rounds=6), tmp_path,
                                target_epsilon=budget)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert "privacy budget" in summary["stopped"] and "round 3 not run" in summary["stopped"]
    assert summary["privacy"] == {"epsilon": pytest.approx(independent_epsilon(z, 2, delta)), "delta": delta}
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["privacy"]["epsilon"] <= budget
    model = torch.load(tmp_path / "model.pt")
    assert set(model) == {"weight", "bias"} and torch.isfinite(model["weight"]).all()
    rows = list(csv.DictReader((tmp_path / "metrics" / "privacy.csv").open()))
    assert [int(r["round"]) for r in rows] == [1, 2]
    assert [float(r["dp-epsilon"]) for r in rows] == pytest.approx(
        [independent_epsilon(z, k, delta) for k in (1, 2)])
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents*"))


def test_a_resumed_dp_run_keeps_counting_epsilon(tmp_path: Path) -> None:
    run_in_process(TinyDP(w_cap=10, q=1.0, S=1.0, z=1.0, max_rounds=2), tmp_path)
    summary, _ = run_in_process(TinyDP(w_cap=10, q=1.0, S=1.0, z=1.0, max_rounds=2), tmp_path, rounds=3)
    assert summary["resumed_from_round"] == 2 and summary["rounds_completed"] == 3
    assert summary["privacy"]["epsilon"] == pytest.approx(independent_epsilon(1.0, 3, 1e-5))


def test_the_servers_own_update_joins_the_dp_mean_and_its_noise(tmp_path: Path, caplog) -> None:  # noqa: ANN001
    caplog.set_level(logging.INFO, logger="flwr")
    summary, _ = run_in_process(TinyDP(w_cap=10, q=1.0, S=1.0, z=1.0, max_rounds=1, involve_aggregator=True),
                                tmp_path)
    assert summary["rounds"][0]["train"]["num-results"] == 4
    assert "aggregate_fit: central DP noise with 0.2500 stdev added" in caplog.messages  # z*S/(3+1)


def test_dp_configuration_errors_are_clear() -> None:
    with pytest.raises(ConfigError, match="q \\(client sampling rate\\)"):
        TinyDP(w_cap=10, q=1.5, S=1.0, z=1.0)
    with pytest.raises(ConfigError, match="z \\(noise multiplier\\)"):
        TinyDP(w_cap=10, q=1.0, S=1.0, z=0.0)


# ----------------------------------------------------------------------------- SecAgg+
KEYS = ("w", "b", "count")


def secure_node(delta: dict[str, np.ndarray], n: int, fail_calls: tuple[int, ...] = ()):
    """A SecAgg+ node (Flower's mod) whose training returns global + ``delta`` for ``n`` samples;
    its training fails (drops out mid-protocol) on the calls in ``fail_calls``."""
    scheduler = SimpleNamespace(max_weight=100_000.0, clipping_range=8.0)
    calls = {"n": 0}

    def train(msg: Message) -> Message:
        calls["n"] += 1
        if calls["n"] in fail_calls:
            raise RuntimeError("node lost mid-round")
        glob = msg.content.array_records["arrays"]
        local = {k: glob[k].numpy() + delta[k].astype(glob[k].numpy().dtype) for k in KEYS}
        arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in local.items()})
        return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": n})}), reply_to=msg)

    return lambda msg, ctx: secure_train(msg, ctx, lambda: scheduler, train)


def secure_setup(count: int, seed: int = 0):  # noqa: ANN201
    rng = np.random.default_rng(seed)
    deltas = {i: {"w": rng.normal(0, 0.1, (6, 5)).astype(np.float32), "b": rng.normal(0, 0.1, 5).astype(np.float32),
                  "count": np.array(2, np.int64)} for i in range(1, count + 1)}
    weights = {i: 100 * i for i in deltas}
    initial = ArrayRecord({"w": Array(np.ones((6, 5), np.float32)), "b": Array(np.zeros(5, np.float32)),
                           "count": Array(np.array(10, np.int64))})
    return deltas, weights, initial


def fedavg(initial: ArrayRecord, deltas: dict, weights: dict, nodes) -> dict[str, np.ndarray]:  # noqa: ANN001
    total = sum(weights[i] for i in nodes)
    return {k: initial[k].numpy() + sum(weights[i] * deltas[i][k].astype(np.float64) for i in nodes) / total
            for k in KEYS}


def drive_secure(handlers, initial, t: int, retries: int = 3):  # noqa: ANN001, ANN201
    strategy = SecAggPlusFedAvg(SecAggSettings(threshold=t, timeout=1.0))
    hooks = Keep()
    grid = CopyingGrid(handlers)
    cfg = DriverConfig(min_clients=t, schedule_timeout=1, calculation_timeout=1, seed=0, max_round_retries=retries)
    RoundDriver(strategy, cfg).run(grid, initial, 1, hooks=hooks)
    return hooks, grid


def received_arrays(grid: CopyingGrid) -> list[np.ndarray]:
    """Every array the server received: array records and bytes in config records."""
    found = []
    for msg in grid.received:
        if msg.has_error():
            continue
        for record in msg.content.array_records.values():
            found.extend(np.asarray(record[k].numpy()) for k in record.keys())
        for record in msg.content.config_records.values():
            for value in record.values():
                for item in value if isinstance(value, list) else [value]:
                    if isinstance(item, bytes):
                        try:
                            found.append(bytes_to_ndarray(item))
                        except Exception:  # noqa: BLE001, S112 - keys and ciphertexts are not arrays
                            continue
    return found


def test_secagg_server_sees_no_update_and_the_sum_equals_fedavg_within_quantization() -> None:
    deltas, weights, initial = secure_setup(3)
    handlers = {i: secure_node(deltas[i], weights[i]) for i in deltas}
    hooks, grid = drive_secure(handlers, initial, t=2)
    result = hooks.rounds[0]
    expected = fedavg(initial, deltas, weights, deltas)
    step = 2 * 8.0 / quantization_range(3)  # one quantization step of a weighted update
    tolerance = 3 * step / (sum(weights.values()) / 100_000.0)
    for key in ("w", "b"):
        assert result[key].numpy().dtype == np.float32
        np.testing.assert_allclose(result[key].numpy(), expected[key], atol=tolerance + 1e-6)
    assert result["count"].numpy().dtype == np.int64 and int(result["count"].numpy()) == 12
    T = quantization_range(3)
    views = []  # what a leak would look like: each update in clear, weighted, quantized
    for i, delta in deltas.items():
        ratio = weights[i] / 100_000.0
        for key in KEYS:
            clear = delta[key].astype(np.float64)
            views += [(clear, 1e-6), (ratio * clear, 1e-6), ((np.clip(ratio * clear, -8, 8) + 8) * T / 16, 2.0)]
    seen = received_arrays(grid)
    compared = 0
    for arr in seen:
        for view, atol in views:
            if arr.shape == view.shape and view.size > 1:
                compared += 1
                assert not np.allclose(arr.astype(np.float64), view, atol=atol)
    assert compared >= 3 * 3 * 2 * 2  # every node's masked w and b against every view of w and b


def test_secagg_one_dropout_mid_protocol_still_gives_the_survivors_sum() -> None:
    deltas, weights, initial = secure_setup(4, seed=1)
    handlers = {i: secure_node(deltas[i], weights[i], fail_calls=(1,) if i == 3 else ()) for i in deltas}
    hooks, _ = drive_secure(handlers, initial, t=2, retries=0)
    expected = fedavg(initial, deltas, weights, (1, 2, 4))
    for key in ("w", "b"):
        np.testing.assert_allclose(hooks.rounds[0][key].numpy(), expected[key], atol=1e-4)
    assert int(hooks.metrics["secagg-dropouts"]) == 1 and int(hooks.metrics["num-results"]) == 3


def test_secagg_below_the_threshold_fails_clearly_and_is_retried(warnings_log: list[str]) -> None:
    deltas, weights, initial = secure_setup(3, seed=2)
    flaky = {i: secure_node(deltas[i], weights[i], fail_calls=(1,) if i == 3 else ()) for i in deltas}
    hooks, _ = drive_secure(flaky, initial, t=3)
    assert any("SecAgg+ halted" in w and "t=3" in w and "retry 1/3" in w for w in warnings_log)
    expected = fedavg(initial, deltas, weights, (1, 2, 3))
    np.testing.assert_allclose(hooks.rounds[0]["w"].numpy(), expected["w"], atol=1e-4)
    broken = {i: secure_node(deltas[i], weights[i], fail_calls=tuple(range(1, 9)) if i == 3 else ())
              for i in deltas}
    with pytest.raises(RoundFailed, match="SecAgg\\+ halted"):
        drive_secure(broken, initial, t=3, retries=1)


def test_secure_task_end_to_end_and_its_nodes_refuse_plain_training(tmp_path: Path) -> None:
    summary, grid = run_in_process(TinySecure(t=2, max_rounds=2), tmp_path)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert all(r["train"]["num-results"] == 3 for r in summary["rounds"])
    assert summary["final_test"]["accuracy"] > 0.6
    with pytest.raises(ConfigError, match="only through SecAgg"):
        refuse_plain_train(TinySecure(t=2))
    with pytest.raises(ConfigError, match="min_clients \\(1\\) is below the threshold t=2"):
        TinySecure(t=2, min_clients=1)
    with pytest.raises(TaskFailed, match="cannot be combined"):
        try:
            run_in_process(TinySecure(t=2), tmp_path / "x", strategy="fedadam")
        except ConfigError as exc:
            raise TaskFailed(str(exc)) from exc
