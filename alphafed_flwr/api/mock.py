"""AlphaFed's mock mode (``alphafed.mock``): ``mock_context`` and its queries.

In AlphaFed, each party of a mock task ran in its own process inside
``with mock_context(id=..., nodes=[...])`` and called ``scheduler._run(...)``; the parties
met through a local database. alphafed-flwr simulates every party in one process instead:
the initiator's ``_run(..., is_initiator=True)`` starts a local Flower simulation with one
virtual client per other node in ``nodes``, and a data owner's ``_run`` is refused with
the command to run instead (see ``Scheduler._run``). There is no mock database, so
``clean`` has nothing to clean.
"""

from __future__ import annotations

import uuid
from types import TracebackType

from .errors import ConfigError

__all__ = ["is_mock_mode", "mock_context", "mock_node_id", "mock_nodes"]

_active: list[mock_context] = []


class mock_context:  # noqa: N801 - AlphaFed's name
    """Run the enclosed code as one node of a local mock task.

    Parameters
    ----------
    clean : bool
        AlphaFed: wipe the mock database first. Accepted; there is no database here.
    id : str | None
        This node's id (default: a random UUID).
    nodes : list[str] | None
        Ids of all nodes of the task, this one included; an initiator simulates one
        virtual client per other node.
    """

    def __init__(
        self, clean: bool = False, id: str | None = None, nodes: list[str] | None = None
    ) -> None:
        if not isinstance(clean, bool):
            raise ConfigError(f"mock_context: clean must be a bool, got {clean!r}")
        if id is not None and not isinstance(id, str):
            raise ConfigError(f"mock_context: id must be a string, got {id!r}")
        if nodes is not None and (
            not isinstance(nodes, list)
            or not all(isinstance(n, str) for n in nodes)
            or len(set(nodes)) != len(nodes)
        ):
            raise ConfigError(f"mock_context: nodes must be a list of distinct strings, got {nodes!r}")
        self.clean = clean
        self.id = id or str(uuid.uuid4())
        self.nodes = list(nodes or [])

    def __enter__(self) -> mock_context:
        _active.append(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _active.remove(self)

    def other_nodes(self) -> list[str]:
        """The nodes other than this one."""
        return [n for n in self.nodes if n != self.id]


def current_mock() -> mock_context | None:
    """The innermost active ``mock_context``, if any."""
    return _active[-1] if _active else None


def is_mock_mode() -> bool:
    """Whether code runs inside ``mock_context``."""
    return bool(_active)


def mock_node_id() -> str | None:
    """This node's id in mock mode, else ``None``."""
    return _active[-1].id if _active else None


def mock_nodes() -> list[str]:
    """All node ids given to ``mock_context`` (empty outside mock mode)."""
    return list(_active[-1].nodes) if _active else []
