"""An in-process Grid: messages go straight to ClientApp-like handlers, one Context per node."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid

Handler = Callable[[Message, Context], Message | None]


class FakeGrid(Grid):
    """Handlers run synchronously at push time; a handler returning ``None`` never answers,
    and one that raises answers with an error reply (as Flower does)."""

    def __init__(self, handlers: dict[int, Handler], node_configs: dict[int, dict] | None = None) -> None:
        self.handlers = dict(handlers)
        self.contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                node_config=dict((node_configs or {}).get(node, {})),
                state=RecordDict(),
                run_config={},
            )
            for node in handlers
        }
        self.replies: dict[str, Message] = {}
        self.sent: list[Message] = []
        self.before_message: Callable[[], None] | None = None

    def set_run(self, run) -> None:  # noqa: ANN001 - not used
        """Not used."""

    @property
    def run(self):  # noqa: ANN201 - not used
        """Not used."""
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # noqa: ANN001, ANN201
        """Not used."""
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.handlers)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = uuid.uuid4().hex
            msg.metadata.__dict__["_message_id"] = mid
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            if self.before_message is not None:
                self.before_message()
            try:
                reply = self.handlers[node](msg, self.contexts[node])
            except Exception as exc:  # noqa: BLE001 - becomes an error reply, as in Flower
                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            if reply is not None:
                self.replies[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(mid) for mid in list(message_ids) if mid in self.replies]

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN201
        return self.pull_messages(self.push_messages(messages))


def client_app_handler(app) -> Handler:  # noqa: ANN001
    """A handler that runs a Flower ClientApp."""
    return lambda message, context: app(message, context)
