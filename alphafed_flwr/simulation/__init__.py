"""Ray-backed Flower simulations of AlphaFed schedulers (``python -m alphafed_flwr.simulation``)."""
