"""``python -m alphafed_flwr.client``: join a task as a SuperNode of Flower's deployment engine.

It optionally checks this node's data first (``--data-checker``: a failing check means the
node does not join, and says why), then runs Flower's own SuperNode with this node's
settings as node config: its data folder, output folder, partition, and for a vertical
task its collaborator script. While the server is not up yet, the node retries for at most
``--connect-timeout`` seconds; if a restarted server no longer knows the node, the node
starts again by itself. Authentication failures are final and reported.

::

    python -m alphafed_flwr.client --server 10.0.0.1:9092 --ca-cert ca.pem --node-key node-1 \\
        --data-dir /data --partition-id 0 --num-partitions 2
    python -m alphafed_flwr.client --server ... --collaborator collab.py[:name]     # vertical
"""

from __future__ import annotations

import argparse
import re
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from alphafed_flwr.api.errors import ConfigError, TaskFailed
from alphafed_flwr.api.log import logger
from alphafed_flwr.cli import exit_with
from alphafed_flwr.compat import auth_failure_pattern, check_flower
from alphafed_flwr.deploy.processes import (
    Managed,
    claim_folder,
    flower_env,
    free_port,
    python_module,
    require_flower_scripts,
)
from alphafed_flwr.deploy.executor import READY as EXECUTOR_READY
from alphafed_flwr.deploy.latency import SLEEP_CAP_ENV
from alphafed_flwr.deploy.task_check import check_task

EXIT_DATA_CHECK = 3
AUTH_GRACE = 20.0  # a server may still be registering keys when a node first connects
_CONNECTED = re.compile(r"Connection successful|Starting Flower SuperNode|Received", re.IGNORECASE)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="python -m alphafed_flwr.client",
        description="Join a task as a SuperNode of Flower's deployment engine.",
    )
    p.add_argument("--server", required=True, help="the server's address, host:port")
    p.add_argument("--insecure", action="store_true", help="plain HTTP, no TLS (warns)")
    p.add_argument("--ca-cert", help="CA certificate (PEM) that signed the server's certificate")
    p.add_argument("--node-key", help="this node's private key (OpenSSH EC), registered on the server")
    p.add_argument("--data-dir", help="this node's data folder (get_dataset_dir)")
    p.add_argument("--out", help="this node's output folder (default: alphafed-client/<node>, named after "
                                 "--node-key, --partition-id or --collaborator; two nodes never share one)")
    p.add_argument("--partition-id", type=int, help="train on this partition of the local data")
    p.add_argument("--num-partitions", type=int, help="number of partitions (with --partition-id)")
    p.add_argument("--collaborator", help="vertical: this node's collaborator script, path.py[:name]")
    p.add_argument("--data-checker", help="DataChecker to pass before joining, path.py[:name]")
    p.add_argument("--task-id", default="local-task", help="task id given to the DataChecker")
    p.add_argument("--connect-timeout", type=float, default=300.0,
                   help="seconds to keep trying to reach the server (default 300)")
    p.add_argument("--no-warm-executor", action="store_true",
                   help="let Flower's SuperExec start a fresh ClientApp process for every message "
                        "(slower: Python, torch and the task are loaded for every message)")
    p.add_argument("--poll-interval", type=float, default=0.05,
                   help="seconds between the SuperNode's polls: caps its fixed 3 s/0.5 s sleeps and sets "
                        "its SuperExec's poll interval (default 0.05; 0 keeps Flower's defaults)")
    return p


def check_data(args: argparse.Namespace) -> tuple[bool, str]:
    """Run the ``--data-checker`` (in a child process, see ``deploy.task_check``)."""
    result = check_task(
        {"check": "data-checker", "ref": args.data_checker, "task_id": args.task_id, "data_dir": args.data_dir}
    )
    return result["passed"], result["message"]


