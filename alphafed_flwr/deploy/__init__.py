"""Running tasks on Flower's deployment engine (SuperLink, SuperNodes, app bundles)."""
