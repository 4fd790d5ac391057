"""Placeholder for ``DPFedAvgScheduler`` (``alphafed.fed_avg.dp_fed_avg``), issue 11.

To implement it, define ``DPFedAvgScheduler`` in this module and delete the
``__getattr__`` below: ``alphafed.fed_avg`` re-exports it from here.
"""

from __future__ import annotations

from .errors import missing_names

__getattr__ = missing_names(
    __name__,
    {
        "DPFedAvgScheduler": (
            "is not available yet: differentially private FedAvg is issue 11 (DP/SecAgg) "
            "of alphafed-flwr",
            "until it lands, use FedAvgScheduler instead (no differential privacy)",
        )
    },
)
