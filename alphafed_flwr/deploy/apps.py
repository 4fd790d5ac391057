"""The ServerApp and ClientApp that a bundle's thin modules expose (deployment only).

Run settings come from ``context.run_config`` (``RunSettings.to_run_config``, written into
the bundle by the server command); each node's own settings (data folder, output folder, partition, collaborator
script) come from ``context.node_config`` (the client command's ``--node-config``).
The ServerApp imports the adapters only when it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from alphafed_flwr.families import HORIZONTAL, VERTICAL, family_of, message_types
from alphafed_flwr.families import client_app as family_client_app
from alphafed_flwr.settings import RunSettings
from alphafed_flwr.strategies.protocol import route

_bundle: Path | None = None


def use_bundle(path: Path | None) -> None:
    """Set the bundle folder explicitly (the warm executor does, per task)."""
    global _bundle  # noqa: PLW0603 - one message at a time per process
    _bundle = path


def bundle_dir() -> Path:
    """Folder of the installed bundle (the ServerApp/ClientApp module's parent package)."""
    if _bundle is not None:
        return _bundle
    import alphafed_app  # type: ignore[import-not-found]  # pylint: disable=import-outside-toplevel

    return Path(alphafed_app.__file__).resolve().parent.parent


server_app = ServerApp()


@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    """Run the task's server side: a horizontal server or a vertical host."""
    # pylint: disable=import-outside-toplevel
    from alphafed_flwr.adapters.templates import TaskFileTemplate
    from alphafed_flwr.api.log import logger
    from alphafed_flwr.deploy.bundle import task_ref_in
    from alphafed_flwr.deploy.latency import server_object_pulls

    settings = RunSettings.from_run_config(context.run_config)
    ref = task_ref_in(bundle_dir())
    logger.info("ServerApp: task %s, outputs in %s", ref, settings.out)
    if settings.kind == VERTICAL:
        from alphafed_flwr.adapters.vertical_host import run_host
        from alphafed_flwr.api.hetero_nn import HeteroNNHostScheduler

        host = TaskFileTemplate(ref, HeteroNNHostScheduler).new_instance()
        assert isinstance(host, HeteroNNHostScheduler)
        server_object_pulls(float(host.calculation_timeout))
        run_host(grid, host, settings.vertical_settings(mode="deployment"))
        return
    from alphafed_flwr.api.fed_avg import FedAvgScheduler

    template = TaskFileTemplate(ref, FedAvgScheduler)
    scheduler = template.new_instance()
    assert isinstance(scheduler, FedAvgScheduler)
    server_object_pulls(float(scheduler.calculation_timeout))
    trainer = template.new_instance() if scheduler.involve_aggregator else None
    family_of(scheduler).server_adapter()(scheduler, settings.server_settings(mode="deployment"), trainer).run(grid)


def _horizontal_source(context: Context) -> Any:
    # pylint: disable=import-outside-toplevel
    from alphafed_flwr.adapters.templates import TaskFileTemplate
    from alphafed_flwr.api.fed_avg import FedAvgScheduler
    from alphafed_flwr.deploy.bundle import task_ref_in

    del context
    return TaskFileTemplate(task_ref_in(bundle_dir()), FedAvgScheduler)


def _horizontal_settings(context: Context) -> Any:
    return RunSettings.from_run_config(context.run_config).client_settings(context.node_config)


def _collaborator_source(context: Context) -> Any:
    # pylint: disable=import-outside-toplevel
    from alphafed_flwr.adapters.templates import TaskFileTemplate
    from alphafed_flwr.api.errors import ConfigError
    from alphafed_flwr.api.hetero_nn import HeteroNNCollaboratorScheduler

    script = context.node_config.get("collaborator")
    if not script:
        raise ConfigError(
            "this node has no collaborator script: start it with "
            "python -m alphafed_flwr.client --collaborator collab.py[:name]"
        )
    return TaskFileTemplate(str(script), HeteroNNCollaboratorScheduler)


def _collaborator_settings(context: Context) -> Any:
    return RunSettings.from_run_config(context.run_config).collaborator_settings(context.node_config)


#: The message types each node role serves; a node refuses every other type.
ROLE_MESSAGE_TYPES = {
    "horizontal": message_types(HORIZONTAL),
    "collaborator": message_types(VERTICAL),
}
_role_apps: dict[str, ClientApp] = {}


def node_role(context: Context) -> str:
    """``collaborator`` for a node started with ``--collaborator``, else ``horizontal``."""
    return "collaborator" if context.node_config.get("collaborator") else "horizontal"


def _role_app(role: str) -> ClientApp:
    """The adapters' ClientApp of one role, built once per process (imports torch)."""
    if role not in _role_apps:
        if role == "collaborator":
            _role_apps[role] = family_client_app(VERTICAL, _collaborator_source, _collaborator_settings)
        else:
            _role_apps[role] = family_client_app(HORIZONTAL, _horizontal_source, _horizontal_settings)
    return _role_apps[role]


def serve_message(message: Message, context: Context) -> Message:
    """Run a message with the app of this node's role; refuse the other roles' types.

    A vertical collaborator never runs the horizontal handlers (they would load the
    bundle's task file, the host's script) and a horizontal node never the vertical ones:
    such a message gets an error reply naming the refused type, and is logged.
    """
    from flwr.app import Error  # pylint: disable=import-outside-toplevel
    from flwr.common.constant import ErrorCode  # pylint: disable=import-outside-toplevel

    from alphafed_flwr.api.log import logger  # pylint: disable=import-outside-toplevel

    role, kind = node_role(context), message.metadata.message_type
    if kind not in ROLE_MESSAGE_TYPES[role]:
        reason = (
            f"this node is a {role} node and refuses message type '{kind}' "
            f"(it serves only {', '.join(ROLE_MESSAGE_TYPES[role])})"
        )
        logger.warning("Refused a message from the server: %s", reason)
        return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=message)
    return _role_app(role)(message, context)


def warm_up() -> None:
    """Import the adapters (and torch) now, not during a node's first message."""
    for role in ROLE_MESSAGE_TYPES:
        _role_app(role)


def local_client_app() -> Any:
    """What runs a node's messages in this process: :func:`serve_message` (apps load lazily)."""
    return serve_message


def _run_here(message: Message, context: Context) -> Message:
    return serve_message(message, context)


#: The bundle's ClientApp for Flower's own SuperExec (``--no-warm-executor``): light to
#: import; the adapters (and torch) load on the first message.
client_app = ClientApp()
for _type in message_types(HORIZONTAL) + message_types(VERTICAL):
    route(client_app, _type)(_run_here)
