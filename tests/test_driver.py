"""RoundDriver: any Flower strategy under AlphaFed's semantics (in-process grid)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from fakegrid import FakeGrid
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan, FedAdam, FedAvg, FedAvgM, QFedAvg

from alphafed_flwr import compat
from alphafed_flwr.api.fed_prox import FedProxScheduler
from alphafed_flwr.strategies import (
    DriverConfig,
    FedAvgWithClientLimits,
    NodesUnavailable,
    RoundDriver,
    RoundFailed,
    RoundOutcome,
    StrategyConfigError,
)
from alphafed_flwr.strategies.catalog import CATALOG, build_strategy, parse_strategy_args


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def arrays(w: float, count: int = 0, dtype: str = "float32") -> ArrayRecord:
    return ArrayRecord(
        {
            "w": Array(np.full((2, 2), w, dtype=dtype)),
            "count": Array(np.array(count, dtype=np.int64)),
        }
    )


def reply(record: RecordDict):
    """A node that answers TRAIN with ``record`` (EVALUATE with a metric)."""

    def handle(msg: Message, context) -> Message:  # noqa: ANN001
        if msg.metadata.message_type == "evaluate":
            return Message(RecordDict({"m": MetricRecord({"accuracy": 0.5, "num-examples": 3})}), reply_to=msg)
        return Message(record, reply_to=msg)

    return handle


def good(w: float, n: float = 10, count: int = 1, **metrics: float):
    return reply(RecordDict({"arrays": arrays(w, count), "metrics": MetricRecord({"num-examples": n, **metrics})}))


def with_weight(weight: object):
    metrics = MetricRecord()
    metrics.__dict__["_data"] = {"num-examples": weight}  # MetricRecord refuses some of these itself
    return reply(RecordDict({"arrays": arrays(50.0), "metrics": metrics}))


class Spy(FedAvg):
    """Flower's FedAvg that records every reply content it is asked to aggregate."""

    def __init__(self) -> None:
        super().__init__(min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1)
        self.seen: list[RecordDict] = []
        self.calls = 0

    def aggregate_train(self, server_round, replies):  # noqa: ANN001, ANN201
        replies = list(replies)
        self.calls += 1
        self.seen.extend(m.content for m in replies)
        return super().aggregate_train(server_round, replies)


class Own:
    """Hooks whose server-side update is ``update``; one round, no evaluation."""

    def __init__(self, update: RecordDict | None) -> None:
        self.update = update

    def on_round_end(self, server_round, arrays, train_metrics):  # noqa: ANN001, ANN201
        return RoundOutcome(stop=False)

    def on_client_evaluation(self, server_round, replies):  # noqa: ANN001, ANN201
        pass

    def local_train(self, server_round, arrays, config):  # noqa: ANN001, ANN201
        return self.update


