"""``python -m alphafed_flwr.server``: run a task's server side on Flower's deployment engine.

It starts a SuperLink (Flower's own, guarded: see ``deploy.superlink``) bound to
``--address``, registers the authorized SuperNode keys, packs the task into a Flower app
bundle, submits the run through the Control API, streams its log, and exits with the run's
status. Everything the run writes goes to the absolute ``--out`` folder, including the
SuperLink's database (node registrations and run state survive a restart) and the
checkpoint a restarted server resumes from.

Horizontal (FedAvg/FedSGD)::

    python -m alphafed_flwr.server task.py[:name] --address 0.0.0.0:9092 --rounds 3 \\
        --out /abs/run --ca-cert ca.pem --server-cert server.pem --server-key server.key \\
        --node-public-key node-1.pub --node-public-key node-2.pub

Vertical (the host runs in the ServerApp)::

    python -m alphafed_flwr.server --host host.py[:name] --collaborators 1 --address ... --out ...
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alphafed_flwr.api.errors import ConfigError, TaskFailed
from alphafed_flwr.api.log import logger
from alphafed_flwr.cli import exit_with
from alphafed_flwr.deploy.bundle import build_fab
from alphafed_flwr.deploy.control import Control
from alphafed_flwr.compat import check_flower
from alphafed_flwr.deploy.latency import QUICK_PULLS_ENV
from alphafed_flwr.deploy.processes import (
    Managed,
    claim_folder,
    flower_env,
    free_port,
    python_module,
    require_flower_scripts,
)
from alphafed_flwr.deploy.task_check import check_task
from alphafed_flwr.loader import TaskRef
from alphafed_flwr.settings import RUN, VERTICAL_SERVER, RunSettings, add_flags


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="python -m alphafed_flwr.server",
        description="Run a task's server side on Flower's deployment engine (SuperLink).",
    )
    p.add_argument("task", nargs="?", help="FedAvg/FedSGD task file: path/to/task.py[:name]")
    p.add_argument("--host", help="vertical: the host's task file, path.py[:name]")
    p.add_argument("--address", default="127.0.0.1:9092",
                   help="host:port the SuperLink binds (one HTTP(S) port for nodes and control)")
    p.add_argument("--out", required=True, help="output folder (made absolute)")
    p.add_argument("--insecure", action="store_true", help="plain HTTP, no TLS (warns)")
    p.add_argument("--ca-cert", help="CA certificate (PEM) the nodes trust")
    p.add_argument("--server-cert", help="the SuperLink's certificate (PEM)")
    p.add_argument("--server-key", help="the SuperLink's private key (PEM)")
    p.add_argument("--node-public-key", action="append", default=[],
                   help="authorized SuperNode public key (OpenSSH EC); repeat per node; enables node "
                        "authentication (needs TLS)")
    add_flags(p, (RUN, VERTICAL_SERVER))
    p.add_argument("--poll-interval", type=float, default=0.5,
                   help="SuperExec polling interval in seconds (FLWR_SUPEREXEC_TASK_POLL_INTERVAL): how soon a "
                        "run's ServerApp starts; each poll is a SuperLink database query, so a short one costs CPU "
                        "all run long (0.05 s: about a tenth of a core). Below 1 the ServerApp also retries "
                        "not-yet-available message objects quickly (default 0.5)")
    p.add_argument("--start-timeout", type=float, default=60.0,
                   help="seconds the SuperLink may take to start")
    return p


def tls_settings(args: argparse.Namespace) -> tuple[list[str], Path | None]:
    """SuperLink TLS flags and the CA path (``None`` when insecure)."""
    given = [args.ca_cert, args.server_cert, args.server_key]
    if args.insecure:
        if any(given) or args.node_public_key:
            raise ConfigError("--insecure cannot be combined with certificates or --node-public-key")
        logger.warning(
            "--insecure: traffic is plain HTTP and any SuperNode may join; use it only on a "
            "trusted network (see the README's security section)"
        )
        return ["--insecure"], None
    if not all(given):
        raise ConfigError(
            "TLS needs --ca-cert, --server-cert and --server-key (make a development set with "
            "python -m alphafed_flwr.certs), or pass --insecure explicitly"
        )
    paths = [Path(p).resolve() for p in given]
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"certificate file '{path}' does not exist")
    flags = ["--ssl-ca-certfile", str(paths[0]), "--ssl-certfile", str(paths[1]), "--ssl-keyfile", str(paths[2])]
    if args.node_public_key:
        flags.append("--enable-supernode-auth")
    return flags, paths[0]


def run_settings(args: argparse.Namespace, out: Path, task_id: str, kind: str) -> RunSettings:
    """The run's settings (written into the bundle as its run config; absolute folders)."""
    return RunSettings.from_args(args, kind=kind, out=out, task_id=task_id).resolved()


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` -> parts (``[::1]:9092`` works too)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--address must be host:port, got '{address}'")
    return host.strip("[]") or "0.0.0.0", int(port)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    if bool(args.host) == bool(args.task):
        raise ConfigError("give either a task file (FedAvg/FedSGD) or --host host.py (vertical)")
    ref = TaskRef.parse(args.host or args.task)
    checked = check_task({"check": "host" if args.host else "task", "ref": str(ref)})  # fail fast
    kind = checked["family"]
    task_id = args.task_id or checked["task_id"]
    out = Path(args.out).resolve()
    lock = claim_folder(out, "server")  # noqa: F841 - held while the server runs
    tls_flags, _ = tls_settings(args)
    host, port = split_address(args.address)
    require_flower_scripts()
    logger.info(check_flower("superlink", "supernode"))
    fab, entry = build_fab(ref, run_settings(args, out, task_id, kind).to_run_config())
    token = secrets.token_urlsafe(32)
    env = flower_env(out / ".flwr-server", args.poll_interval)
    if args.poll_interval < 1.0:
        env[QUICK_PULLS_ENV] = "1"
    runtime_port = free_port()
    command = python_module(
        "alphafed_flwr.deploy.superlink", "--runtime-port", str(runtime_port), "--host", host, "--port", str(port),
        "--database", ":flwr-in-memory:", "--disable-runtime-dependency-installation",
        *tls_flags,
    )
    logger.info("Starting the SuperLink on %s:%d (log: %s)", host, port, out / "superlink.log")
    # the control token goes over a pipe: it is in no environment or command line
    superlink = Managed("superlink", command, env, out, log=out / "superlink.log", stdin_data=f"{token}\n".encode())
    control = Control(f"127.0.0.1:{runtime_port}", token, None, insecure=True)
    run_id: int | None = None
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        control.wait_ready(args.start_timeout, superlink.alive, superlink.log_tail)
        for line in control.register_nodes([Path(p) for p in args.node_public_key]):
            logger.info("Authorized SuperNode key %s", line)
        stale = control.stop_unfinished_runs()
        if stale:
            logger.info("Stopped runs %s left by an earlier server", stale)
        run_id = control.start_run(fab)
        logger.info("Run %d submitted (task %s, %s); streaming its log", run_id, entry, kind)
        start = time.monotonic()
        control.stream_logs(run_id, lambda text: sys.stdout.write(text) or sys.stdout.flush(),
                            superlink.alive, superlink.log_tail)
        status, sub_status, details = control.status(run_id)
        return report(out, run_id, sub_status, details, time.monotonic() - start)
    except KeyboardInterrupt:
        logger.error("Interrupted: stopping the run and the SuperLink")
        if run_id is not None:
            try:
                control.stop_run(run_id)
            except Exception:  # noqa: BLE001 - best effort while shutting down
                pass
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        control.close()
        superlink.stop()


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def report(out: Path, run_id: int, sub_status: str, details: str, seconds: float) -> int:
    """Print the outcome; 0 if the run and the task completed, else 1."""
    summary_path = out / "summary.json"
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    ok = sub_status == "completed" and summary.get("status") == "completed"
    if ok:
        logger.info(
            "Run %d completed in %.1fs: %d rounds, final test %s; outputs in %s",
            run_id, seconds, summary.get("rounds_completed", 0), summary.get("final_test", {}), out,
        )
        return 0
    reason = summary.get("error") or details or f"run status {sub_status or 'unknown'}"
    logger.error("Run %d failed: %s (outputs in %s)", run_id, reason, out)
    if summary.get("status") is None:
        raise TaskFailed(f"the ServerApp wrote no summary; see {out / 'superlink.log'}")
    return 1


if __name__ == "__main__":
    exit_with(main)
