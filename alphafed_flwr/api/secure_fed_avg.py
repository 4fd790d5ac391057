"""Placeholder for ``SecureFedAvgScheduler`` (``alphafed.fed_avg.secure_fed_avg``), issue 11.

To implement it, define ``SecureFedAvgScheduler`` in this module and delete the
``__getattr__`` below: ``alphafed.fed_avg`` re-exports it from here.
"""

from __future__ import annotations

from .errors import missing_names

__getattr__ = missing_names(
    __name__,
    {
        "SecureFedAvgScheduler": (
            "is not available yet: secure aggregation is issue 11 (DP/SecAgg) of "
            "alphafed-flwr",
            "until it lands, use FedAvgScheduler instead (the server then sees each update)",
        )
    },
)
