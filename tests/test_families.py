"""Scheduler families: one registry that every entry point looks a scheduler up in."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from flwr.app import Context, Message, RecordDict
from privacy_tasks import TinyDP, TinySecure
from secure_tasks import SecureCollaborator, SecureHost
from vertical_tasks import Collaborator, Host

from alphafed_flwr import families
from alphafed_flwr.adapters.horizontal_server import ServerSettings
from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.api.fed_avg import FedAvgScheduler, FedSGDScheduler
from alphafed_flwr.api.fed_prox import FedProxScheduler
from alphafed_flwr.api.scheduler import Scheduler
from alphafed_flwr.strategies import DriverConfig, FullBatchCheck, protocol


@pytest.mark.parametrize(
    ("cls", "name"),
    [
        (FedAvgScheduler, "fedavg"), (FedProxScheduler, "fedavg"), (FedSGDScheduler, "fedsgd"),
        (TinyDP, "dp-fedavg"), (TinySecure, "secure-fedavg"), (Host, "hetero-nn"), (Collaborator, "hetero-nn"),
        (SecureHost, "secure-hetero-nn"), (SecureCollaborator, "secure-hetero-nn"),
    ],
)
def test_a_task_belongs_to_the_family_of_its_nearest_registered_base(cls: type, name: str) -> None:
    assert families.family_of(cls).name == name


def test_a_class_outside_every_family_is_refused_naming_the_bases() -> None:
    with pytest.raises(ConfigError, match="belongs to no scheduler family: subclass one of .*FedAvgScheduler"):
        families.family_of(Scheduler)


@pytest.mark.parametrize("family", families.FAMILIES, ids=lambda f: f.name)
def test_every_piece_of_every_family_loads(family: families.Family) -> None:
    for ref in family.api:
        assert families.family_of(families.load(ref)) is family
    assert callable(families.load(family.client))
    assert family.server_adapter().__name__ == family.server.rpartition(":")[2]
    assert hasattr(family.strategy_class(), "configure_train") or family.kind == families.VERTICAL
    assert not family.preflight or callable(families.load(family.preflight))


def test_each_kind_serves_the_protocols_role_types() -> None:
    assert families.message_types(families.HORIZONTAL) == protocol.HORIZONTAL_TYPES
    assert families.message_types(families.VERTICAL) == protocol.COLLABORATOR_TYPES


class Reached(Exception):
    """Raised by the scheduler source: the message reached a registered handler."""


@pytest.mark.parametrize("kind", [families.HORIZONTAL, families.VERTICAL])
def test_a_kinds_client_app_serves_every_type_of_its_families_and_no_other(kind: families.Kind) -> None:
    def source(context: Context) -> None:
        raise Reached

    app = families.client_app(kind, source, lambda context: None)
    context = Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})
    for message_type in protocol.HORIZONTAL_TYPES + protocol.COLLABORATOR_TYPES:
        message = Message(RecordDict(), dst_node_id=2, message_type=message_type)
        if message_type in families.message_types(kind):
            with pytest.raises(Reached):
                app(message, context)
        else:
            with pytest.raises(ValueError):
                app(message, context)


class _Task:
    """The methods a FedAvg-style task must have (never called here)."""

    def build_model(self) -> None: ...
    def build_optimizer(self, model: object) -> None: ...
    def build_train_dataloader(self) -> None: ...
    def build_test_dataloader(self) -> None: ...
    def train_an_epoch(self) -> None: ...
    def test(self) -> None: ...


class Avg(_Task, FedAvgScheduler):
    pass


class Prox(_Task, FedProxScheduler):
    pass


class Sgd(_Task, FedSGDScheduler):
    pass


def _setup(scheduler: object, **settings: object):  # noqa: ANN202
    family = families.family_of(scheduler)
    config = DriverConfig(min_clients=1, max_clients=5)
    return families.load(family.setup)(scheduler, ServerSettings(Path("unused"), **settings), config)


def test_each_horizontal_family_sets_up_its_own_strategy() -> None:
    assert all(f.setup for f in families.families(families.HORIZONTAL))
    plain = _setup(Prox(), strategy="fedadam")
    assert type(plain.strategy).__name__ == "FedAdam" and plain.admit is None and plain.config.max_clients == 5
    sgd = _setup(Sgd())
    assert isinstance(sgd.admit, FullBatchCheck) and sgd.config.max_clients is None
    dp = _setup(TinyDP(w_cap=10, q=0.5, S=1.0, z=1.0))
    assert type(dp.strategy) is families.family_of(TinyDP).strategy_class()
    assert dp.config.fraction == 0.5 and dp.config.weighted is False
    secure = _setup(TinySecure(t=2))
    assert type(secure.strategy) is families.family_of(TinySecure).strategy_class()


@pytest.mark.parametrize(
    ("make", "settings", "message"),
    [
        (Avg, {"target_epsilon": 1.0}, "--target-epsilon applies to DPFedAvgScheduler"),
        (lambda: TinySecure(t=2), {"target_epsilon": 1.0}, "--target-epsilon applies to DPFedAvgScheduler"),
        (lambda: TinySecure(t=2), {"strategy": "krum"}, "its own protocol .*SecAgg.*drop --strategy"),
        (lambda: TinyDP(w_cap=10, q=0.5, S=1.0, z=1.0), {"strategy": "fedadam"}, "its own protocol .*central DP"),
    ],
)
def test_a_setup_refuses_what_its_family_cannot_do(make: Callable[[], object], settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _setup(make(), **settings)
