"""Every use of a private Flower name, in one place, checked at start-up.

alphafed-flwr patches or reads a few private parts of Flower. Each one is listed here with
a check of the shape it relies on (the function or attribute exists, with the expected
parameters, and is used the way the patch assumes). :func:`check_flower` runs the checks
(all, or some groups) and raises :class:`FlowerCompatError`, naming every failed check and
the supported Flower versions, if Flower changed: a patch never silently does nothing, and
the guarded SuperLink never starts unguarded. The deployment commands run it on every
start and log the result.

Verified against Flower 1.41.0 and 1.42.0: ``start_client_internal.py``,
``inflatable_utils.py``, ``run_clientapp.py``, ``flower_superlink.py``, ``config_loader.py``,
``vce_api.py``, ``inmemory_grid.py``, ``linkstate_factory.py``, ``in_memory_linkstate.py``,
``flower_supernode.py``, the fleet and runtime routers, ``in_memory_nodestate.py``, the
object stores, the fleet/runtime/message protobufs and the strategies are byte-identical;
``superlink/main.py`` and ``supernode/main.py`` differ only by a tracing middleware
(``create_app`` has the same signature), ``sql_corestate.py`` by tracing and compacted
contexts (the task-claim sweep and token check are the same).

Groups
------
``supernode``
    The SuperNode's hard-coded sleeps (``start_client_internal``'s ``time``), the object
    pulls' retry defaults (``pull_objects.__kwdefaults__``), and the SuperNode's runtime
    app (``flwr.supernode.main.create_app``), served through ``deploy.longpoll`` with its
    node state's ``create_task`` and object store's ``put`` waking held pulls.
``superlink``
    The SuperLink's configuration parser, ``create_app`` and lifespan class, from which
    ``deploy.superlink`` builds its own two listeners, and the routes and protobuf answers
    its long polls (``deploy.longpoll``) hold and wake; its middlewares (``_get_middleware``)
    and the path test each one that acts on some routes only makes first.
``executor``
    ``run_clientapp``'s task input/output functions (the warm executor).
``auth``
    The error codes and message format of a SuperNode refused by the SuperLink.
``simulation``
    The simulation engine's 0.1 s poll of the link state (``vce_api``), replaced by a
    wait woken by every message the ServerApp's grid stores (``InMemoryGrid``, the
    link state its factory caches); the replies the engine stores wake the ServerApp's
    pull loop the same way (``reply_event``).
``strategies``
    Server-side state attributes of Flower's strategies (``current_arrays``, ``m_t``,
    ``v_t``, ``momentum_vector``).
``privacy``
    DP accounting and the SecAgg+ bridge (issue 11): the RDP accountant class,
    ``PrivacyBudgetExhausted``, the legacy ``ClientProxy``, FitIns/FitRes record conversion
    and the workflow's state record keys; ``message_bytes`` (bench/privacy.py) uses the
    inflatable objects' ``get_all_nested_objects``.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

SUPPORTED_VERSIONS = ("1.41", "1.42")
GROUPS = ("supernode", "superlink", "executor", "auth", "simulation", "strategies", "privacy")


class FlowerCompatError(RuntimeError):
    """The installed Flower lacks a private piece alphafed-flwr relies on."""


def _module(name: str) -> types.ModuleType:
    return importlib.import_module(name)


def flower_version() -> str:
    """The installed Flower version."""
    import flwr  # pylint: disable=import-outside-toplevel

    return str(flwr.__version__)


def _keyword_params(function: Callable[..., Any], names: Iterable[str]) -> None:
    params = inspect.signature(function).parameters
    for name in names:
        if name not in params or params[name].kind is not inspect.Parameter.KEYWORD_ONLY:
            raise AssertionError(f"{function.__qualname__} has no keyword-only parameter '{name}'")


def _params(function: Callable[..., Any], names: Iterable[str]) -> None:
    got = list(inspect.signature(function).parameters)
    if got[: len(list(names))] != list(names):
        raise AssertionError(f"{function.__qualname__}{inspect.signature(function)}: expected parameters {list(names)}")


def _attribute_calls(module: types.ModuleType, owner: str, attribute: str) -> int:
    """How many ``owner.attribute(...)`` calls the module's source makes."""
    tree = ast.parse(inspect.getsource(module))
    return sum(
        1
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == attribute
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == owner
    )


# --------------------------------------------------------------------------- supernode
SUPERNODE_INTERNAL = "flwr.supernode.start_client_internal"
INFLATABLE_UTILS = "flwr.supercore.inflatable.inflatable_utils"
PULL_PARAMETERS = ("max_time", "max_tries_per_object", "initial_backoff", "backoff_cap")


