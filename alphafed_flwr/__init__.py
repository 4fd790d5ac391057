"""alphafed-flwr: run AlphaFed-style federated-learning schedulers on Flower.

Layers (each only imports the ones above it):

- ``alphafed_flwr.api``: the scheduler API users write against (pure torch, no Flower).
- ``alphafed_flwr.strategies``: Flower Message-API strategies (Flower records only).
- ``alphafed_flwr.adapters``: translate schedulers to and from Flower messages.
- ``alphafed_flwr.simulation`` / ``.server`` / ``.client``: command-line entry points.

This module stays import-light: the ``alphafed`` alias imports it at interpreter start.
"""

__version__ = "0.1.0"
