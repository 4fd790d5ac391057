"""The ``alphafed`` import alias, active only when the real AlphaFed SDK is not installed.

``alphafed_flwr_alias.pth`` imports this module at interpreter start. The finder goes at the
END of ``sys.meta_path``, so a real ``alphafed`` package on ``sys.path`` is always found
first and this alias never shadows it. Aliased names are the same module objects as ours
(``alphafed.fed_avg is alphafed_flwr.api.fed_avg``), so no module exists under two copies.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

#: SDK module -> our module. Several SDK names may share one of our modules.
ALIASES = {
    "alphafed": "alphafed_flwr.alias",
    "alphafed.fs": "alphafed_flwr.api.fs",
    "alphafed.loggers": "alphafed_flwr.api.loggers",
    "alphafed.mock": "alphafed_flwr.api.mock",
    "alphafed.scheduler": "alphafed_flwr.api.scheduler",
    "alphafed.fed_avg": "alphafed_flwr.api.fed_avg",
    "alphafed.fed_avg.fed_avg": "alphafed_flwr.api.fed_avg",
    "alphafed.fed_avg.dp_fed_avg": "alphafed_flwr.api.dp_fed_avg",
    "alphafed.fed_avg.secure_fed_avg": "alphafed_flwr.api.secure_fed_avg",
    "alphafed.fed_prox": "alphafed_flwr.api.fed_prox",
    "alphafed.fed_prox.scheduler": "alphafed_flwr.api.fed_prox",
    "alphafed.hetero_nn": "alphafed_flwr.api.hetero_nn",
    "alphafed.hetero_nn.hetero_nn": "alphafed_flwr.api.hetero_nn",
    "alphafed.hetero_nn.secure_hetero_nn": "alphafed_flwr.api.secure_hetero_nn",
}

#: SDK packages (their submodules resolve through this finder too).
PACKAGES = ("alphafed", "alphafed.fed_avg", "alphafed.fed_prox", "alphafed.hetero_nn")

_PLATFORM = (
    "is AlphaFed's platform messaging, which Flower's Message API replaces here",
    "write the task as a scheduler subclass (FedAvgScheduler, FedProxScheduler, "
    "HeteroNNHostScheduler, ...) instead; a new protocol is a Flower strategy "
    "(flwr.serverapp.strategy)",
)

#: SDK modules without a counterpart: ``(gap, what to use instead)``; submodules included.
NOT_PROVIDED = {
    "alphafed.contractor": _PLATFORM,
    "alphafed.fed_avg.contractor": _PLATFORM,
    "alphafed.fed_avg.dp_contractor": _PLATFORM,
    "alphafed.fed_avg.secure_contractor": _PLATFORM,
    "alphafed.hetero_nn.contractor": _PLATFORM,
    "alphafed.hetero_nn.secure_contractor": _PLATFORM,
    "alphafed.data_channel": (
        "is AlphaFed's data transport, which Flower's Message API replaces here",
        "return tensors from state_dict() or the feature generators instead; alphafed-flwr "
        "sends them as Flower ArrayRecords",
    ),
    "alphafed.hetero_nn.psi": (
        "is AlphaFed's RSA-based PSI; alphafed-flwr runs its own private set intersection "
        "(alphafed_flwr.psi, X25519 blinding) at the start of every HeteroNN task",
        "implement load_local_ids() and split_dataset() on your HeteroNN scheduler instead",
    ),
    "alphafed.secure": (
        "holds AlphaFed's own cryptographic primitives",
        "use the cryptography package (X25519, AES-GCM) instead; for secure aggregation "
        "use alphafed.fed_avg.SecureFedAvgScheduler (Flower's SecAgg+)",
    ),
    "alphafed.auto_ml": (
        "is AlphaFed's AutoML model zoo, downloaded from its platform",
        "write a FedAvgScheduler subclass whose build_model() returns your model instead",
    ),
    "alphafed.dataset": (
        "(FedMNIST) splits MNIST among the AlphaFed platform's demo nodes",
        "use torchvision.datasets.MNIST(get_dataset_dir(), ...) instead; a simulation "
        "partitions it among its clients (--partition iid|dirichlet)",
    ),
    "alphafed.perf_bench": (
        "is AlphaFed's platform benchmark",
        "time your code with time.perf_counter instead; alphafed-flwr's benchmarks are the "
        "bench/ scripts of its repository",
    ),
    "alphafed.utils": (
        "holds AlphaFed's internal helpers",
        "use int.to_bytes/int.from_bytes instead of int_to_bytes/bytes_to_int; retry has no "
        "counterpart (the server retries failed rounds)",
    ),
    "alphafed.examples": (
        "is the SDK's sample code",
        "copy the example's files next to your task file and import them from there instead",
    ),
    "alphafed.docs": (
        "is the SDK's documentation code",
        "copy the files next to your task file and import them from there instead",
    ),
}


def not_provided(fullname: str) -> tuple[str, str]:
    """``(gap, instead)`` for an ``alphafed`` module that has no counterpart here."""
    for prefix, entry in NOT_PROVIDED.items():
        if fullname == prefix or fullname.startswith(prefix + "."):
            return entry
    supported = ", ".join(sorted(ALIASES))
    return (
        "is not part of alphamed-federated 0.4.9's task API",
        f"import from one of {supported} instead",
    )


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """The target module is already executed."""


class AlphafedAliasFinder(importlib.abc.MetaPathFinder):
    """Resolves ``alphafed`` and its supported submodules to alphafed-flwr's modules."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "alphafed" and not fullname.startswith("alphafed."):
            return None
        if fullname not in ALIASES:
            from alphafed_flwr.api.errors import NotProvidedError  # local: imports torch

            raise NotProvidedError(fullname, *not_provided(fullname))
        return importlib.machinery.ModuleSpec(
            fullname, _AliasLoader(ALIASES[fullname]), is_package=fullname in PACKAGES
        )


def install() -> None:
    """Append the finder to ``sys.meta_path`` once."""
    if not any(isinstance(f, AlphafedAliasFinder) for f in sys.meta_path):
        sys.meta_path.append(AlphafedAliasFinder())


install()