def _check_supernode() -> None:
    internal = _module(SUPERNODE_INTERNAL)
    if not isinstance(getattr(internal, "time", None), types.ModuleType):
        raise AssertionError(f"{SUPERNODE_INTERNAL} no longer imports the time module as 'time'")
    if _attribute_calls(internal, "time", "sleep") < 2:
        raise AssertionError(f"{SUPERNODE_INTERNAL} no longer sleeps through time.sleep (3 s and 0.5 s)")
    _params(_module(SUPERNODE_MAIN).create_app, ["state_factory", "superexec_auth_secret"])
    if "create_app" not in _module(SUPERNODE_CLI)._start_supernode_http_api.__code__.co_names:  # pylint: disable=W0212
        raise AssertionError(f"{SUPERNODE_CLI} no longer builds its runtime app with flwr.supernode.main.create_app")
    state = _module("flwr.supernode.nodestate.in_memory_nodestate").InMemoryNodeState
    _params(state.create_task, ["self"])
    _params(_module("flwr.supercore.object_store.in_memory_object_store").InMemoryObjectStore.put,
            ["self", "object_id", "object_content"])
    _check_answers()
    utils = _module(INFLATABLE_UTILS)
    for function in (utils.pull_objects, utils.pull_and_inflate_object_from_tree):
        _keyword_params(function, PULL_PARAMETERS)
        if function.__kwdefaults__ is None:
            raise AssertionError(f"{function.__qualname__} has no keyword defaults")


def capped_time(cap: float, wake: Any = None) -> types.ModuleType:
    """A stand-in for the ``time`` module whose ``sleep`` never exceeds ``cap`` seconds.

    With ``wake`` (a :class:`~alphafed_flwr.deploy.longpoll.Pulse`), a sleep under a second
    (the SuperNode's waits for its ClientApp's reply and for the reply's objects) also ends
    when ``wake`` fires, or fired since the previous such sleep ended: the caller looks
    again at once.
    """
    shim = types.ModuleType("time")
    shim.__dict__.update({k: getattr(time, k) for k in dir(time) if not k.startswith("__")})
    seen = [wake.generation if wake is not None else 0]

    def sleep(seconds: float) -> None:
        if wake is None or seconds >= 1:
            time.sleep(min(seconds, cap))
            return
        wake.wait(seen[0], min(seconds, cap))
        seen[0] = wake.generation

    shim.sleep = sleep  # type: ignore[attr-defined]
    return shim


def cap_supernode_sleeps(cap: float, wake: Any = None) -> None:
    """Cap the SuperNode's fixed sleeps (3 s after an empty pull, 0.5 s reply polls) at ``cap``;
    with ``wake``, the reply polls also end when it fires (:func:`capped_time`)."""
    check_flower("supernode")
    _module(SUPERNODE_INTERNAL).time = capped_time(cap, wake)  # type: ignore[attr-defined]


def supernode_long_polls(hold: float) -> Any:
    """Serve the SuperNode's runtime API through :class:`~alphafed_flwr.deploy.longpoll.LongPoll`.

    Held: the executor's ``AcquireTask`` (woken when the node state creates a task) and its
    object pulls (woken when the node stores an object). Returns the pulse that the
    executor's pushes (reply, its objects, task output) fire, for :func:`cap_supernode_sleeps`.
    """
    check_flower("supernode")
    from alphafed_flwr.deploy.longpoll import LongPoll, Pull, Pulse, Rules  # pylint: disable=C0415

    main = _module(SUPERNODE_MAIN)
    create_app = main.create_app
    tasks, objects, replies = Pulse(), Pulse(), Pulse()
    runtime = "/v1/runtime/"
    rules = Rules(
        pulls={runtime + "acquire-task": Pull(_empty("acquire-task"), tasks),
               runtime + "pull-object": Pull(_empty("pull-object"), objects)},
        pushes={runtime + name: (replies,) for name in ("push-messages", "push-object", "push-task-output")},
    )

    def create_long_polling_app(state_factory: Any = None, superexec_auth_secret: bytes | None = None) -> Any:
        app = create_app(state_factory=state_factory, superexec_auth_secret=superexec_auth_secret)
        _require_routes(app, rules)
        if state_factory is not None:
            state = state_factory.state()
            _fire_after(state, "create_task", tasks)
            _fire_after(state.object_store, "put", objects)
        return LongPoll(app, rules, hold)

    main.create_app = create_long_polling_app
    return replies


