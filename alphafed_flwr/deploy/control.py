"""Our side of the SuperLink's Control API: register nodes, start a run, follow it."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from alphafed_flwr.api.errors import ConfigError, TaskFailed
from alphafed_flwr.api.log import logger

from .superlink import TOKEN_HEADER


#: how long a run's status may go unanswered before the server command gives up (s)
STATUS_RETRY_SECONDS = 120.0


class _TokenInterceptor:
    """Adds the guarded SuperLink's control token to every Control API call."""

    def __init__(self, token: str) -> None:
        self.token = token

    def intercept(self, context: Any, call_next: Callable[[Any], httpx.Response]) -> httpx.Response:
        context.request.headers[TOKEN_HEADER] = self.token
        return call_next(context)


class Control:
    """A Control API client for one guarded SuperLink.

    Parameters
    ----------
    address : str
        ``host:port`` to reach the SuperLink from this machine.
    token : str
        The SuperLink's control token.
    ca_cert : Path | None
        CA certificate for TLS; ``None`` with ``insecure``.
    insecure : bool
        Plain HTTP.
    """

    def __init__(self, address: str, token: str, ca_cert: Path | None, insecure: bool) -> None:
        from flwr.supercore.control import ControlHttpClient  # pylint: disable=C0415

        self.client = ControlHttpClient.from_server_address(
            server_address=address,
            insecure=insecure,
            root_certificates=None if insecure or ca_cert is None else str(ca_cert),
            interceptors=[_TokenInterceptor(token)],
        )

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()

    def wait_ready(self, timeout: float, alive: Callable[[], bool], log_tail: Callable[[], str]) -> None:
        """Wait until the Control API answers (``TaskFailed`` after ``timeout`` s).

        If the SuperLink stops first, the error carries the end of its log (the cause).
        """
        from flwr.proto.control_pb2 import ListRunsRequest  # pylint: disable=C0415

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not alive():
                raise TaskFailed(f"the SuperLink stopped while starting; the end of superlink.log:\n{log_tail()}")
            try:
                self.client.ListRuns(ListRunsRequest())
                return
            except (httpx.HTTPError, OSError) as exc:
                last = exc
                time.sleep(0.2)
        raise TaskFailed(f"the SuperLink did not answer within {timeout:g}s ({last})")

    def register_nodes(self, public_keys: list[Path]) -> list[str]:
        """Register SuperNode public keys (OpenSSH EC); returns one line per key."""
        from cryptography.hazmat.primitives import serialization  # pylint: disable=C0415
        from cryptography.hazmat.primitives.asymmetric import ec  # pylint: disable=C0415
        from flwr.proto.control_pb2 import RegisterNodeRequest  # pylint: disable=C0415

        lines = []
        for path in public_keys:
            try:
                key = serialization.load_ssh_public_key(Path(path).read_bytes())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot read the node public key '{path}': {exc}") from exc
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise ConfigError(f"'{path}' is not an EC public key (use python -m alphafed_flwr.certs)")
            pem = key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            try:
                res = self.client.RegisterNode(RegisterNodeRequest(public_key=pem, name=Path(path).stem))
                lines.append(f"{path}: node {res.node_id}")
            except httpx.HTTPStatusError as exc:
                if "already in use" not in exc.response.text:
                    raise TaskFailed(f"registering '{path}' failed: {exc.response.text}") from exc
                lines.append(f"{path}: already registered")
        return lines

    def stop_unfinished_runs(self) -> list[int]:
        """Stop runs a previous server left behind in the same database."""
        from flwr.proto.control_pb2 import ListRunsRequest, StopRunRequest  # pylint: disable=C0415

        stopped = []
        for run_id, run in self.client.ListRuns(ListRunsRequest()).run_dict.items():
            if run.status.status != "finished":
                try:
                    self.client.StopRun(StopRunRequest(run_id=run_id))
                    stopped.append(run_id)
                except httpx.HTTPError:
                    continue
        return stopped

    def start_run(self, fab: bytes) -> int:
        """Submit the bundle; return the run id."""
        # pylint: disable=import-outside-toplevel
        from flwr.common.serde import fab_to_proto
        from flwr.proto.control_pb2 import StartRunRequest
        from flwr.supercore.fab import Fab

        request = StartRunRequest(fab=fab_to_proto(Fab(hashlib.sha256(fab).hexdigest(), fab, {})), federation="")
        try:
            res = self.client.StartRun(request)
        except httpx.HTTPStatusError as exc:
            raise TaskFailed(f"the SuperLink refused the run: {exc.response.text}") from exc
        if not res.HasField("run_id"):
            raise TaskFailed("the SuperLink refused the run (no run id; is the bundle over 10 MB?)")
        return int(res.run_id)

    def stream_logs(
        self, run_id: int, write: Callable[[str], None], alive: Callable[[], bool], log_tail: Callable[[], str]
    ) -> None:
        """Print the run's log until the run finishes (``TaskFailed`` if the SuperLink stops)."""
        from flwr.proto.control_pb2 import StreamLogsRequest  # pylint: disable=C0415

        after = 0.0
        while True:
            if not alive():
                raise TaskFailed(f"the SuperLink stopped during the run; the end of superlink.log:\n{log_tail()}")
            try:
                for chunk in self.client.StreamLogs(StreamLogsRequest(run_id=run_id, after_timestamp=after)):
                    write(chunk.log_output)
                    after = max(after, chunk.latest_timestamp)
                return
            except httpx.HTTPError:
                if not alive():
                    continue
                if self.status(run_id)[0] == "finished":
                    return
                time.sleep(0.5)

    def status(self, run_id: int, retry_seconds: float = STATUS_RETRY_SECONDS) -> tuple[str, str, str]:
        """``(status, sub_status, details)`` of a run.

        A busy SuperLink (its database locked by writers, a reset connection) can fail one
        request while the run goes on, so failures are retried for ``retry_seconds`` before
        ``TaskFailed``: a long run is not lost to one unanswered status request.
        """
        from flwr.proto.control_pb2 import ListRunsRequest  # pylint: disable=C0415

        deadline = time.monotonic() + retry_seconds
        while True:
            try:
                run = self.client.ListRuns(ListRunsRequest(run_id=run_id)).run_dict[run_id]
                return run.status.status, run.status.sub_status, run.status.details
            except httpx.HTTPError as exc:
                if time.monotonic() >= deadline:
                    raise TaskFailed(
                        f"the SuperLink did not answer status requests for run {run_id} for "
                        f"{retry_seconds:.0f}s (last error: {exc!r}); see superlink.log"
                    ) from exc
                logger.warning("The SuperLink did not answer a status request (%r): retrying", exc)
                time.sleep(1.0)

    def stop_run(self, run_id: int) -> None:
        """Stop a run."""
        from flwr.proto.control_pb2 import StopRunRequest  # pylint: disable=C0415

        self.client.StopRun(StopRunRequest(run_id=run_id))
