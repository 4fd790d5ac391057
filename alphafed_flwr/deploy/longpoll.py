"""Long polls: a pull that finds nothing waits, inside the server, for the push it waits for.

Flower 1.41's parties find new work by polling: a SuperNode asks the SuperLink for messages,
the ServerApp's grid asks it for replies, both retry an object that has not arrived yet, and
an executor asks its SuperNode for tasks. On loopback each empty answer costs the server a
request (on the SuperLink: several SQLite queries, several milliseconds of a shared core)
and the caller a sleep before it asks again. :class:`LongPoll` wraps the server's ASGI app:
a pull whose answer is empty is held (``hold`` seconds at most) and answered again as soon
as a push that may change the answer has gone through, or :meth:`Pulse.fire` was called.
The protocol is unchanged: the caller gets the same answer, only sooner, and a caller that
gave up waiting has lost nothing, since an empty answer has no side effect.

The rules (which paths pull, which empty answers may wait, which pushes wake them) are
Flower's routes; :mod:`alphafed_flwr.compat` builds and checks them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HOLD = 1.0  # seconds a pull with an empty answer may be held (well under any client timeout)
PROTOBUF_MEDIA_TYPE = b"application/protobuf"


class Pulse:
    """A wake-up that threads and asyncio tasks wait for; :meth:`fire` works from any thread.

    Waiters pass the :attr:`generation` they saw *before* they looked for work, so a fire
    between their look and their wait is never missed.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._generation = 0
        self._futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def generation(self) -> int:
        """How many times the pulse fired."""
        return self._generation

    def fire(self) -> None:
        """Wake every waiter."""
        with self._condition:
            self._generation += 1
            self._condition.notify_all()
            futures, self._futures = self._futures, []
        for loop, future in futures:
            loop.call_soon_threadsafe(_resolve, future)

    def wait(self, seen: int, timeout: float) -> bool:
        """Block until the pulse fired after ``seen``; whether it did within ``timeout`` s."""
        with self._condition:
            return self._condition.wait_for(lambda: self._generation != seen, timeout)

    async def wait_async(self, seen: int, timeout: float) -> bool:
        """:meth:`wait` for asyncio tasks."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._condition:
            if self._generation != seen:
                return True
            self._futures.append((loop, future))
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._condition:
                if (loop, future) in self._futures:
                    self._futures.remove((loop, future))


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@dataclass(frozen=True)
class Pull:
    """A pull route: its answer is empty per ``empty(body)``, and ``pulse`` ends the wait."""

    empty: Callable[[bytes], bool]
    pulse: Pulse


@dataclass
class Rules:
    """Pull routes by path, and the pulses each push route fires after it succeeded."""

    pulls: dict[str, Pull] = field(default_factory=dict)
    pushes: dict[str, tuple[Pulse, ...]] = field(default_factory=dict)


class LongPoll:
    """ASGI wrapper: holds pulls with empty answers until a push may have changed them.

    Only protobuf answers with status 200 are held; anything else (errors, other media
    types, other paths) passes through untouched.
    """

    def __init__(self, app: Any, rules: Rules, hold: float = HOLD) -> None:
        self.app, self.rules, self.hold = app, rules, hold

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", "")) if scope["type"] == "http" else ""
        pull = self.rules.pulls.get(path)
        if pull is not None:
            await self._pull(pull, scope, receive, send)
            return
        pulses = self.rules.pushes.get(path, ())
        if not pulses:
            await self.app(scope, receive, send)
            return
        status = _Status(send)
        await self.app(scope, receive, status.send)
        if status.code == 200:
            for pulse in pulses:
                pulse.fire()

    async def _pull(self, pull: Pull, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.hold
        while True:
            seen = pull.pulse.generation
            answer = _Buffered()
            attempt = dict(scope)
            attempt["state"] = dict(scope.get("state") or {})
            await self.app(attempt, _replay(body), answer.send)
            remaining = deadline - loop.time()
            if remaining <= 0 or not answer.holdable(pull.empty):
                break
            if not await pull.pulse.wait_async(seen, remaining):
                break
        await answer.flush(send)


class _Status:
    """Passes a response through, noting its status."""

    def __init__(self, send: Send) -> None:
        self._send, self.code = send, 0

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.code = int(message["status"])
        await self._send(message)


class _Buffered:
    """A response kept back until it is known whether it is sent or retried."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def send(self, message: Message) -> None:
        self.messages.append(message)

    def holdable(self, empty: Callable[[bytes], bool]) -> bool:
        """Whether the answer is a complete, successful, empty protobuf answer."""
        if not self.messages or self.messages[0]["type"] != "http.response.start":
            return False
        start = self.messages[0]
        headers = dict(start.get("headers") or [])
        if start["status"] != 200 or not headers.get(b"content-type", b"").startswith(PROTOBUF_MEDIA_TYPE):
            return False
        if headers.get(b"content-encoding", b"identity") != b"identity":
            return False
        bodies = [m for m in self.messages[1:] if m["type"] == "http.response.body"]
        if not bodies or bodies[-1].get("more_body", False):
            return False
        return empty(b"".join(m.get("body", b"") for m in bodies))

    async def flush(self, send: Send) -> None:
        for message in self.messages:
            await send(message)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the request has no more body; the client is still there
        return {"type": "http.disconnect"}

    return receive