def _fire_after(owner: Any, name: str, pulse: Any) -> None:
    """Make ``owner.name(...)`` fire ``pulse`` after it returns (this instance only)."""
    method = getattr(owner, name)

    def fired(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        finally:
            pulse.fire()

    setattr(owner, name, fired)


def set_pull_defaults(**defaults: float | None) -> None:
    """Change the retry defaults of Flower's object pulls (``PULL_PARAMETERS`` only)."""
    check_flower("supernode")
    unknown = set(defaults) - set(PULL_PARAMETERS)
    if unknown:
        raise ValueError(f"unknown pull parameters {sorted(unknown)}")
    utils = _module(INFLATABLE_UTILS)
    for function in (utils.pull_objects, utils.pull_and_inflate_object_from_tree):
        function.__kwdefaults__.update(defaults)


SUPERNODE_MAIN = "flwr.supernode.main"
SUPERNODE_CLI = "flwr.supernode.cli.flower_supernode"


# --------------------------------------------------------------------------- long polls
def _no(field: str) -> Callable[[Any], bool]:
    return lambda answer: len(getattr(answer, field)) == 0


#: Pull route name -> (protobuf module, answer class, whether an answer is empty: may wait).
_ANSWERS: dict[str, tuple[str, str, Callable[[Any], bool]]] = {
    "fleet-pull-messages": ("flwr.proto.fleet_pb2", "PullMessagesResponse", _no("messages_list")),
    "pull-messages": ("flwr.proto.runtime_pb2", "PullAppMessagesResponse", _no("messages_list")),
    "pull-object": ("flwr.proto.message_pb2", "PullObjectResponse",
                    lambda answer: answer.object_found and not answer.object_available),
    "acquire-task": ("flwr.proto.runtime_pb2", "AcquireTaskResponse", lambda answer: not answer.HasField("task")),
}


@functools.cache
def _empty(name: str) -> Callable[[bytes], bool]:
    """Whether a serialized answer of the pull route ``name`` (a key of ``_ANSWERS``) is empty."""
    module, answer, empty = _ANSWERS[name]
    cls = getattr(_module(module), answer)

    def is_empty(body: bytes) -> bool:
        message = cls()
        message.ParseFromString(body)
        return bool(empty(message))

    return is_empty


def _check_answers() -> None:
    for module, answer, empty in _ANSWERS.values():
        empty(getattr(_module(module), answer)())  # the fields exist; an empty answer parses


def _require_routes(app: Any, rules: Any) -> None:
    """Fail loudly if the app no longer serves a route the long polls hold or watch."""
    from fastapi.routing import iter_route_contexts  # pylint: disable=import-outside-toplevel

    served = {context.path for context in iter_route_contexts(app.routes)}
    missing = sorted((set(rules.pulls) | set(rules.pushes)) - served)
    if missing:
        raise FlowerCompatError(f"Flower {flower_version()} no longer serves {missing}; the long polls need them")


def superlink_long_polls(app: Any, hold: float) -> Any:
    """Flower's SuperLink app, its pulls held while their answers are empty.

    Held: a SuperNode's message pull (woken by the ServerApp's pushes), the ServerApp's
    reply pull (woken by SuperNodes' pushes), object pulls of either (woken by any push
    of objects or messages), and the SuperExec's ``AcquireTask`` (woken by a run start).
    """
    check_flower("superlink")
    from alphafed_flwr.deploy.longpoll import LongPoll, Pull, Pulse, Rules  # pylint: disable=C0415

    messages, replies, objects, tasks = Pulse(), Pulse(), Pulse(), Pulse()
    fleet, runtime = "/v1/fleet/", "/v1/runtime/"
    rules = Rules(
        pulls={
            fleet + "pull-messages": Pull(_empty("fleet-pull-messages"), messages),
            runtime + "pull-messages": Pull(_empty("pull-messages"), replies),
            fleet + "pull-object": Pull(_empty("pull-object"), objects),
            runtime + "pull-object": Pull(_empty("pull-object"), objects),
            runtime + "acquire-task": Pull(_empty("acquire-task"), tasks),
        },
        pushes={
            runtime + "push-messages": (messages, objects),
            fleet + "push-messages": (replies, objects),
            fleet + "push-object": (objects,),
            runtime + "push-object": (objects,),
            "/v1/control/start-run": (tasks,),
        },
    )
    _require_routes(app, rules)
    return LongPoll(app, rules, hold)


# --------------------------------------------------------------------------- superlink
SUPERLINK_CLI = "flwr.superlink.cli.flower_superlink"
SUPERLINK_MAIN = "flwr.superlink.main"
CONFIG_FIELDS = ("host", "port", "insecure", "ssl_keyfile", "ssl_certfile", "isolation", "certificates")
ROUTE_PREFIXES = {
    "flwr.superlink.routers.fleet.router": "/v1/fleet",
    "flwr.superlink.routers.control.router": "/v1/control",
    "flwr.supercore.routers.runtime.responses": "/v1/runtime",
}


def _check_superlink() -> None:
    cli = _module(SUPERLINK_CLI)
    _params(cli._parse_superlink_lifespan_config, [])  # pylint: disable=protected-access
    if not inspect.isclass(cli.SuperLinkLifespan):
        raise AssertionError("SuperLinkLifespan is not a class")
    _params(_module(SUPERLINK_MAIN).create_app, ["config", "superlink_lifespan_class"])
    fields = set(getattr(_module("flwr.superlink.config_loader").SuperLinkLifespanConfig, "__dataclass_fields__", {}))
    missing = [f for f in CONFIG_FIELDS if f not in fields]
    if missing:
        raise AssertionError(f"SuperLinkLifespanConfig lacks {missing}")
    if _module("flwr.common.constant").ISOLATION_MODE_PROCESS != "process":
        raise AssertionError("the SuperLink's 'process' isolation mode is gone")
    _params(_module("flwr.supercore.http_logging").get_uvicorn_log_config, ["log_level"])
    for module, prefix in ROUTE_PREFIXES.items():
        if _module(module).router.prefix != prefix:
            raise AssertionError(f"{module}'s routes moved from {prefix}")
    _check_answers()
    _params(_module(SUPERLINK_MAIN).get_objectstore_linkstate_factories, ["database", "federation_manager"])
    if "get_objectstore_linkstate_factories" not in _module(SUPERLINK_MAIN).create_app.__code__.co_names:
        raise AssertionError("the SuperLink's create_app no longer builds its state with get_objectstore_linkstate_factories")
    _params(_module(LINKSTATE_FACTORY).LinkStateFactory.__init__,
            ["self", "database", "federation_manager", "objectstore_factory"])
    _check_path_middlewares()
    factory = _module(LINKSTATE_FACTORY)
    if factory.FLWR_IN_MEMORY_DB_NAME != _module("flwr.supercore.constant").FLWR_IN_MEMORY_DB_NAME or (
        "InMemoryLinkState" not in factory.LinkStateFactory.state.__code__.co_names
    ):
        raise AssertionError("LinkStateFactory no longer makes an InMemoryLinkState for ':flwr-in-memory:'")


def keep_superlink_state_in_memory() -> None:
    """Keep the SuperLink's whole state in memory (Flower's ``InMemoryLinkState`` and object
    store), whatever ``--database`` says.

    Flower's SQL state runs several SQLite queries (SQLAlchemy sessions, write transactions)
    for every request: a node's key looked up, the run's status checked, each object's push
    claim deleted, traffic counted. With K=1 split learning on loopback that was about 30%
    of the SuperLink's CPU, and the SuperLink the busiest process. Nothing of it needs to
    outlive the server command: a restarted server starts a new run from its own checkpoint
    (``--out``), registers the nodes' keys again (``--node-public-key``), and a SuperNode it
    no longer knows is refused and restarted by its client command, which then joins anew.
    """
    check_flower("superlink")
    main = _module(SUPERLINK_MAIN)
    factories = main.get_objectstore_linkstate_factories
    if getattr(factories, "_alphafed_in_memory", False):
        return
    in_memory = _module("flwr.supercore.constant").FLWR_IN_MEMORY_DB_NAME

    def state_in_memory(database: str, federation_manager: Any) -> tuple[Any, Any]:  # pylint: disable=W0613
        return factories(in_memory, federation_manager)

    state_in_memory._alphafed_in_memory = True  # type: ignore[attr-defined]
    main.get_objectstore_linkstate_factories = state_in_memory


#: Middlewares of the SuperLink app that act only on paths with these prefixes (their
#: ``dispatch`` passes every other request straight on): name -> (module, prefix).
_PATH_MIDDLEWARES = {
    "ControlSensitiveResponseMiddleware": ("flwr.superlink.routers.control.middlewares", "/v1/control/"),
    "ControlAuthenticationMiddleware": ("flwr.superlink.routers.control.middlewares", "/v1/control/"),
    "ControlLicenseMiddleware": ("flwr.superlink.routers.control.middlewares", "/v1/control/"),
    "ControlEventLogMiddleware": ("flwr.superlink.routers.control.middlewares", "/v1/control/"),
    "NodeAuthMiddleware": ("flwr.superlink.routers.fleet.node_auth", "/v1/fleet/"),
    "FleetEventLogMiddleware": ("flwr.superlink.routers.fleet.middlewares", "/v1/fleet/"),
}
#: The only test each of them makes before it acts (the first condition of its ``dispatch``).
_PATH_TESTS = {
    "ControlSensitiveResponseMiddleware": (
        "response = await call_next(request)\n        if _is_control_sensitive_route(request):"
    ),
    "ControlAuthenticationMiddleware": "if not _is_control_path(request.url.path) or _is_control_auth_route(request):",
    "ControlLicenseMiddleware": "if self._license_plugin is None or not _is_control_path(request.url.path):",
    "ControlEventLogMiddleware": "if not _is_control_path(request.url.path) or _is_control_sensitive_route(",
    "NodeAuthMiddleware": 'if request.url.path.startswith("/v1/fleet/") and isinstance(',
    "FleetEventLogMiddleware": 'if not request.url.path.startswith("/v1/fleet/"):',
}


def _check_path_middlewares() -> None:
    """Those of the SuperLink's middlewares that act on some routes only are where
    ``_PATH_MIDDLEWARES`` says and test the path first (the Control ones: ``/v1/control/``)."""
    main = _module(SUPERLINK_MAIN)
    if "_get_middleware" not in main.create_app.__code__.co_names:
        raise AssertionError("the SuperLink's create_app no longer takes its middlewares from _get_middleware")
    for middleware in main._get_middleware():  # pylint: disable=protected-access
        name = middleware.cls.__name__
        if name not in _PATH_MIDDLEWARES:
            continue
        module, prefix = _PATH_MIDDLEWARES[name]
        if middleware.cls.__module__ != module or middleware.args:
            raise AssertionError(f"{name} moved from {module} to {middleware.cls.__module__} or takes arguments")
        if not inspect.getsource(middleware.cls.dispatch).split('"""', 2)[-1].strip().startswith(_PATH_TESTS[name]):
            raise AssertionError(f"{name}.dispatch no longer starts with its path test")
        if prefix == "/v1/control/":
            _check_control_paths(_module(module))


def _check_control_paths(control: types.ModuleType) -> None:
    is_control = control._is_control_path  # pylint: disable=protected-access
    if is_control("/v1/fleet/x") or not is_control("/v1/control/x"):
        raise AssertionError("_is_control_path no longer means the /v1/control/ routes")
    sensitive = {path for _, path in control.CONTROL_SENSITIVE_ROUTE_KEYS | control.CONTROL_AUTH_ROUTE_KEYS}
    if not all(path.startswith("/v1/control/") for path in sensitive):
        raise AssertionError("a sensitive Control route is outside /v1/control/")


class PathMiddleware:
    """ASGI wrapper: runs ``middleware`` only on paths under ``prefix``; every other request
    goes straight to the next app, as ``middleware`` itself would pass it on."""

    def __init__(self, app: Any, middleware: type, prefix: str, **options: Any) -> None:
        self.app, self.prefix = app, prefix
        self.inner = middleware(app, **options)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not str(scope.get("path", "")).startswith(self.prefix):
            await self.app(scope, receive, send)
        else:
            await self.inner(scope, receive, send)


def skip_idle_superlink_middlewares() -> None:
    """Run each SuperLink middleware only on the routes it acts on.

    Flower's SuperLink passes every request through eight middlewares, most of them
    Starlette ``BaseHTTPMiddleware`` classes (a task and two memory streams per request each). Four
    act only on Control API routes, two only on Fleet routes; on any other path their
    ``dispatch`` calls the next app at once. :class:`PathMiddleware` skips them there: a Fleet
    request then passes four, a runtime request two. Responses are unchanged.
    """
    check_flower("superlink")
    main = _module(SUPERLINK_MAIN)
    original = main._get_middleware  # pylint: disable=protected-access
    if getattr(original, "_alphafed_paths", False):
        return
    middleware_class = _module("starlette.middleware").Middleware

    def path_middlewares() -> list[Any]:
        wrapped = []
        for middleware in original():  # checked: a listed one is where _PATH_MIDDLEWARES says
            name = middleware.cls.__name__
            if name in _PATH_MIDDLEWARES:
                wrapped.append(middleware_class(PathMiddleware, middleware=middleware.cls,
                                                prefix=_PATH_MIDDLEWARES[name][1], **middleware.kwargs))
            else:
                wrapped.append(middleware)
        return wrapped

    path_middlewares._alphafed_paths = True  # type: ignore[attr-defined]
    main._get_middleware = path_middlewares  # pylint: disable=protected-access


def superlink_lifespan_config() -> Any:
    """Flower's SuperLink configuration, parsed from ``sys.argv`` as ``flower-superlink`` does."""
    check_flower("superlink")
    return _module(SUPERLINK_CLI)._parse_superlink_lifespan_config()  # pylint: disable=protected-access


def superlink_app(config: Any) -> Any:
    """Flower's SuperLink FastAPI app (Fleet, Control and runtime APIs) for ``config``."""
    check_flower("superlink")
    return _module(SUPERLINK_MAIN).create_app(config, _module(SUPERLINK_CLI).SuperLinkLifespan)


def uvicorn_log_config() -> dict[str, Any]:
    """The uvicorn logging configuration ``flower-superlink`` uses."""
    from flwr.supercore.logger import console_handler  # pylint: disable=import-outside-toplevel

    return dict(_module("flwr.supercore.http_logging").get_uvicorn_log_config(console_handler.level))


# --------------------------------------------------------------------------- executor
RUN_CLIENTAPP = "flwr.supernode.runtime.run_clientapp"


def _check_executor() -> None:
    run = _module(RUN_CLIENTAPP)
    _params(run.pull_task_input, ["client"])
    _params(run.push_message, ["client", "message", "context"])
    _params(run.push_task_output, ["client", "context", "sub_status", "details"])


def clientapp_task_io() -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
    """``run_clientapp``'s ``pull_task_input``, ``push_message`` and ``push_task_output``."""
    check_flower("executor")
    run = _module(RUN_CLIENTAPP)
    return run.pull_task_input, run.push_message, run.push_task_output


# --------------------------------------------------------------------------- auth
FLEET_HTTP_CONNECTION = "flwr.supernode.fleet_http_connection"
_AUTH_CODES = ("FLEET_SUPERNODE_REGISTRATION_DISABLED", "FLEET_NODE_ACTIVATION_FAILED")


def _check_auth() -> None:
    source = inspect.getsource(_module(FLEET_HTTP_CONNECTION))
    if '"[code: {flower_error.code}] {flower_error.message}"' not in source.replace("f\"", "\""):
        raise AssertionError(f"{FLEET_HTTP_CONNECTION} no longer logs refusals as '[code: N] message'")
    auth_failure_pattern()


def auth_failure_pattern() -> re.Pattern[str]:
    """Matches the SuperNode's log line when the SuperLink refuses its key.

    Built from Flower's own error codes and messages (``ApiErrorCode``, the error catalog),
    so it follows them; :func:`check_flower` checks the line format.
    """
    errors = _module("flwr.supercore.error.base")
    catalog = _module("flwr.supercore.error.catalog")
    codes = [getattr(errors.ApiErrorCode, name) for name in _AUTH_CODES]
    specs = catalog.API_ERROR_MAP
    messages = [specs[code].public_message for code in codes]
    parts = [re.escape(f"[code: {int(code)}]") for code in codes] + [re.escape(m) for m in messages]
    return re.compile("|".join(parts))


# --------------------------------------------------------------------------- simulation
VCE_API = "flwr.server.superlink.fleet.vce.vce_api"
LINKSTATE_FACTORY = "flwr.server.superlink.linkstate.linkstate_factory"
INMEMORY_LINKSTATE = "flwr.server.superlink.linkstate.in_memory_linkstate"
INMEMORY_GRID = "flwr.superlink.grid.inmemory_grid"


def _check_simulation() -> None:
    vce = _module(VCE_API)
    _params(vce.add_messages_to_queue, ["state", "queue", "nodes_mapping", "f_stop"])
    if "add_messages_to_queue" not in vce.run_api.__code__.co_names:
        raise AssertionError("vce_api.run_api no longer calls add_messages_to_queue")
    # The wake-up: the ServerApp's grid and the engine share one link state (the factory
    # caches it), and the grid stores each message through the state's store_message_ins.
    if "state_instance" not in _module(LINKSTATE_FACTORY).LinkStateFactory.state.__code__.co_names:
        raise AssertionError("LinkStateFactory.state no longer returns one cached state")
    push = _module(INMEMORY_GRID).InMemoryGrid.push_messages
    if "store_message_ins" not in push.__code__.co_names:
        raise AssertionError("InMemoryGrid.push_messages no longer stores through state.store_message_ins")
    _params(_module(INMEMORY_LINKSTATE).InMemoryLinkState.store_message_ins, ["self", "message"])
    # The reply wake-up: the engine stores each reply through the state's store_message_res,
    # and the grid keeps that state as ``state``.
    if "store_message_res" not in vce.put_message_into_state.__code__.co_names:
        raise AssertionError("vce_api.put_message_into_state no longer stores through state.store_message_res")
    if "state" not in _module(INMEMORY_GRID).InMemoryGrid.__init__.__code__.co_names:
        raise AssertionError("InMemoryGrid no longer keeps its link state as .state")
    _params(_module(INMEMORY_LINKSTATE).InMemoryLinkState.store_message_res, ["self", "message"])


def set_simulation_poll(interval: float) -> None:
    """Make the simulation engine hand each message to its actors as soon as it is pushed.

    Flower's dispatcher (``vce_api.add_messages_to_queue``) asks the link state for new
    messages every 0.1 s, so a message waits 50 ms on average before a virtual client
    picks it up: 41 such waits make a K=1 split-learning epoch. The replacement sleeps on
    an event that the link state's ``store_message_ins`` sets (the ServerApp's grid
    stores every message through it), rescans at once after it found a message, and
    otherwise looks every ``interval`` seconds as before. It never spins: a faster
    fixed poll (a link-state scan per node, hundreds of times a second) takes CPU from
    the models on a small machine and made epochs slower (``bench/vertical_parties.py
    --speed``). Messages are taken in the same order, one per node per scan, as Flower does.

    Parameters
    ----------
    interval : float
        Seconds between scans when nothing was pushed (Flower: 0.1); also the longest a
        stop request waits.
    """
    check_flower("simulation")
    if interval <= 0:
        raise ValueError(f"the simulation poll interval must be > 0 s, got {interval}")
    vce = _module(VCE_API)

    def add_messages_to_queue(state: Any, queue: Any, nodes_mapping: Any, f_stop: threading.Event) -> None:
        pushed = _wake_on_push(state)
        while not f_stop.is_set():
            pushed.clear()  # before the scan: a push during it makes the next wait return at once
            found = False
            for node_id in nodes_mapping.keys():
                for msg in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(msg)
                    found = True
            if not found:
                pushed.wait(interval)

    vce.add_messages_to_queue = add_messages_to_queue


def reply_event(grid: Any) -> threading.Event | None:
    """An event set after every reply the simulation engine stores for ``grid`` (Flower's
    ``InMemoryGrid``), so that a pull loop waits on it instead of sleeping; ``None`` for
    any other grid (deployment)."""
    if not isinstance(grid, _module(INMEMORY_GRID).InMemoryGrid):
        return None
    check_flower("simulation")
    return _wake_on(grid.state, "store_message_res", "_alphafed_replied")


def _wake_on_push(state: Any) -> threading.Event:
    """An event set after every message stored into ``state`` (one per state, made once)."""
    return _wake_on(state, "store_message_ins", "_alphafed_pushed")


def _wake_on(state: Any, method: str, attribute: str) -> threading.Event:
    """An event set after every call of ``state.<method>`` (one per state and method, kept
    as ``state.<attribute>``)."""
    event = getattr(state, attribute, None)
    if event is None:
        event = threading.Event()
        store = getattr(state, method)

        def stored(message: Any) -> Any:
            try:
                return store(message)
            finally:
                event.set()

        setattr(state, method, stored)
        setattr(state, attribute, event)
    return event


# --------------------------------------------------------------------------- strategies
STRATEGY_STATE = ("current_arrays", "m_t", "v_t", "momentum_vector")
_STATEFUL = {
    "FedAdam": ("current_arrays", "m_t", "v_t"),
    "FedYogi": ("current_arrays", "m_t", "v_t"),
    "FedAdagrad": ("current_arrays", "m_t", "v_t"),
    "FedAvgM": ("current_arrays", "momentum_vector"),
}


def _check_strategies() -> None:
    strategy = _module("flwr.serverapp.strategy")
    for name, attributes in _STATEFUL.items():
        instance = getattr(strategy, name)()
        missing = [a for a in attributes if not hasattr(instance, a)]
        if missing:
            raise AssertionError(f"{name}() has no {missing}")


def get_strategy_state(strategy: Any) -> dict[str, dict[str, np.ndarray]]:
    """The server-side state of a Flower strategy as named numpy arrays.

    Parameters
    ----------
    strategy : Any
        A Flower strategy (``FedAdam``, ``FedAvgM``, ...; others have no such state).

    Returns
    -------
    dict[str, dict[str, np.ndarray]]
        For each of ``STRATEGY_STATE`` the strategy holds (and is not ``None``), its arrays
        by key (a list is keyed ``"0"``, ``"1"``, ...).
    """
    check_flower("strategies")
    state: dict[str, dict[str, np.ndarray]] = {}
    for attribute in STRATEGY_STATE:
        value = getattr(strategy, attribute, None)
        if value is None:
            continue
        if isinstance(value, Mapping):
            state[attribute] = {str(k): _numpy(v) for k, v in value.items()}
        elif isinstance(value, list):
            state[attribute] = {str(i): np.asarray(v) for i, v in enumerate(value)}
        else:
            raise TypeError(f"{type(strategy).__name__}.{attribute} is a {type(value).__name__}")
    return state


def _numpy(value: Any) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def set_strategy_state(
    strategy: Any, state: Mapping[str, Mapping[str, np.ndarray]], reset_absent: bool = False
) -> None:
    """Restore what :func:`get_strategy_state` returned, in the types the strategy uses.

    ``current_arrays`` becomes an ``ArrayRecord`` where the strategy keeps one (FedAvgM),
    else a dict of arrays; ``momentum_vector`` a list; ``m_t``/``v_t`` dicts. With
    ``reset_absent``, state attributes the strategy has but ``state`` lacks become ``None``
    (what they were when :func:`get_strategy_state` skipped them).
    """
    check_flower("strategies")
    from flwr.app import Array, ArrayRecord  # pylint: disable=import-outside-toplevel

    unknown = set(state) - set(STRATEGY_STATE)
    if unknown:
        raise ValueError(f"unknown strategy state {sorted(unknown)}")
    for attribute, arrays in state.items():
        if not hasattr(strategy, attribute):
            raise ValueError(f"{type(strategy).__name__} keeps no '{attribute}'")
        if attribute == "momentum_vector":
            value: Any = [np.asarray(arrays[str(i)]) for i in range(len(arrays))]
        elif attribute == "current_arrays" and not _keeps_dict(strategy):
            value = ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in arrays.items()})
        else:
            value = {k: np.asarray(v) for k, v in arrays.items()}
        setattr(strategy, attribute, value)
    if reset_absent:
        for attribute in STRATEGY_STATE:
            if attribute not in state and hasattr(strategy, attribute):
                setattr(strategy, attribute, None)


