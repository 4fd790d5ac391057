"""Adapters: translate schedulers to and from Flower messages (ClientApps, ServerApp logic)."""
