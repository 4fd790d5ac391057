"""``python -m alphafed_flwr.deploy.superlink``: Flower's SuperLink on two listeners.

It parses ``flower-superlink``'s flags with Flower's own parser, builds Flower's own
SuperLink app (Fleet, Control and runtime APIs; :mod:`alphafed_flwr.compat`) and serves it
on two uvicorn listeners in one process:

- **public** (``--host``/``--port``, TLS): the Fleet API only (``/v1/fleet/*``, what
  SuperNodes use) and ``/health``; every other path is refused (403). Proxy headers are
  off: ``X-Forwarded-For`` is never trusted, whatever ``FORWARDED_ALLOW_IPS`` says.
- **loopback** (``127.0.0.1:--runtime-port``, plain HTTP): the runtime API
  (``/v1/runtime/*``, the SuperExec and its ServerApp processes) and the Control API
  (``/v1/control/*``, start runs, register nodes), which also needs the header
  ``x-alphafed-control-token``. A reverse proxy in front of the public port cannot reach it.

Both listeners hold a pull whose answer is empty (a SuperNode's message or object pull, the
ServerApp's reply or object pull, the SuperExec's task pull) until a push may have changed
it, for at most ``deploy.longpoll.HOLD`` seconds, so that no party has to poll quickly.
The SuperLink's state (nodes, runs, messages and their objects) is kept in memory, not in
``--database`` (``compat.keep_superlink_state_in_memory``), and a request passes only the
middlewares that act on its route: a Fleet or runtime request skips the Control API's four
(``compat.skip_idle_superlink_middlewares``).

The control token is read from standard input (one line): it is in no environment,
command line or file, so the SuperExec and the ServerApp processes it starts (task code)
are never given it. The SuperLink runs in Flower's ``process`` isolation and this process
starts the SuperExec itself (with this interpreter, against the loopback listener); if the
SuperExec stops, the SuperLink stops too.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import os
import subprocess
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

from alphafed_flwr import compat
from alphafed_flwr.deploy.longpoll import HOLD

TOKEN_HEADER = "x-alphafed-control-token"
MIN_TOKEN_LENGTH = 16
PUBLIC_PREFIXES = ("/v1/fleet/",)
RUNTIME_PREFIX = "/v1/runtime/"
CONTROL_PREFIX = "/v1/control/"
HEALTH = "/health"

Scope = MutableMapping[str, Any]
Refusal = Callable[[Scope], "str | None"]


def public_refusal(scope: Scope) -> str | None:
    """Why the public listener refuses a request (``None``: it serves it)."""
    path = str(scope.get("path", ""))
    if path == HEALTH or path.startswith(PUBLIC_PREFIXES):
        return None
    return "this port serves only the Fleet API (SuperNodes)"


def loopback_refusal(token: str) -> Refusal:
    """The loopback listener's rule: runtime API, and Control API with the control token."""

    def refusal(scope: Scope) -> str | None:
        path = str(scope.get("path", ""))
        if path == HEALTH or path.startswith(RUNTIME_PREFIX):
            return None
        if path.startswith(CONTROL_PREFIX):
            given = dict(scope.get("headers") or []).get(TOKEN_HEADER.encode(), b"")
            if hmac.compare_digest(given, token.encode()):
                return None
            return "the Control API of this SuperLink needs its control token"
        return "not served on this port"

    return refusal