def _keeps_dict(strategy: Any) -> bool:
    fedopt = _module("flwr.serverapp.strategy.fedopt").FedOpt
    return isinstance(strategy, fedopt)


def _check_privacy() -> None:
    pieces = privacy_pieces(checked=False)
    if "config" not in inspect.signature(pieces.RdpAccountant.__init__).parameters:
        raise TypeError("RdpAccountant takes no config")
    for name in ("state_dict", "load_state_dict", "get_privacy_spent", "compose"):
        getattr(pieces.RdpAccountant, name)
    if not issubclass(pieces.PrivacyBudgetExhausted, Exception):
        raise TypeError("PrivacyBudgetExhausted is not an exception")
    for name in ("fitins_to_recorddict", "recorddict_to_fitins", "fitres_to_recorddict",
                 "recorddict_to_fitres"):
        getattr(pieces.recorddict_compat, name)
    for name in ("get_properties", "get_parameters", "fit", "evaluate", "reconnect"):
        getattr(pieces.ClientProxy, name)
    _module("flwr.supercore.inflatable.inflatable_object").get_all_nested_objects  # message_bytes
    if (pieces.MAIN_CONFIGS_RECORD, pieces.MAIN_PARAMS_RECORD, pieces.CURRENT_ROUND) != (
        "config", "parameters", "current_round"
    ):
        raise ValueError("the default workflows' record keys changed")