def node_config(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """This node's settings, as Flower node config."""
    if (args.partition_id is None) != (args.num_partitions is None):
        raise ConfigError("--partition-id and --num-partitions go together")
    if args.partition_id is not None and not 0 <= args.partition_id < args.num_partitions:
        raise ConfigError(f"--partition-id must be in 0..{args.num_partitions - 1}")
    config: dict[str, Any] = {"out-dir": str(out)}
    if args.data_dir:
        config["data-dir"] = str(Path(args.data_dir).resolve())
    if args.partition_id is not None:
        config["partition-id"] = args.partition_id
        config["num-partitions"] = args.num_partitions
    if args.collaborator:
        path, sep, name = args.collaborator.rpartition(":")
        script = args.collaborator if not (sep and name.isidentifier()) else path
        resolved = str(Path(script).resolve()) + (f":{name}" if sep and name.isidentifier() else "")
        check_task({"check": "collaborator", "ref": resolved})  # fail fast, here
        config["collaborator"] = resolved
    return config


def default_out(args: argparse.Namespace) -> Path:
    """A folder of this node's own: ``alphafed-client/<node>``.

    The node is named after its key, else its partition, else its collaborator script;
    a node with none of them gets ``node``, and a second such node on the machine is
    refused by the folder lock (:func:`~alphafed_flwr.deploy.processes.claim_folder`).
    """
    if args.node_key:
        name = Path(args.node_key).stem
    elif args.partition_id is not None:
        name = f"partition-{args.partition_id}-of-{args.num_partitions}"
    elif args.collaborator:
        name = "collaborator-" + Path(args.collaborator.split(":")[0]).stem
    else:
        name = "node"
    return Path("alphafed-client") / name


def supernode_flags(args: argparse.Namespace) -> list[str]:
    """TLS and authentication flags of the SuperNode."""
    if args.insecure:
        if args.ca_cert or args.node_key:
            raise ConfigError("--insecure cannot be combined with --ca-cert or --node-key")
        logger.warning("--insecure: plain HTTP to the server; use it only on a trusted network")
        return ["--insecure"]
    if not args.ca_cert:
        raise ConfigError("TLS needs --ca-cert (the CA that signed the server's certificate), or pass --insecure")
    ca = Path(args.ca_cert).resolve()
    if not ca.is_file():
        raise ConfigError(f"CA certificate '{ca}' does not exist")
    flags = ["--root-certificates", str(ca)]
    if args.node_key:
        key = Path(args.node_key).resolve()
        if not key.is_file():
            raise ConfigError(f"node key '{key}' does not exist")
        flags += ["--auth-supernode-private-key", str(key)]
    return flags


def print_line(line: str) -> None:
    """Print a line of a child process's output, with the time (milliseconds)."""
    now = time.time()
    print(f"{time.strftime('%H:%M:%S', time.localtime(now))}.{int(now * 1000) % 1000:03d} {line}", flush=True)


class ExecutorKeeper(threading.Thread):
    """Keeps the node's warm executor (``alphafed_flwr.deploy.executor``) running.

    With the SuperNode in ``process`` isolation nothing else would run the node's messages,
    so an executor that dies (killed for memory, say) is started again at once. One that
    cannot start (it dies ``START_FAILURES`` times in a row before saying it is ready; its
    output, with the cause, is on the terminal) is given up: ``failed`` says so and
    ``on_failure`` is called.
    """

    CHECK_EVERY = 0.5  # seconds
    START_FAILURES = 3

    def __init__(
        self, command: list[str], env: dict[str, str], out: Path, on_failure: Callable[[], Any]
    ) -> None:
        super().__init__(daemon=True, name="executor-keeper")
        self.command, self.env, self.out, self.on_failure = command, env, out, on_failure
        self.failed: str | None = None
        self._start_failures = 0
        self._ready = False
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.executor = self._start()

    def _start(self) -> Managed:
        self._ready = False
        return Managed("executor", self.command, self.env, self.out, on_line=self._line)

    def _line(self, line: str) -> None:
        print_line(line)
        if EXECUTOR_READY in line:
            self._ready = True

    def run(self) -> None:
        while not self._stopping.wait(self.CHECK_EVERY):
            with self._lock:
                code = self.executor.process.poll()
                if code is None or self._stopping.is_set():
                    continue
                self._start_failures = 0 if self._ready else self._start_failures + 1
                if self._start_failures >= self.START_FAILURES:
                    self.failed = (
                        f"the warm executor failed {self._start_failures} times while starting "
                        f"(exit {code}; its output above says why)"
                    )
                    self.on_failure()
                    return
                logger.warning("The warm executor stopped (exit %s); starting it again", code)
                self.executor = self._start()

    def stop(self) -> None:
        """Stop the executor and do not restart it."""
        self._stopping.set()
        with self._lock:
            self.executor.stop()


class SuperNodeRunner:
    """Keeps one SuperNode running; restarts it when the server forgets it."""

    def __init__(self, command: list[str], env: dict[str, str], out: Path, connect_timeout: float) -> None:
        self.command, self.env, self.out = command, env, out
        self.connect_timeout = connect_timeout
        self.auth_failed = threading.Event()
        self.auth_failure = auth_failure_pattern()
        self.connected = threading.Event()
        self.node: Managed | None = None
        self.stopping = False

    def _line(self, line: str) -> None:
        print_line(line)
        if self.auth_failure.search(line):
            self.auth_failed.set()
        if _CONNECTED.search(line):
            self.connected.set()

    def run(self) -> int:
        """Run until interrupted; returns the exit code."""
        last_contact = time.monotonic()
        first_refusal: float | None = None
        while not self.stopping:
            self.connected.clear()
            self.auth_failed.clear()
            self.node = Managed("supernode", self.command, self.env, self.out, on_line=self._line)
            code = self.node.wait()
            if self.stopping:
                break
            if self.auth_failed.is_set():
                first_refusal = first_refusal or time.monotonic()
                if time.monotonic() - first_refusal > AUTH_GRACE:
                    raise TaskFailed(
                        "the server refused this node's key: register it on the server with "
                        "--node-public-key (or start the node with the right --node-key)"
                    )
                logger.warning("The server does not know this node's key yet; retrying")
                time.sleep(2.0)
                continue
            if self.connected.is_set():
                last_contact = time.monotonic()
            elif time.monotonic() - last_contact > self.connect_timeout:
                raise TaskFailed(
                    f"could not reach the server within {self.connect_timeout:g}s (--connect-timeout)"
                )
            logger.info("The SuperNode stopped (exit %s); starting it again", code)
            time.sleep(1.0)
        return 0

    def request_stop(self, *_: Any) -> None:
        """Signal handler: ask the SuperNode to stop (the main loop then cleans up)."""
        self.stopping = True
        if self.node is not None:
            self.node.terminate()

    def stop(self) -> None:
        """Stop the SuperNode and do not restart it."""
        self.stopping = True
        if self.node is not None:
            self.node.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    out = Path(args.out or default_out(args)).resolve()
    lock = claim_folder(out, "node")  # noqa: F841 - held while the node runs
    require_flower_scripts()
    logger.info(check_flower("supernode", "auth", "executor"))
    if args.data_checker:
        ok, reason = check_data(args)
        if not ok:
            logger.error("Data check failed, not joining the task: %s", reason)
            return EXIT_DATA_CHECK
        logger.info("Data check passed: %s", reason)
    flags = supernode_flags(args)
    config = node_config(args, out)
    env = flower_env(out / ".flwr-node", poll_interval=args.poll_interval or None)
    config_file = out / "node-config.toml"
    config_file.write_text(tomli_w.dumps(config))
    if args.poll_interval > 0:
        env[SLEEP_CAP_ENV] = str(args.poll_interval)
    runtime_port = free_port()
    command = python_module(
        "alphafed_flwr.deploy.supernode", "--superlink", args.server, *flags,
        "--node-config", str(config_file), "--host", "127.0.0.1", "--port", str(runtime_port),
        "--max-wait-time", str(args.connect_timeout),
    )
    keeper = None
    runner = SuperNodeRunner(command, env, out, args.connect_timeout)
    if not args.no_warm_executor:
        runner.command += ["--isolation", "process"]
        executor = python_module(
            "alphafed_flwr.deploy.executor", "--runtime-api-address", f"127.0.0.1:{runtime_port}",
            "--poll-interval", str(args.poll_interval or 1.0),
        )
        keeper = ExecutorKeeper(executor, env, out, on_failure=runner.request_stop)
        keeper.start()
    signal.signal(signal.SIGTERM, runner.request_stop)
    signal.signal(signal.SIGINT, runner.request_stop)
    logger.info("Joining %s as a SuperNode (outputs in %s)", args.server, out)
    try:
        code = runner.run()
        if keeper is not None and keeper.failed:
            raise TaskFailed(keeper.failed)
        return code
    finally:
        runner.stop()
        if keeper is not None:
            keeper.stop()


if __name__ == "__main__":
    exit_with(main)
