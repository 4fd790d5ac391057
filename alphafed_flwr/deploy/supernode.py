"""``python -m alphafed_flwr.deploy.supernode``: Flower's own ``flower-supernode``, faster.

Flower 1.41's SuperNode sleeps a hard-coded 3 s after every empty pull and polls for the
ClientApp's reply every 0.5 s (``flwr.supernode.start_client_internal``); on this machine
that is most of a message's round trip. With ``$ALPHAFED_SUPERNODE_SLEEP_CAP`` set, those
sleeps are capped at that many seconds; everything else is Flower's SuperNode unchanged.
This patches a private module of Flower 1.41; the ``<1.42`` pin keeps it valid.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import types

SLEEP_CAP_ENV = "ALPHAFED_SUPERNODE_SLEEP_CAP"


def capped_time(cap: float) -> types.ModuleType:
    """A stand-in for the ``time`` module whose ``sleep`` never exceeds ``cap`` seconds."""
    shim = types.ModuleType("time")
    shim.__dict__.update({k: getattr(time, k) for k in dir(time) if not k.startswith("__")})
    shim.sleep = lambda seconds: time.sleep(min(seconds, cap))  # type: ignore[attr-defined]
    return shim


def main() -> None:
    """Run ``flower-supernode``, its fixed sleeps capped if asked."""
    from alphafed_flwr.deploy.processes import exit_with_parent  # pylint: disable=C0415

    exit_with_parent()
    cap = os.environ.get(SLEEP_CAP_ENV)
    if cap:
        internal = importlib.import_module("flwr.supernode.start_client_internal")
        internal.time = capped_time(float(cap))  # type: ignore[attr-defined]
    sys.argv[0] = "flower-supernode"
    importlib.import_module("flwr.supernode.cli.flower_supernode").flower_supernode()


if __name__ == "__main__":
    main()