def message_bytes(message: Any) -> int:
    """Serialized size of a Flower message (all its objects, as the transport sends them)."""
    check_flower("privacy")
    nested = _module("flwr.supercore.inflatable.inflatable_object").get_all_nested_objects
    return sum(len(obj.deflate()) for obj in nested(message).values())


def privacy_pieces(checked: bool = True) -> types.SimpleNamespace:
    """Private Flower names of the DP accounting and the SecAgg+ bridge (group ``privacy``)."""
    if checked:
        check_flower("privacy")
    constant = _module("flwr.server.workflow.constant")
    return types.SimpleNamespace(
        RdpAccountant=_module("flwr.supercore.privacy_accounting.rdp_accountant").RdpAccountant,
        PrivacyBudgetExhausted=_module("flwr.serverapp.exception").PrivacyBudgetExhausted,
        ClientProxy=_module("flwr.server.client_proxy").ClientProxy,
        recorddict_compat=_module("flwr.compat.common.recorddict_compat"),
        MAIN_CONFIGS_RECORD=constant.MAIN_CONFIGS_RECORD,
        MAIN_PARAMS_RECORD=constant.MAIN_PARAMS_RECORD,
        CURRENT_ROUND=constant.Key.CURRENT_ROUND,
    )


# --------------------------------------------------------------------------- checks
_CHECKS: dict[str, Callable[[], None]] = {
    "supernode": _check_supernode,
    "superlink": _check_superlink,
    "executor": _check_executor,
    "auth": _check_auth,
    "simulation": _check_simulation,
    "strategies": _check_strategies,
    "privacy": _check_privacy,
}
_passed: set[str] = set()