@pytest.fixture()
def flwr_log() -> list[str]:
    """Messages logged on Flower's logger during the test."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Keep(logging.WARNING)
    logging.getLogger("flwr").addHandler(handler)
    yield lines
    logging.getLogger("flwr").removeHandler(handler)


def drive(strategy, handlers, rounds=1, initial=None, hooks=None, **config):  # noqa: ANN001, ANN201
    config = {"schedule_timeout": 1, "calculation_timeout": 0.5, **config}
    driver = RoundDriver(strategy, DriverConfig(**config))
    grid = FakeGrid(handlers)
    result = driver.run(grid, initial or arrays(0.0), rounds, hooks=hooks or Own(None))
    return result, grid, driver


BAD_REPLIES = {
    "nan": reply(RecordDict({"arrays": arrays(float("nan")), "metrics": MetricRecord({"num-examples": 5})})),
    "shape": reply(RecordDict({"arrays": ArrayRecord({"w": Array(np.ones((3, 2), np.float32)),
                                                       "count": Array(np.array(0))}),
                               "metrics": MetricRecord({"num-examples": 5})})),
    "dtype": reply(RecordDict({"arrays": arrays(9.0, dtype="float64"), "metrics": MetricRecord({"num-examples": 5})})),
    "keys": reply(RecordDict({"arrays": ArrayRecord({"w": Array(np.ones((2, 2), np.float32))}),
                              "metrics": MetricRecord({"num-examples": 5})})),
    "two-arrayrecords": reply(RecordDict({"arrays": arrays(9.0), "extra": arrays(9.0),
                                          "metrics": MetricRecord({"num-examples": 5})})),
    "no-metrics": reply(RecordDict({"arrays": arrays(9.0)})),
    "nan-weight": with_weight(float("nan")),
    "inf-weight": with_weight(float("inf")),
    "list-weight": with_weight([1.0, 2.0]),
    "huge-weight": with_weight(1e300),
    "zero-weight": with_weight(0),
    "negative-weight": with_weight(-3),
    "bool-weight": with_weight(True),
    "missing-weight": reply(RecordDict({"arrays": arrays(9.0), "metrics": MetricRecord({"loss": 1.0})})),
    "error": lambda msg, context: (_ for _ in ()).throw(RuntimeError("client crashed")),
}


@pytest.mark.parametrize("weighted", [True, False])
def test_bad_replies_never_reach_the_strategy(weighted: bool, flwr_log: list[str]) -> None:
    handlers = {1: good(2.0, n=5)}
    handlers.update({i + 2: handler for i, handler in enumerate(BAD_REPLIES.values())})
    bad_own = RecordDict({"arrays": arrays(float("inf")), "metrics": MetricRecord({"num-examples": 5})})
    spy = Spy()
    result, _, _ = drive(spy, handlers, hooks=Own(bad_own), weighted=weighted)
    assert spy.calls == 1 and len(spy.seen) == 1  # only node 1's update was aggregated
    np.testing.assert_array_equal(spy.seen[0]["arrays"]["w"].numpy(), np.full((2, 2), 2.0))
    np.testing.assert_allclose(result.arrays["w"].numpy(), np.full((2, 2), 2.0))
    rejected = [line for line in flwr_log if "Rejected" in line]
    assert len(rejected) == len(BAD_REPLIES) + 1, rejected
    text = "\n".join(rejected)
    for reason in ("NaN or infinite", "float32 (3, 2)", "float64 (2, 2)", "keys differ", "exactly one ArrayRecord",
                   "exactly one MetricRecord", "not a finite number", "must be a number, got list",
                   "more than the server allows", "must be positive", "must be a number, got bool",
                   "the client failed", "the server's own update"):
        assert reason in text, reason


def test_unweighted_mode_gives_every_reply_weight_one_and_reports_the_claimed_counts() -> None:
    spy = Spy()
    result, _, _ = drive(spy, {1: good(1.0, n=10), 2: good(4.0, n=30)}, weighted=False)
    np.testing.assert_allclose(result.arrays["w"].numpy(), np.full((2, 2), 2.5))
    assert [c["metrics"]["num-examples"] for c in spy.seen] == [1, 1]
    assert result.train_metrics_clientapp[1]["num-examples"] == 40


def test_the_weight_cap_is_configurable() -> None:
    spy = Spy()
    result, _, _ = drive(spy, {1: good(1.0, n=10), 2: good(4.0, n=5000)}, max_num_examples=1000)
    np.testing.assert_allclose(result.arrays["w"].numpy(), np.full((2, 2), 1.0))
    result, _, _ = drive(Spy(), {1: good(1.0, n=10), 2: good(4.0, n=5000)}, max_num_examples=10_000)
    assert result.arrays["w"].numpy()[0, 0] > 3.9


def test_a_refused_aggregate_keeps_the_strategy_state_and_is_retried() -> None:
    """FedAdam's aggregate overflows to inf: refused, m_t/v_t restored, the round retried."""
    strategy = FedAdam(min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1, eta=1e39)
    initial = arrays(0.0)
    with pytest.raises(RoundFailed, match="refused FedAdam's aggregate: the aggregate's '(w|count)' does not fit"):
        drive(strategy, {1: good(1.0)}, initial=initial, max_round_retries=1)
    assert strategy.m_t is None and strategy.v_t is None
    np.testing.assert_array_equal(initial["w"].numpy(), np.zeros((2, 2)))


