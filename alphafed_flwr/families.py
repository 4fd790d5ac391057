"""Scheduler families, registered in one place.

A family is what a kind of AlphaFed task needs on both sides of Flower: its scheduler
API classes, the client-side handlers that serve its messages, the server-side adapter
that runs it, and its default strategy. The entry points (simulation, server and client
commands, the deployment apps, ``launch_task``) look a scheduler's family up here instead
of testing its class. Adding a family is one entry in ``FAMILIES`` (plus its own modules).

Every piece is named ``"module:attribute"`` and imported only when asked for, so this
module stays light (the deployment's ClientApp imports it before torch).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from alphafed_flwr.strategies.protocol import EVALUATE, EXCHANGE, FULL_BATCH, HELLO, PSI, SECURE, TRAIN

Kind = Literal["horizontal", "vertical"]
HORIZONTAL: Kind = "horizontal"
VERTICAL: Kind = "vertical"


@dataclass(frozen=True)
class Family:
    """One scheduler family.

    Parameters
    ----------
    name : str
        Short name (logs, errors).
    kind : {"horizontal", "vertical"}
        Horizontal: a server and data-owning clients. Vertical: a label-holding host and
        feature-holding collaborators.
    api : tuple[str, ...]
        Its scheduler classes (``"module:Class"``); a scheduler belongs to the family of
        the nearest of them in its class hierarchy.
    client : str
        ``"module:function"`` registering the handlers of the family's node side on a
        ClientApp: called as ``f(source_fn=..., settings_fn=..., app=app)``.
    message_types : tuple[str, ...]
        The message types those handlers serve (``strategies.protocol``).
    server : str
        ``"module:Class"``: the server-side adapter (``HorizontalServer``, a vertical host).
    strategy : str
        Default strategy: a ``--strategy`` catalog name (``strategies.catalog``) or
        ``"module:Class"`` for a strategy of the family's own.
    setup : str
        Horizontal families: ``"module:function"`` that builds the server's strategy, called
        as ``f(scheduler, ServerSettings, DriverConfig) -> StrategySetup``
        (``adapters.private``); vertical hosts build ``strategy`` themselves (``""``).
    preflight : str
        ``"module:function"`` that checks the task before a simulation starts Ray, called
        as ``f(scheduler, RunSettings)`` (raises ``ConfigError``); ``""``: no check.
    """

    name: str
    kind: Kind
    api: tuple[str, ...]
    client: str
    message_types: tuple[str, ...]
    server: str
    strategy: str
    setup: str = ""
    preflight: str = ""

    def server_adapter(self) -> type:
        """The server-side adapter class (imported now)."""
        return load(self.server)  # type: ignore[no-any-return]

    def strategy_class(self) -> type:
        """The default strategy's class (imported now; catalog names from the catalog)."""
        if ":" in self.strategy:
            return load(self.strategy)  # type: ignore[no-any-return]
        from alphafed_flwr.strategies.catalog import CATALOG  # pylint: disable=import-outside-toplevel

        return CATALOG[self.strategy].cls


_HORIZONTAL_CLIENT = "alphafed_flwr.adapters.horizontal_client:horizontal_client_app"
_SERVER_MODULE = "alphafed_flwr.adapters.horizontal_server"
_HORIZONTAL_SERVER = f"{_SERVER_MODULE}:HorizontalServer"

