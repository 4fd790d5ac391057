"""``python -m alphafed_flwr.deploy.superlink``: Flower's own ``flower-superlink``, guarded.

It runs Flower 1.41's SuperLink entry point unchanged (same flags; Fleet, Control and
runtime APIs over HTTP(S) on one port) and adds one middleware to its FastAPI app:

- ``/v1/control/*`` (start runs, register nodes, ...) needs the header
  ``x-alphafed-control-token`` with the token in ``$ALPHAFED_CONTROL_TOKEN``; without OIDC,
  Flower's Control API has no authentication, so anyone who reaches the port could
  otherwise submit an app bundle that every SuperNode then executes;
- ``/v1/runtime/*`` (how the SuperLink's own SuperExec and ServerApp processes talk to it)
  is served to loopback clients only.

The Fleet API (``/v1/fleet/*``, the SuperNodes) is untouched. This wraps a private piece of
Flower 1.41 (``flwr.superlink.main.create_app``); the ``<1.42`` pin keeps it valid.
"""

from __future__ import annotations

import hmac
import importlib
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

TOKEN_ENV = "ALPHAFED_CONTROL_TOKEN"
TOKEN_HEADER = "x-alphafed-control-token"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def guard_app(app: Any, token: str) -> Any:
    """Add the Control-token / loopback-runtime middleware to a SuperLink FastAPI app."""
    from starlette.middleware.base import BaseHTTPMiddleware  # pylint: disable=C0415
    from starlette.requests import Request  # pylint: disable=C0415
    from starlette.responses import JSONResponse, Response  # pylint: disable=C0415

    class Guard(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            path = request.url.path
            if path.startswith("/v1/control/"):
                given = request.headers.get(TOKEN_HEADER, "")
                if not hmac.compare_digest(given.encode(), token.encode()):
                    return JSONResponse(
                        {"detail": "the Control API of this SuperLink needs its control token"},
                        status_code=403,
                    )
            elif path.startswith("/v1/runtime/"):
                host = request.client.host if request.client else ""
                if host not in LOOPBACK:
                    return JSONResponse({"detail": "runtime API: loopback only"}, status_code=403)
            return await call_next(request)

    app.add_middleware(Guard)
    return app


def main() -> None:
    """Run ``flower-superlink`` with the guard installed."""
    from alphafed_flwr.deploy.processes import exit_with_parent  # pylint: disable=C0415

    token = os.environ.get(TOKEN_ENV, "")
    if len(token) < 16:
        raise SystemExit(f"{TOKEN_ENV} must hold a control token of at least 16 characters")
    exit_with_parent()
    flwr_main = importlib.import_module("flwr.superlink.main")
    create_app = flwr_main.create_app
    flwr_main.create_app = lambda *a, **k: guard_app(create_app(*a, **k), token)
    sys.argv[0] = "flower-superlink"
    importlib.import_module("flwr.superlink.cli.flower_superlink").flower_superlink()


if __name__ == "__main__":
    main()
