"""Flower 1.41's fixed waits that dominate a message's round trip on loopback, and their caps.

Measured on a 2-core machine (``bench/deployment_latency.py``): a SuperNode sleeps a
hard-coded 3 s after every empty pull and polls for its ClientApp's reply every 0.5 s
(``flwr.supernode.start_client_internal``); and every party that pulls a message's
objects (the SuperNode from the SuperLink, the ClientApp from the SuperNode, the
ServerApp's grid from the SuperLink) waits 1 s, then 2 s, 4 s... up to 10 s whenever an
object has not arrived yet, which is the usual case right after a message is announced
(``flwr.supercore.inflatable.inflatable_utils.pull_objects``). These helpers shorten
those waits through :mod:`alphafed_flwr.compat`, which checks the private parts of Flower
they patch.
"""

from __future__ import annotations

import os
from typing import Any

from alphafed_flwr import compat

SLEEP_CAP_ENV = "ALPHAFED_SUPERNODE_SLEEP_CAP"
QUICK_PULLS_ENV = "ALPHAFED_QUICK_PULLS"  # set to "1" for the ServerApp (the server command does)
PULL_INITIAL_BACKOFF = 0.01  # seconds; Flower's default is 1
PULL_BACKOFF_CAP = 0.25  # seconds; Flower's default is 10


def cap_supernode_sleeps(cap: float, wake: Any = None) -> None:
    """Cap the SuperNode's fixed sleeps (empty pull, reply polling) at ``cap`` seconds; with
    ``wake`` (a :class:`~alphafed_flwr.deploy.longpoll.Pulse`), reply polling also ends when
    it fires."""
    compat.cap_supernode_sleeps(cap, wake)


def quick_object_pulls() -> None:
    """Retry a not-yet-available object after 10 ms, backing off to 0.25 s (not 1 s to 10 s).

    The number of tries is left unbounded; the overall limit per pull (Flower's 2 hours,
    or what :func:`bound_object_pulls` set) stays.
    """
    compat.set_pull_defaults(initial_backoff=PULL_INITIAL_BACKOFF, backoff_cap=PULL_BACKOFF_CAP, max_tries_per_object=None)


def bound_object_pulls(max_time: float) -> None:
    """Give up on a message whose objects have not all arrived within ``max_time`` seconds.

    A sender killed while uploading its reply leaves objects that never arrive; Flower's
    default wait for them is 2 hours. Flower then returns an error reply instead.
    """
    compat.set_pull_defaults(max_time=max_time)


def server_object_pulls(max_time: float) -> None:
    """The ServerApp's pulls: bounded by ``max_time``, quick if ``$ALPHAFED_QUICK_PULLS`` is ``1``."""
    bound_object_pulls(max_time)
    if os.environ.get(QUICK_PULLS_ENV) == "1":
        quick_object_pulls()
