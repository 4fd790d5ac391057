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

ALIASES = {
    "alphafed": "alphafed_flwr.alias",
    "alphafed.fed_avg": "alphafed_flwr.api.fed_avg",
    "alphafed.scheduler": "alphafed_flwr.api.scheduler",
    "alphafed.hetero_nn": "alphafed_flwr.api.hetero_nn",
}


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
            supported = ", ".join(sorted(ALIASES))
            raise ImportError(
                f"alphafed-flwr provides {supported}; '{fullname}' is part of the AlphaFed "
                "SDK that has no Flower counterpart here",
                name=fullname,
            )
        return importlib.machinery.ModuleSpec(
            fullname, _AliasLoader(ALIASES[fullname]), is_package=fullname == "alphafed"
        )


def install() -> None:
    """Append the finder to ``sys.meta_path`` once."""
    if not any(isinstance(f, AlphafedAliasFinder) for f in sys.meta_path):
        sys.meta_path.append(AlphafedAliasFinder())


install()
