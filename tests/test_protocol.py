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


def test_every_protocol_name_has_its_own_value() -> None:
    """Two names for one string would let one side read a field the other never meant."""
    names = {k: v for k, v in vars(protocol).items() if k.isupper() and isinstance(v, str)}
    by_value: dict[str, list[str]] = {}
    for name, value in names.items():
        by_value.setdefault(value, []).append(name)
    assert {v: n for v, n in by_value.items() if len(n) > 1} == {}


def test_the_vertical_payload_literals_live_only_in_the_protocol() -> None:
    """The exchange's key strings appear in no strategy or adapter of the vertical families."""
    import pathlib

    import alphafed_flwr

    root = pathlib.Path(alphafed_flwr.__file__).parent
    files = [
        root / "strategies" / "split_learning.py",
        root / "strategies" / "secure_split.py",
        root / "adapters" / "vertical_client.py",
        root / "adapters" / "vertical_host.py",
        root / "adapters" / "secure_client.py",
        root / "adapters" / "secure_host.py",
    ]
    keys = [protocol.FEATURE_KEY, protocol.TEST_FEATURES, protocol.GRADS, protocol.APPLY,
            protocol.SPLIT_DIGEST, protocol.CHECKPOINT_ROUNDS, protocol.FORWARD_BATCH, protocol.TEST_ALPHA]
    for path in files:
        text = path.resolve().read_text()
        assert not [k for k in keys if f'"{k}"' in text or f"'{k}'" in text], path.name