def check_flower(*groups: str) -> str:
    """Check the private Flower pieces of ``groups`` (all if none); return a one-line report.

    Raises
    ------
    FlowerCompatError
        Naming each failed check, the installed Flower and the supported versions.
    """
    wanted = groups or GROUPS
    failures = []
    for group in wanted:
        if group in _passed:
            continue
        try:
            _CHECKS[group]()
            _passed.add(group)
        except KeyError:
            raise ValueError(f"unknown compatibility group '{group}' (one of {GROUPS})") from None
        except Exception as exc:  # noqa: BLE001 - any failure to find a piece is a mismatch
            failures.append(f"{group}: {exc}")
    version = flower_version()
    if failures:
        raise FlowerCompatError(
            f"Flower {version} lacks private pieces alphafed-flwr patches ("
            + "; ".join(failures)
            + f"). Supported Flower versions: {', '.join(v + '.x' for v in SUPPORTED_VERSIONS)}; "
            f"install one with: pip install 'flwr[simulation]>={SUPPORTED_VERSIONS[0]},<1.43'"
        )
    supported = ".".join(version.split(".")[:2]) in SUPPORTED_VERSIONS
    note = "" if supported else f" (not a tested version: {', '.join(SUPPORTED_VERSIONS)})"
    return f"Flower {version}: private pieces checked ({', '.join(wanted)}){note}"