def test_a_round_with_too_few_valid_results_never_calls_aggregate_train() -> None:
    spy = Spy()
    with pytest.raises(RoundFailed, match="fewer than 2 valid results"):
        drive(spy, {1: good(1.0), 2: BAD_REPLIES["nan"]}, min_clients=2, max_round_retries=2)
    assert spy.calls == 0


def test_sampling_is_seeded_and_offers_the_strategy_exactly_the_sampled_nodes() -> None:
    runs = []
    for _ in range(2):
        _, grid, _ = drive(Spy(), {n: good(1.0) for n in range(1, 9)}, rounds=3, min_clients=2, max_clients=3, seed=7)
        per_round: dict[str, set[int]] = {}
        for msg in (m for m in grid.sent if m.metadata.message_type == "train"):
            per_round.setdefault(msg.metadata.group_id, set()).add(msg.metadata.dst_node_id)
        runs.append(per_round)
    assert runs[0] == runs[1]  # Flower's sample_nodes only shuffles the nodes the driver sampled
    per_round = runs[0]
    assert [len(v) for v in per_round.values()] == [3, 3, 3]
    assert len(set(map(frozenset, per_round.values()))) > 1  # different nodes in different rounds


def test_a_strategy_that_addresses_other_nodes_is_stopped() -> None:
    class Rogue(FedAvg):
        def configure_train(self, server_round, arrays, config, grid):  # noqa: ANN001, ANN201
            return [Message(RecordDict(), dst_node_id=99, message_type="train")]

    with pytest.raises(Exception, match=r"nodes \[99\] that the driver did not sample"):
        drive(Rogue(min_train_nodes=1, min_available_nodes=1), {1: good(1.0)})


ROBUST = {"bulyan": {"num_malicious_nodes": 1}, "multikrum": {"num_nodes_to_select": 3},
          "fedtrimmedavg": {"beta": 0.2}, "fedavgm": {"server_momentum": 0.9}, "fedprox": {"proximal_mu": 0.1}}


@pytest.mark.parametrize("name", [n for n, e in CATALOG.items() if not e.refused])
def test_every_strategy_keeps_the_global_dtypes(name: str) -> None:
    strategy = build_strategy(name, ROBUST.get(name, {}))
    handlers = {n: good(1.0 + n / 10, n=10 * n, count=n) for n in range(1, 8)}  # 7 = 4f+3 for Bulyan
    result, _, _ = drive(strategy, handlers, rounds=2)
    for key in ("w", "count"):
        assert result.arrays[key].dtype == arrays(0.0)[key].dtype, (name, key)
    assert np.all(np.isfinite(result.arrays["w"].numpy()))
    assert result.arrays["count"].numpy().dtype == np.int64


def test_qfedavg_is_refused_for_alphafed_tasks_and_needs_train_loss_under_the_driver() -> None:
    with pytest.raises(StrategyConfigError, match="train_loss"):
        build_strategy("qfedavg", {})
    strategy = QFedAvg(client_learning_rate=0.1, min_train_nodes=1, min_available_nodes=1, min_evaluate_nodes=1)
    with pytest.raises(RoundFailed, match="fewer than 1 valid"):
        drive(strategy, {1: good(1.0)}, max_round_retries=0)
    def floats(w: float) -> RecordDict:  # Flower's QFedAvg cannot average int64 buffers (in-place multiply)
        return RecordDict({"arrays": ArrayRecord({"w": Array(np.full((2, 2), w, np.float32))}),
                           "metrics": MetricRecord({"num-examples": 5, "train_loss": w})})

    initial = ArrayRecord({"w": Array(np.zeros((2, 2), np.float32))})
    result, _, _ = drive(strategy, {1: reply(floats(1.0)), 2: reply(floats(2.0))}, initial=initial)
    assert result.arrays["w"].dtype == "float32" and np.all(result.arrays["w"].numpy() > 0)


