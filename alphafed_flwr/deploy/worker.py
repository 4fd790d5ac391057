"""A node's warm worker: runs its ClientApp messages in one long-lived process.

Flower's SuperNode starts a fresh ``flwr-clientapp`` process for every message, which
re-imports torch, reloads the task and rebuilds models each time. With a warm worker (the
client command starts one per node), that process only imports Flower and forwards the
message over a Unix socket (mode 0600, in the node's output folder) to this process, which
keeps torch, the task and its data loaded. What crosses the socket is Flower's own protobuf
serialization of the message content and the node's ``Context``, never pickles; the
ClientApp process returns the reply and the updated ``context.state`` to the SuperNode as
usual. If the worker is not reachable, the message runs in the ClientApp process itself.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flwr.app import Context, Message

from alphafed_flwr.api.log import logger

SOCKET_KEY = "worker-socket"
_LENGTH = struct.Struct(">Q")
REPLY_TIMEOUT = 6 * 3600.0  # never wait forever; the host's own timeouts are far shorter
READY_TIMEOUT = 120.0  # seconds the worker may take to import torch and start listening


class WorkerUnavailable(ConnectionError):
    """The node's worker cannot be reached."""


def _send(sock: socket.socket, *blobs: bytes) -> None:
    for blob in blobs:
        sock.sendall(_LENGTH.pack(len(blob)) + blob)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            raise ConnectionError("the connection closed mid-frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _recv(sock: socket.socket, count: int) -> list[bytes]:
    return [_recv_exact(sock, _LENGTH.unpack(_recv_exact(sock, _LENGTH.size))[0]) for _ in range(count)]


def _encode(header: dict[str, Any], content: Any, context: Context) -> tuple[bytes, bytes, bytes]:
    from flwr.common.serde import context_to_proto, recorddict_to_proto  # pylint: disable=C0415

    return (
        json.dumps(header).encode(),
        recorddict_to_proto(content).SerializeToString(),
        context_to_proto(context).SerializeToString(),
    )


def _decode(content: bytes, context: bytes) -> tuple[Any, Context]:
    # pylint: disable=import-outside-toplevel,no-name-in-module
    from flwr.common.serde import context_from_proto, recorddict_from_proto
    from flwr.proto.message_pb2 import Context as ContextProto
    from flwr.proto.recorddict_pb2 import RecordDict as RecordDictProto

    content_proto, context_proto = RecordDictProto(), ContextProto()
    content_proto.ParseFromString(content)
    context_proto.ParseFromString(context)
    return recorddict_from_proto(content_proto), context_from_proto(context_proto)


def forward(path: str, message: Message, context: Context, bundle: Path) -> Message:
    """Run ``message`` in the worker at ``path``; update ``context.state``; return the reply.

    ``bundle`` is the installed app bundle the message belongs to.
    """
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(REPLY_TIMEOUT)
        sock.connect(path)
    except OSError as exc:
        raise WorkerUnavailable(f"no worker at {path}: {exc}") from exc
    with sock:
        header = {"message_type": message.metadata.message_type, "bundle": str(bundle)}
        _send(sock, *_encode(header, message.content, context))
        header, content, state = _recv(sock, 3)
    result = json.loads(header)
    if not result["ok"]:
        raise RuntimeError(result["error"])
    reply_content, updated = _decode(content, state)
    context.state = updated.state
    return Message(reply_content, reply_to=message)


def serve(path: Path, app_fn: Callable[[], Any], use_bundle: Callable[[Path], None]) -> None:
    """Answer forwarded messages one at a time, forever."""
    from flwr.supercore.task_identity import TaskIdentity  # pylint: disable=C0415

    app = app_fn()
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        server.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    server.listen(4)
    logger.info("Warm worker ready at %s", path)
    while True:
        conn, _ = server.accept()
        with conn:
            try:
                raw_header, content, state = _recv(conn, 3)
                header = json.loads(raw_header)
                message_type = header["message_type"]
                use_bundle(Path(header["bundle"]))
                records, context = _decode(content, state)
                TaskIdentity.run_id = context.run_id
                TaskIdentity.node_id = context.node_id
                TaskIdentity.task_id = 1
                message = Message(records, dst_node_id=context.node_id, message_type=message_type)
                message.metadata.__dict__["_message_id"] = "forwarded"
                try:
                    reply = app(message, context)
                    result, body = {"ok": True}, reply.content
                except Exception as exc:  # noqa: BLE001 - returned as the message's error
                    logger.error("%s", traceback.format_exc().rstrip())
                    result, body = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}, records
                _send(conn, *_encode(result, body, context))
            except (ConnectionError, OSError, ValueError) as exc:
                logger.warning("Dropped a forwarded message: %s", exc)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m alphafed_flwr.deploy.worker --socket PATH``."""
    parser = argparse.ArgumentParser(prog="python -m alphafed_flwr.deploy.worker")
    parser.add_argument("--socket", required=True, help="Unix socket path")
    args = parser.parse_args(argv)
    from alphafed_flwr.deploy.apps import local_client_app, use_bundle  # pylint: disable=C0415
    from alphafed_flwr.deploy.processes import exit_with_parent  # pylint: disable=C0415

    exit_with_parent()
    serve(Path(args.socket), local_client_app, use_bundle)


if __name__ == "__main__":
    main()
