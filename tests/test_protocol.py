"""The wire protocol module: one name per message type and key, used by both sides."""

from __future__ import annotations

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from alphafed_flwr.api.fed_prox import PROXIMAL_MU_KEY
from alphafed_flwr.strategies import protocol


def test_the_api_mirror_of_proximal_mu_is_the_protocols_key() -> None:
    assert PROXIMAL_MU_KEY == protocol.PROXIMAL_MU == "proximal-mu"


def test_roles_serve_disjoint_message_types() -> None:
    assert not set(protocol.HORIZONTAL_TYPES) & set(protocol.COLLABORATOR_TYPES)
    assert protocol.TRAIN == "train" and protocol.EXCHANGE == "train.exchange"


@pytest.mark.parametrize("message_type", protocol.HORIZONTAL_TYPES + protocol.COLLABORATOR_TYPES)
def test_route_registers_exactly_that_message_type(message_type: str) -> None:
    app = ClientApp()
    seen: list[str] = []

    @protocol.route(app, message_type)
    def _handler(message: Message, context: Context) -> Message:
        del context
        seen.append(message.metadata.message_type)
        return Message(RecordDict(), reply_to=message)

    context = Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})
    message = Message(RecordDict(), dst_node_id=2, message_type=message_type)
    app(message, context)
    assert seen == [message_type]
    other = "query.other" if message_type != "query.other" else "train.other"
    with pytest.raises(ValueError):
        app(Message(RecordDict(), dst_node_id=2, message_type=other), context)
