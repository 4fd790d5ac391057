"""The one place that starts Flower's Ray simulation engine.

Flower 1.41 offers two ways to simulate: ``flwr run`` against a local SuperLink, and the
in-process ``flwr.simulation.run_simulation`` (deprecated in favour of ``flwr run``). Our
commands use the deprecated function, here only, because ``flwr run`` for simulation starts
a detached local SuperLink that outlives the command, needs the app packed as a bundle on
disk, and cannot take the scheduler object that ``launch_task()`` hands us in Python; the
in-process engine runs exactly Flower's own Ray backend (``RayBackend``, ``ClientAppActor``)
for the lifetime of our command. ``flwr run`` is supported too, on a task folder made by
``python -m alphafed_flwr new`` (see ``alphafed_flwr.app_folder``).

Ray: without an address, a private local Ray instance is started (``address="local"``, so
a ``RAY_ADDRESS`` in the environment is never picked up by accident); with one, the run
joins that existing cluster, and virtual clients are spread over its nodes by their
resources. ``"auto"`` is refused: other Ray clusters may run on the same machine.

Dispatch: Flower's engine looks for new messages every 0.1 s, which made each K=1
split-learning exchange wait 50 ms on average; :func:`dispatch_on_push` makes it hand a
message to the virtual clients as soon as the ServerApp pushes it (through
``alphafed_flwr.compat``). ``ALPHAFED_ENGINE_DISPATCH=flower`` keeps Flower's polling (for
side-by-side benchmarks).

Threads: where the ServerApp computes alongside its clients (a vertical host is a party),
``threads_per_party`` gives the ServerApp's process and every virtual client that many torch
threads, so that parties sharing a machine never ask for more threads than it has cores.
More threads than cores is the costliest mistake here: torch's OpenMP threads spin while
they wait for each other, and a thread whose core went to another process stalls the rest;
at a load average of about 8 on 2 cores a K=1 split-learning round took 19-31 s with the
defaults (2 threads in each process) and 5.5-5.8 s with one thread each.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from alphafed_flwr import compat
from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.api.log import logger

#: Ray's switch for hiding GPUs from actors that asked for none (``1``, Ray's default).
ACCEL_OVERRIDE_ENV = "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"
_RESERVED_WHEN_ATTACHING = ("num_cpus", "num_gpus", "resources", "object_store_memory")
#: ``flower`` keeps Flower's own 0.1 s dispatch poll (benchmarks compare both).
DISPATCH_ENV = "ALPHAFED_ENGINE_DISPATCH"
#: Seconds between the dispatcher's scans when nothing was pushed (Flower's poll).
DISPATCH_FALLBACK_SCAN = 0.1
OMP_THREADS_ENV = "OMP_NUM_THREADS"
#: Largest task argument or result a private Ray instance passes inline (Ray: 100 KiB).
INLINE_BYTES = 1 << 20


@dataclass(frozen=True)
class RayPlacement:
    """Where virtual clients run and what each one asks Ray for.

    Parameters
    ----------
    cpus_per_client : float
        Ray CPUs per virtual client (how many run at once per node, and their torch threads).
    gpus_per_client : float
        Ray GPUs per virtual client; fractions share a GPU (``0.25``: four clients per GPU).
        ``0``: the client sees no GPU at all.
    address : str | None
        Address of an existing Ray cluster to join (``host:port`` of its head node, as
        printed by ``ray start --head``); ``None`` starts a private local Ray instance.
    """

    cpus_per_client: float = 1.0
    gpus_per_client: float = 0.0
    address: str | None = None

    def __post_init__(self) -> None:
        if self.cpus_per_client <= 0:
            raise ConfigError(f"--cpus-per-client must be > 0, got {self.cpus_per_client}")
        if self.gpus_per_client < 0:
            raise ConfigError(f"--gpus-per-client must be >= 0, got {self.gpus_per_client}")
        if self.gpus_per_client > 1 and self.gpus_per_client != int(self.gpus_per_client):
            raise ConfigError(
                f"--gpus-per-client {self.gpus_per_client}: above 1 it must be a whole number of GPUs"
            )
        if self.address is not None and self.address.strip().lower() in ("", "auto", "local"):
            raise ConfigError(
                f"--ray-address '{self.address}': give the cluster head's address (host:6379); "
                "'auto' could join another Ray cluster running on this machine"
            )


def backend_config(
    placement: RayPlacement, ray_init_args: dict[str, object] | None = None
) -> dict[str, dict[str, object]]:
    """Flower's Ray ``backend_config`` for ``placement``.

    Joining a cluster passes only its address: Ray refuses ``num_cpus``/``num_gpus`` (the
    cluster's nodes declare their own resources), so such ``ray_init_args`` are an error.

    A private instance passes each message and node context of up to ``INLINE_BYTES`` to
    and from its actors inline, not through its object store (100 KiB by default): a
    split-learning exchange whose context holds a PSI state of 120 KB took 6.5 ms there
    instead of 2.4 ms, on every message.
    """
    init_args = dict(ray_init_args or {})
    if placement.address is None:
        init_args.setdefault("address", "local")
        init_args.setdefault("_system_config", {"max_direct_call_object_size": INLINE_BYTES})
    else:
        clash = sorted(set(init_args) & set(_RESERVED_WHEN_ATTACHING))
        if clash:
            raise ConfigError(
                f"Ray init args {clash} cannot be given when joining the cluster at "
                f"{placement.address}: its nodes declare their resources (ray start --num-cpus/--num-gpus)"
            )
        init_args["address"] = placement.address
    return {
        "client_resources": {
            "num_cpus": placement.cpus_per_client,
            "num_gpus": placement.gpus_per_client,
        },
        "init_args": init_args,
    }


class _DropDeprecationNotice(logging.Filter):
    """Hides Flower's notice that run_simulation is deprecated (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "run_simulation" not in message and "DEPRECATED FEATURE" not in message


def hide_gpus_from_cpu_clients() -> None:
    """Make Ray hide every GPU from actors that asked for none (``num_gpus=0``).

    Ray's default already does so; an inherited ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0``
    would let CPU-only clients see (and silently share) every GPU, so it is set to ``1``.
    Ray's accompanying FutureWarning (it suggests the opposite setting) is silenced.
    """
    os.environ[ACCEL_OVERRIDE_ENV] = "1"
    warnings.filterwarnings("ignore", message=r"Tip: In future versions of Ray", category=FutureWarning)


def dispatch_on_push() -> bool:
    """Make the engine dispatch each message when it is pushed, unless ``$ALPHAFED_ENGINE_DISPATCH`` is ``flower``.

    Returns whether it did. Same messages in the same order; see ``compat.set_simulation_poll``.
    """
    choice = os.environ.get(DISPATCH_ENV, "push").strip().lower()
    if choice not in ("push", "flower"):
        raise ConfigError(f"${DISPATCH_ENV}='{choice}': use 'push' (the default) or 'flower'")
    if choice == "flower":
        logger.info("Simulation engine: Flower's 0.1 s dispatch poll ($%s=flower)", DISPATCH_ENV)
        return False
    compat.set_simulation_poll(DISPATCH_FALLBACK_SCAN)
    return True


def party_threads(num_parties: int) -> int:
    """Torch threads per party when ``num_parties`` processes share this machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, num_parties))


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Give this process, and the local Ray workers it starts, ``threads`` torch threads.

    Ray keeps an ``OMP_NUM_THREADS`` its workers inherit (else it sets their CPUs); one the
    user set is left alone, for this process too. ``None`` changes nothing. Restored after.
    """
    if threads is None or OMP_THREADS_ENV in os.environ:
        yield
        return
    import torch  # pylint: disable=import-outside-toplevel

    before = torch.get_num_threads()
    os.environ[OMP_THREADS_ENV] = str(threads)
    torch.set_num_threads(threads)
    logger.info("Torch threads: %d in the ServerApp's process and in each virtual client", threads)
    try:
        yield
    finally:
        os.environ.pop(OMP_THREADS_ENV, None)
        torch.set_num_threads(before)


def run_ray_simulation(
    server_app: ServerApp,
    client_app: ClientApp,
    num_supernodes: int,
    cpus_per_client: float = 1.0,
    ray_init_args: dict[str, object] | None = None,
    *,
    gpus_per_client: float = 0.0,
    ray_address: str | None = None,
    threads_per_party: int | None = None,
) -> None:
    """Run ``server_app`` against ``num_supernodes`` virtual nodes on Ray; raise its errors.

    Virtual nodes are registered up front (a node id each) but a ClientApp only runs, and
    builds its scheduler, when a message reaches that node.

    Parameters
    ----------
    server_app, client_app : ServerApp, ClientApp
        The apps to run.
    num_supernodes : int
        Virtual nodes.
    cpus_per_client, gpus_per_client : float
        Ray resources of each virtual client (see ``RayPlacement``).
    ray_init_args : dict | None
        Extra ``ray.init`` arguments.
    ray_address : str | None
        Existing Ray cluster to join; ``None``: a private local one.
    threads_per_party : int | None
        Torch threads of the ServerApp's process and of each local virtual client (see
        :func:`party_threads`); ``None``: Ray's (a client's CPUs) and torch's (all cores).
        Clients on other nodes of a joined cluster keep their nodes' settings.
    """
    placement = RayPlacement(cpus_per_client, gpus_per_client, ray_address)
    config = backend_config(placement, ray_init_args)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network calls at start
    hide_gpus_from_cpu_clients()
    dispatch_on_push()
    from flwr.simulation import run_simulation  # pylint: disable=import-outside-toplevel

    flwr_logger = logging.getLogger("flwr")
    notice_filter = _DropDeprecationNotice()
    flwr_logger.addFilter(notice_filter)
    for handler in flwr_logger.handlers:
        handler.addFilter(notice_filter)
    try:
        with torch_threads(threads_per_party):
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=num_supernodes,
                backend_config=config,  # type: ignore[arg-type]
            )
    finally:
        flwr_logger.removeFilter(notice_filter)
        for handler in flwr_logger.handlers:
            handler.removeFilter(notice_filter)