def test_bulyan_needs_4f_plus_3_replies() -> None:
    with pytest.raises(StrategyConfigError, match="4f\\+3 = 7"):
        RoundDriver(Bulyan(num_malicious_nodes=1), DriverConfig(max_clients=5))
    with pytest.raises(NodesUnavailable, match="4f\\+3 = 7"):
        drive(Bulyan(num_malicious_nodes=1, min_train_nodes=1, min_available_nodes=1),
              {n: good(1.0) for n in range(1, 6)}, schedule_timeout=0.2)


def test_fedadam_gets_the_true_round_and_its_state_round_trips_through_compat() -> None:
    handlers = {1: good(1.0), 2: good(3.0)}
    straight = build_strategy("fedadam", {"eta": 0.05})
    full, _, _ = drive(straight, handlers, rounds=3)
    first = build_strategy("fedadam", {"eta": 0.05})
    part, _, _ = drive(first, handlers, rounds=1)
    resumed = build_strategy("fedadam", {"eta": 0.05})
    compat.set_strategy_state(resumed, compat.get_strategy_state(first))
    driver = RoundDriver(resumed, DriverConfig(schedule_timeout=1, calculation_timeout=0.5))
    rest = driver.run(FakeGrid(handlers), part.arrays, 3, first_round=2, hooks=Own(None))
    np.testing.assert_allclose(rest.arrays["w"].numpy(), full.arrays["w"].numpy(), rtol=1e-6)
    fresh = RoundDriver(build_strategy("fedadam", {"eta": 0.05}), DriverConfig(schedule_timeout=1))
    lost = fresh.run(FakeGrid(handlers), part.arrays, 3, first_round=2, hooks=Own(None))
    assert not np.allclose(lost.arrays["w"].numpy(), full.arrays["w"].numpy(), rtol=1e-4)


def test_fedavgm_momentum_round_trips_through_compat() -> None:
    strategy = FedAvgM(server_momentum=0.9, min_train_nodes=1, min_available_nodes=1, min_evaluate_nodes=1)
    drive(strategy, {1: good(1.0)}, rounds=2)
    state = compat.get_strategy_state(strategy)
    copy = FedAvgM(server_momentum=0.9)
    compat.set_strategy_state(copy, state)
    assert isinstance(copy.current_arrays, ArrayRecord)
    np.testing.assert_array_equal(copy.momentum_vector[0], strategy.momentum_vector[0])


def test_client_evaluation_goes_through_the_strategy() -> None:
    class Evaluate(Own):
        def on_round_end(self, server_round, arrays, train_metrics):  # noqa: ANN001, ANN201
            return RoundOutcome(stop=True, evaluate_clients=True)

    result, _, _ = drive(FedAdam(min_train_nodes=1, min_available_nodes=1, min_evaluate_nodes=1),
                         {1: good(1.0), 2: good(2.0)}, rounds=5, hooks=Evaluate(None))
    assert list(result.train_metrics_clientapp) == [1]
    assert result.evaluate_metrics_clientapp[1]["accuracy"] == pytest.approx(0.5)


