"""``python -m alphafed_flwr.deploy.supernode``: Flower's own ``flower-supernode``, faster.

With ``$ALPHAFED_SUPERNODE_SLEEP_CAP`` set, the SuperNode's fixed sleeps are capped at that
many seconds, its object pulls retry quickly (``alphafed_flwr.deploy.latency``), its runtime
API holds the executor's empty task and object pulls until there is something to answer,
and its wait for the executor's reply ends when the reply arrives
(``alphafed_flwr.deploy.longpoll``); everything else is Flower's SuperNode unchanged.
"""

from __future__ import annotations

import importlib
import os
import sys

from alphafed_flwr.compat import check_flower, supernode_long_polls
from alphafed_flwr.deploy.latency import SLEEP_CAP_ENV, cap_supernode_sleeps, quick_object_pulls
from alphafed_flwr.deploy.longpoll import HOLD


def main() -> None:
    """Run ``flower-supernode``, its fixed waits shortened if asked."""
    from alphafed_flwr.deploy.processes import exit_with_parent  # pylint: disable=C0415

    exit_with_parent()
    check_flower("supernode")  # Flower changed: fail here, loudly, not later
    cap = os.environ.get(SLEEP_CAP_ENV)
    if cap:
        cap_supernode_sleeps(float(cap), wake=supernode_long_polls(HOLD))
        quick_object_pulls()
    sys.argv[0] = "flower-supernode"
    importlib.import_module("flwr.supernode.cli.flower_supernode").flower_supernode()


if __name__ == "__main__":
    main()