#: Every family, general ones before the ones that extend them (client handlers register
#: in this order).
FAMILIES: tuple[Family, ...] = (
    Family("fedavg", HORIZONTAL, ("alphafed_flwr.api.fed_avg:FedAvgScheduler", "alphafed_flwr.api.fed_prox:FedProxScheduler"),
           _HORIZONTAL_CLIENT, (TRAIN, EVALUATE, FULL_BATCH), _HORIZONTAL_SERVER, "fedavg",
           setup=f"{_SERVER_MODULE}:catalog_setup"),
    # FedSGD: every node, each checked for a full-batch loader (strategies.fedsgd.FullBatchCheck)
    Family("fedsgd", HORIZONTAL, ("alphafed_flwr.api.fed_avg:FedSGDScheduler",),
           _HORIZONTAL_CLIENT, (TRAIN, EVALUATE, FULL_BATCH), _HORIZONTAL_SERVER, "fedavg",
           setup=f"{_SERVER_MODULE}:fedsgd_setup",
           preflight="alphafed_flwr.simulation.horizontal:check_fedsgd_loader"),
    Family("dp-fedavg", HORIZONTAL, ("alphafed_flwr.api.dp_fed_avg:DPFedAvgScheduler",),
           _HORIZONTAL_CLIENT, (TRAIN, EVALUATE, FULL_BATCH), _HORIZONTAL_SERVER,
           "alphafed_flwr.strategies.privacy:PrivateFedAvg", setup="alphafed_flwr.adapters.private:dp_setup"),
    Family("secure-fedavg", HORIZONTAL, ("alphafed_flwr.api.secure_fed_avg:SecureFedAvgScheduler",),
           _HORIZONTAL_CLIENT, (TRAIN, EVALUATE, FULL_BATCH), _HORIZONTAL_SERVER,
           "alphafed_flwr.strategies.secagg:SecAggPlusFedAvg", setup="alphafed_flwr.adapters.private:secagg_setup"),
    Family("hetero-nn", VERTICAL,
           ("alphafed_flwr.api.hetero_nn:HeteroNNHostScheduler", "alphafed_flwr.api.hetero_nn:HeteroNNCollaboratorScheduler"),
           "alphafed_flwr.adapters.vertical_client:collaborator_client_app", (HELLO, PSI, EXCHANGE),
           "alphafed_flwr.adapters.vertical_host:VerticalHost", "alphafed_flwr.strategies.split_learning:SplitLearning"),
    Family("secure-hetero-nn", VERTICAL,
           ("alphafed_flwr.api.secure_hetero_nn:SecureHeteroNNHostScheduler",
            "alphafed_flwr.api.secure_hetero_nn:SecureHeteroNNCollaboratorScheduler"),
           "alphafed_flwr.adapters.secure_client:add_secure_handler", (SECURE,),
           "alphafed_flwr.adapters.secure_host:SecureVerticalHost", "alphafed_flwr.strategies.secure_split:SecureSplitLearning"),
)
_BY_CLASS = {ref: family for family in FAMILIES for ref in family.api}


def load(ref: str) -> Any:
    """Import ``"module:attribute"``."""
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


def family_of(scheduler: object) -> Family:
    """The family of a scheduler (instance or class): that of its nearest registered base."""
    from alphafed_flwr.api.errors import ConfigError  # pylint: disable=import-outside-toplevel  # torch

    cls = scheduler if isinstance(scheduler, type) else type(scheduler)
    for base in cls.__mro__:
        family = _BY_CLASS.get(f"{base.__module__}:{base.__qualname__}")
        if family is not None:
            return family
    raise ConfigError(
        f"{cls.__name__} belongs to no scheduler family: subclass one of "
        f"{', '.join(sorted(ref.rpartition(':')[2] for ref in _BY_CLASS))}"
    )


def families(kind: Kind) -> tuple[Family, ...]:
    """The families of one kind, in registration order."""
    return tuple(f for f in FAMILIES if f.kind == kind)


def message_types(kind: Kind) -> tuple[str, ...]:
    """The message types a node of this kind serves (the union of its families')."""
    return tuple(dict.fromkeys(t for f in families(kind) for t in f.message_types))


def client_app(kind: Kind, source_fn: Callable[..., Any], settings_fn: Callable[..., Any], app: Any = None) -> Any:
    """A ClientApp serving every family of ``kind`` (each family's handlers registered once).

    Parameters
    ----------
    kind : {"horizontal", "vertical"}
        The node's kind: data owner of a horizontal task, or vertical collaborator.
    source_fn : Callable[[Context], SchedulerSource]
        Where the node's scheduler comes from.
    settings_fn : Callable[[Context], Any]
        The node's settings (``ClientSettings`` or ``CollaboratorSettings``).
    app : ClientApp | None
        Register on this ClientApp instead of a new one.
    """
    for ref in _unique(f.client for f in families(kind)):
        app = load(ref)(source_fn=source_fn, settings_fn=settings_fn, app=app)
    return app


def _unique(refs: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(refs))