def test_strategy_arguments_are_parsed_and_checked() -> None:
    assert parse_strategy_args(["eta=0.01", "beta-1=0.8", "name=abc", "flag=true"]) == {
        "eta": 0.01, "beta_1": 0.8, "name": "abc", "flag": True
    }
    assert build_strategy("fedadam", parse_strategy_args(["eta=0.01"])).eta == 0.01
    with pytest.raises(StrategyConfigError, match="has no parameter \\['etta'\\]; it takes"):
        build_strategy("fedadam", {"etta": 1})
    with pytest.raises(StrategyConfigError, match="set by the round driver"):
        build_strategy("fedavg", {"fraction_train": 0.5})
    with pytest.raises(StrategyConfigError, match="unknown strategy 'fedfoo'"):
        build_strategy("fedfoo")
    with pytest.raises(StrategyConfigError, match="KEY=VALUE"):
        parse_strategy_args(["eta"])


def test_our_strategy_runs_in_flowers_own_start_signature() -> None:
    """``strategy.start(grid=..., initial_arrays=..., num_rounds=...)`` as in Flower's templates."""
    strategy = FedAvgWithClientLimits(min_clients=2, schedule_timeout=1, calculation_timeout=1)
    result = strategy.start(grid=FakeGrid({1: good(1.0), 2: good(3.0)}), initial_arrays=arrays(0.0),
                            num_rounds=2, train_config=ConfigRecord({"lr": 0.1}))
    np.testing.assert_allclose(result.arrays["w"].numpy(), np.full((2, 2), 2.0))
    assert sorted(result.evaluate_metrics_clientapp) == [1, 2]  # Flower's behaviour without hooks


# ------------------------------------------------------------------ FedProx end to end, configs
MU_SEEN: list[float] = []


class ProxTask(FedProxScheduler):
    """A linear model on random data that records the mu it trains with."""

    def build_model(self):  # noqa: ANN201
        return torch.nn.Linear(3, 2)

    def build_optimizer(self, model):  # noqa: ANN001, ANN201
        return torch.optim.SGD(model.parameters(), lr=0.1)

    def build_train_dataloader(self):  # noqa: ANN201
        data = torch.utils.data.TensorDataset(torch.randn(8, 3), torch.randint(0, 2, (8,)))
        return torch.utils.data.DataLoader(data, batch_size=4)

    def build_test_dataloader(self):  # noqa: ANN201
        return self.build_train_dataloader()

    def train_an_epoch(self) -> None:
        MU_SEEN.append(self.mu)
        for x, y in self.train_loader:
            self.optimizer.zero_grad()
            self.calc_prox_loss(torch.nn.functional.cross_entropy, self.model(x), y).backward()
            self.optimizer.step()

    def test(self) -> None:
        pass


def test_flowers_fedprox_sends_proximal_mu_to_the_clients_scheduler() -> None:
    from alphafed_flwr.adapters.horizontal_client import ClientSettings, horizontal_client_app
    from alphafed_flwr.adapters.records import state_to_arrays
    from alphafed_flwr.adapters.templates import PickledTemplate

    task = ProxTask(mu=0.01)
    template = PickledTemplate(task)
    app = horizontal_client_app(lambda ctx: template, lambda ctx: ClientSettings(task_id="prox"))
    MU_SEEN.clear()
    strategy = build_strategy("fedprox", {"proximal_mu": 0.3})
    driver = RoundDriver(strategy, DriverConfig(schedule_timeout=1, calculation_timeout=30))
    initial = state_to_arrays(ProxTask().model.state_dict())
    driver.run(FakeGrid({1: lambda m, c: app(m, c), 2: lambda m, c: app(m, c)}), initial, 2)
    assert MU_SEEN == [0.3] * 4  # two clients, two rounds: the strategy's mu, not the task's 0.01


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_every_config_file_is_a_valid_command(path: Path) -> None:
    from alphafed_flwr.cli import apply_config_file
    from alphafed_flwr.simulation.__main__ import build_parser, options_from

    args = apply_config_file(build_parser(), ["--config", str(path)])
    tasks = [args.task] if args.task else [args.host, *(args.collaborator or [])]
    for task in tasks:
        assert (CONFIGS.parent / str(task).split(":")[0]).is_file(), task
    assert isinstance(options_from(args).strategy_args, dict)
