"""Placeholder for ``SecureHeteroNNHostScheduler`` and ``SecureHeteroNNCollaboratorScheduler``
(``alphafed.hetero_nn.secure_hetero_nn``), issue 14.

To implement them, define both classes in this module and delete the ``__getattr__``
below: ``alphafed.hetero_nn`` re-exports them from here.
"""

from __future__ import annotations

from .errors import missing_names

_GAP = (
    "is not available yet: HeteroNN with CKKS-encrypted projections is issue 14 of "
    "alphafed-flwr"
)

__getattr__ = missing_names(
    __name__,
    {
        "SecureHeteroNNHostScheduler": (
            _GAP,
            "until it lands, use HeteroNNHostScheduler (the host then sees plaintext features)",
        ),
        "SecureHeteroNNCollaboratorScheduler": (
            _GAP,
            "until it lands, use HeteroNNCollaboratorScheduler (the host then sees plaintext "
            "features)",
        ),
    },
)