class Guard:
    """ASGI wrapper: answers 403 to what ``refusal`` names, passes the rest to ``app``."""

    def __init__(self, app: Any, refusal: Refusal) -> None:
        self.app, self.refusal = app, refusal

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            reason = self.refusal(scope)
            if reason is not None:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                from starlette.responses import JSONResponse  # pylint: disable=C0415

                await JSONResponse({"detail": reason}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def listener_configs(app: Any, config: Any, runtime_port: int, token: str) -> list[Any]:
    """uvicorn configurations of the public and the loopback listener (in that order)."""
    import uvicorn  # pylint: disable=import-outside-toplevel

    log_config = compat.uvicorn_log_config()
    common = {"proxy_headers": False, "forwarded_allow_ips": "", "workers": 1, "access_log": True}
    public = uvicorn.Config(
        Guard(app, public_refusal), host=config.host, port=config.port, lifespan="on",
        ssl_keyfile=config.ssl_keyfile, ssl_certfile=config.ssl_certfile, log_config=log_config, **common,
    )
    loopback = uvicorn.Config(
        Guard(app, loopback_refusal(token)), host="127.0.0.1", port=runtime_port, lifespan="off",
        log_config=log_config, **common,
    )
    return [public, loopback]


async def serve(configs: list[Any], superexec: subprocess.Popen[bytes] | None) -> None:
    """Start the listeners one after the other, then run them until one stops, a signal
    arrives, or the SuperExec exits."""
    import uvicorn  # pylint: disable=import-outside-toplevel

    servers = [uvicorn.Server(c) for c in configs]
    tasks: list[asyncio.Task[None]] = []
    for server in servers:  # in order: the Control API answers only once the public port is bound
        tasks.append(asyncio.create_task(_serve(server)))
        while not server.started and not tasks[-1].done():
            await asyncio.sleep(0.05)
        if tasks[-1].done():
            break
    while not any(t.done() for t in tasks):
        if superexec is not None and superexec.poll() is not None:
            print(f"The SuperExec exited (code {superexec.returncode}); stopping the SuperLink", file=sys.stderr)
            break
        await asyncio.wait(tasks, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
    for server in servers:
        server.should_exit = True
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, Exception):
            raise SystemExit(f"SuperLink: {result}")


async def _serve(server: Any) -> None:
    try:
        await server.serve()
    except SystemExit as exc:  # uvicorn exits when it cannot bind; it has logged why
        raise RuntimeError(f"a listener could not start (exit {exc.code})") from None


def read_token() -> str:
    """The control token from standard input (then closed for good)."""
    token = sys.stdin.readline().strip()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    if len(token) < MIN_TOKEN_LENGTH:
        raise SystemExit(f"give a control token of at least {MIN_TOKEN_LENGTH} characters on standard input")
    return token


def main() -> None:
    """``python -m alphafed_flwr.deploy.superlink --runtime-port P [flower-superlink flags]``."""
    from alphafed_flwr.deploy.processes import exit_with_parent, flower_command  # pylint: disable=C0415

    parser = argparse.ArgumentParser(prog="python -m alphafed_flwr.deploy.superlink", add_help=False)
    parser.add_argument("--runtime-port", type=int, required=True, help="loopback port of the runtime/Control API")
    ours, flower_args = parser.parse_known_args()
    if "--isolation" in flower_args:
        raise SystemExit("--isolation is set by alphafed_flwr.deploy.superlink (process)")
    token = read_token()
    exit_with_parent()
    print(compat.check_flower("superlink"), file=sys.stderr, flush=True)
    sys.argv = ["flower-superlink", *flower_args, "--isolation", "process"]
    config = compat.superlink_lifespan_config()
    compat.keep_superlink_state_in_memory()
    compat.skip_idle_superlink_middlewares()
    app = compat.superlink_long_polls(compat.superlink_app(config), HOLD)
    configs = listener_configs(app, config, ours.runtime_port, token)
    print(f"SuperLink: Fleet API on {config.host}:{config.port} ({'TLS' if config.ssl_certfile else 'plain HTTP'}); "
          f"runtime and Control APIs on 127.0.0.1:{ours.runtime_port}", file=sys.stderr, flush=True)
    superexec = subprocess.Popen(  # noqa: S603 - Flower's own command, this interpreter
        flower_command("flower-superexec", "--insecure", "--runtime-api-address",
                       f"127.0.0.1:{ours.runtime_port}", "--parent-pid", str(os.getpid())),
        stdin=subprocess.DEVNULL,
    )
    try:
        asyncio.run(serve(configs, superexec))
    finally:
        superexec.terminate()
        try:
            superexec.wait(5)
        except subprocess.TimeoutExpired:
            superexec.kill()
    if superexec.returncode not in (0, -15, None):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
