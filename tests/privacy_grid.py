"""FakeGrid variants for the privacy tests."""

from __future__ import annotations

import copy
from collections.abc import Iterable

from flwr.app import Message
from fakegrid import FakeGrid


class CopyingGrid(FakeGrid):
    """A FakeGrid that gives every node its own copy of a message's content, as a real
    transport does (Flower's SecAgg+ workflow sends one content object to every node, and
    its client mod pops keys from it); it also records every reply the server pulls."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.received: list[Message] = []

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        for msg in messages:
            msg.content = copy.deepcopy(msg.content)
        return super().push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(super().pull_messages(message_ids))
        self.received.extend(replies)
        return replies
