"""alphafed_flwr.deploy.longpoll: held pulls are answered again after a push, never lost."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from alphafed_flwr.deploy.longpoll import LongPoll, Pull, Pulse, Rules

PROTOBUF = [(b"content-type", b"application/protobuf")]


class Store:
    """A fake server: ``/pull`` answers the stored items (empty body: nothing), ``/push`` adds one."""

    def __init__(self, content_type: list[tuple[bytes, bytes]] = PROTOBUF) -> None:
        self.items: list[bytes] = []
        self.pulls = 0
        self.content_type = content_type

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = (await receive())["body"]
        if scope["path"] == "/push":
            self.items.append(body)
            answer = b""
        else:
            self.pulls += 1
            answer = b"".join(self.items)
        await send({"type": "http.response.start", "status": 200, "headers": self.content_type})
        await send({"type": "http.response.body", "body": answer, "more_body": False})


def request(app: Any, path: str, body: bytes = b"") -> Any:
    """Call the ASGI app; return a coroutine giving the response body."""

    async def call() -> bytes:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app({"type": "http", "path": path}, receive, send)
        return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")

    return call()


def long_poll(store: Store, hold: float = 600.0) -> tuple[LongPoll, Pulse]:
    pulse = Pulse()
    rules = Rules(pulls={"/pull": Pull(lambda body: body == b"", pulse)}, pushes={"/push": (pulse,)})
    return LongPoll(store, rules, hold), pulse


def test_a_held_pull_is_answered_after_the_push() -> None:
    store = Store()
    app, _ = long_poll(store)

    async def scenario() -> bytes:
        pull = asyncio.create_task(request(app, "/pull"))
        while store.pulls == 0:  # the pull looked and found nothing
            await asyncio.sleep(0)
        await request(app, "/push", b"item")
        return await pull

    assert asyncio.run(scenario()) == b"item"
    assert store.pulls == 2


def test_a_pull_with_an_answer_is_not_held() -> None:
    store = Store()
    store.items.append(b"ready")
    app, _ = long_poll(store)
    assert asyncio.run(request(app, "/pull")) == b"ready"
    assert store.pulls == 1


def test_other_media_types_and_paths_pass_through() -> None:
    store = Store(content_type=[(b"content-type", b"application/json")])
    app, _ = long_poll(store)
    assert asyncio.run(request(app, "/pull")) == b""  # returns at once: not protobuf, not held
    assert asyncio.run(request(app, "/other")) == b""


def test_an_empty_answer_comes_back_after_the_hold() -> None:
    store = Store()
    app, _ = long_poll(store, hold=0.0)
    assert asyncio.run(request(app, "/pull")) == b""
    assert store.pulls == 1


def test_a_pulse_fired_from_a_thread_wakes_a_held_pull() -> None:
    store = Store()
    app, pulse = long_poll(store)

    async def scenario() -> bytes:
        pull = asyncio.create_task(request(app, "/pull"))
        while store.pulls == 0:
            await asyncio.sleep(0)
        store.items.append(b"made elsewhere")
        thread = threading.Thread(target=pulse.fire)
        thread.start()
        thread.join()
        return await pull

    assert asyncio.run(scenario()) == b"made elsewhere"


def test_a_fire_before_the_wait_is_not_missed() -> None:
    pulse = Pulse()
    seen = pulse.generation
    pulse.fire()
    assert pulse.wait(seen, timeout=600.0)
    assert asyncio.run(pulse.wait_async(seen, timeout=600.0))
    assert not pulse.wait(pulse.generation, timeout=0.0)
