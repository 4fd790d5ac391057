"""A node's warm executor: runs the SuperNode's ClientApp tasks in one long-lived process.

In its default ``subprocess`` isolation, Flower 1.41's SuperNode starts a SuperExec that
starts a fresh ``flwr-clientapp`` process for every message: about a second of Python and
Flower imports, then torch, the task and its data loaded again, for every batch of a
vertical task. The client command instead starts the SuperNode with ``--isolation process``
and runs this executor beside it. The executor takes the SuperNode's tasks from its Runtime
API on loopback (``AcquireTask``), exactly as Flower's SuperExec does, and runs each one the
way ``flwr-clientapp`` does, with Flower's own functions (pull the message, context, run and
app bundle; push the reply and the updated context; heartbeats while it works), but in this
one process, which keeps torch, the task and its data loaded. Everything it exchanges with
the SuperNode is Flower's protobufs, never pickles. It runs only alphafed-flwr bundles.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flwr.app import Message

from alphafed_flwr.api.log import logger

READY = "Warm executor ready"  # the client command's ExecutorKeeper waits for this line
ERROR_PAUSE = 1.0  # seconds between retries while the SuperNode is unreachable (e.g. restarting)


def _client(address: str, component: str, token: str | None = None) -> Any:
    # pylint: disable=import-outside-toplevel
    from flwr.supercore.interceptors.http.runtime_token import RuntimeTokenHttpInterceptor
    from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name=component)]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None,
        interceptors=interceptors, retry_invoker=make_simple_http_retry_invoker(),
    )


def installed_bundle(run: Any, fab: Any) -> Path:
    """Folder of the run's app bundle, installed on first use (as ``flwr-clientapp`` does)."""
    # pylint: disable=import-outside-toplevel
    from flwr.cli.install import install_from_fab
    from flwr.common.config import get_project_dir

    from alphafed_flwr.api.errors import ConfigError
    from alphafed_flwr.deploy.bundle import MANIFEST

    path = get_project_dir(run.fab_id, run.fab_version, fab.hash_str)
    if not path.is_dir():
        install_from_fab(fab.content, skip_prompt=True)
    if not (path / MANIFEST).is_file():
        raise ConfigError(f"run {run.run_id} is not an alphafed-flwr app ({run.fab_id}); this node runs only those")
    return path


class Task(threading.Thread):
    """One ClientApp task: pull its input, run the app, push the reply and the updated context.

    The input is pulled before anything runs. If the SuperNode hands out a new task while
    this one still waits for its message's objects, the SuperNode has given up on this
    message (for example because its run ended when the server died): the executor then
    :meth:`abandon`\ s it, and it never runs.
    """

    def __init__(self, address: str, token: str) -> None:
        super().__init__(daemon=True, name="clientapp-task")
        self.address, self.token = address, token
        self._lock = threading.Lock()
        self._abandoned = False
        self.pulling = True

    def abandon(self) -> bool:
        """Give the task up if it is still pulling its input; whether it was given up."""
        with self._lock:
            self._abandoned = self.pulling
            return self._abandoned

    def run(self) -> None:
        # pylint: disable=import-outside-toplevel
        from flwr.app.error import Error
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http

        from alphafed_flwr.compat import clientapp_task_io
        from alphafed_flwr.deploy.apps import local_client_app, use_bundle

        pull_task_input, push_message, push_task_output = clientapp_task_io()
        client = _client(self.address, "flwr-clientapp", self.token)
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        message: Message | None = None
        reply: Message | None = None
        context = None
        status, details = SubStatus.FAILED, "the ClientApp task failed"
        try:
            message, context, run, fab = pull_task_input(client)
            with self._lock:
                self.pulling = False
                if self._abandoned:
                    logger.info("Dropped a message the SuperNode gave up on (run %s)", run.run_id)
                    message = context = None
                    details = "the SuperNode moved on to a newer message"
                    return
            use_bundle(installed_bundle(run, fab))
            reply = local_client_app()(message, context)
            status, details = SubStatus.COMPLETED, ""
        except Exception as exc:  # noqa: BLE001 - returned to the server as the message's error
            logger.exception("The ClientApp raised an exception")
            details = f"{type(exc)}:<'{exc}'>"
            if message is not None:
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
                push_task_output(client=client, context=context, sub_status=status, details=details)
            finally:
                heartbeat.stop()
                client.close()


def serve(address: str, poll_interval: float) -> None:
    """Take and run the SuperNode's ClientApp tasks, one at a time, forever."""
    # pylint: disable=import-outside-toplevel,no-name-in-module
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType

    from alphafed_flwr.deploy.apps import warm_up
    from alphafed_flwr.deploy.latency import quick_object_pulls

    from alphafed_flwr.compat import check_flower

    logger.info(check_flower("executor", "supernode"))
    quick_object_pulls()
    warm_up()
    client = _client(address, "SuperExec")
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    logger.info("%s: ClientApp tasks of the SuperNode at %s run in this process", READY, address)
    unreachable = False
    current: Task | None = None
    while True:
        if current is not None and not current.is_alive():
            current = None
        if current is not None and not current.pulling:
            current.join(0.01)  # running user code: the next task waits for its context
            continue
        try:
            response = client.AcquireTask(request)
        except Exception as exc:  # noqa: BLE001 - the SuperNode may be restarting; keep trying
            if not unreachable:
                logger.warning("The SuperNode's Runtime API at %s is unreachable (%s); retrying", address, exc)
            unreachable = True
            time.sleep(ERROR_PAUSE)
            continue
        if unreachable:
            logger.info("The SuperNode's Runtime API is back")
            unreachable = False
        if response.HasField("task") and response.token:
            if current is not None and not current.abandon():
                current.join()
            current = Task(address, response.token)
            current.start()
        else:
            time.sleep(poll_interval)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m alphafed_flwr.deploy.executor --runtime-api-address HOST:PORT``."""
    parser = argparse.ArgumentParser(prog="python -m alphafed_flwr.deploy.executor")
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API (loopback)")
    parser.add_argument("--poll-interval", type=float, default=0.05, help="seconds between task polls")
    args = parser.parse_args(argv)
    from alphafed_flwr.deploy.processes import exit_with_parent  # pylint: disable=C0415

    exit_with_parent()
    serve(args.runtime_api_address, args.poll_interval)


if __name__ == "__main__":
    main()
