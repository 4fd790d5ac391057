"""The private Flower pieces in alphafed_flwr.compat: checked, and each patch takes effect."""

from __future__ import annotations

import importlib
import queue
import threading
import time
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from alphafed_flwr import compat


@pytest.fixture
def restore_flower():  # noqa: ANN201 - undo the patches after each test
    internal = importlib.import_module(compat.SUPERNODE_INTERNAL)
    utils = importlib.import_module(compat.INFLATABLE_UTILS)
    vce = importlib.import_module(compat.VCE_API)
    supernode_main = importlib.import_module(compat.SUPERNODE_MAIN)
    pulls = {f: dict(f.__kwdefaults__) for f in (utils.pull_objects, utils.pull_and_inflate_object_from_tree)}
    saved = (internal.time, vce.add_messages_to_queue, supernode_main.create_app)
    yield
    internal.time, vce.add_messages_to_queue, supernode_main.create_app = saved
    for function, defaults in pulls.items():
        function.__kwdefaults__ = defaults


def test_installed_flower_passes_every_check() -> None:
    report = compat.check_flower()
    assert report.startswith(f"Flower {compat.flower_version()}: private pieces checked")
    assert ".".join(compat.flower_version().split(".")[:2]) in compat.SUPPORTED_VERSIONS
    assert "not a tested version" not in report


def test_a_changed_flower_fails_loudly_naming_the_supported_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    cli = importlib.import_module(compat.SUPERLINK_CLI)
    monkeypatch.setattr(compat, "_passed", set())
    monkeypatch.delattr(cli, "_parse_superlink_lifespan_config")
    with pytest.raises(compat.FlowerCompatError, match=r"superlink: .*Supported Flower versions: 1\.41\.x, 1\.42\.x"):
        compat.check_flower("superlink")
    with pytest.raises(compat.FlowerCompatError):  # the guarded SuperLink never starts unguarded
        compat.superlink_lifespan_config()


def test_a_renamed_pull_parameter_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    utils = importlib.import_module(compat.INFLATABLE_UTILS)

    def pull_objects(object_ids, pull_object_fn, *, max_time=None, max_tries_per_object=None, initial_delay=1.0, backoff_cap=1.0):  # noqa: ANN001, ANN202
        return {}

    monkeypatch.setattr(compat, "_passed", set())
    monkeypatch.setattr(utils, "pull_objects", pull_objects)
    with pytest.raises(compat.FlowerCompatError, match="initial_backoff"):
        compat.set_pull_defaults(initial_backoff=0.01)


def test_supernode_sleeps_are_capped(monkeypatch: pytest.MonkeyPatch, restore_flower: None) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    compat.cap_supernode_sleeps(0.05)
    internal = importlib.import_module(compat.SUPERNODE_INTERNAL)
    internal.time.sleep(3)  # what start_client_internal calls after an empty pull
    internal.time.sleep(0.01)
    assert slept == [0.05, 0.01]


class _RecordingPulse:
    """Stands in for deploy.longpoll.Pulse: records waits, never blocks."""

    def __init__(self) -> None:
        self.generation = 0
        self.waits: list[tuple[int, float]] = []

    def wait(self, seen: int, timeout: float) -> bool:
        self.waits.append((seen, timeout))
        return self.generation != seen


def test_supernode_reply_waits_end_when_the_reply_arrives(restore_flower: None) -> None:
    pulse = _RecordingPulse()
    compat.cap_supernode_sleeps(0.05, wake=pulse)
    internal = importlib.import_module(compat.SUPERNODE_INTERNAL)
    internal.time.sleep(0.5)  # start_client_internal's wait for the ClientApp's reply
    pulse.generation = 1  # the executor pushed its reply
    internal.time.sleep(0.5)
    internal.time.sleep(0.5)
    # each wait is bounded by the cap and ends on any push since the previous wait ended
    assert pulse.waits == [(0, 0.05), (0, 0.05), (1, 0.05)]


def test_supernode_runtime_api_holds_task_pulls_until_a_task_exists(restore_flower: None) -> None:
    from flwr.app import ConfigRecord
    from flwr.supercore.constant import TaskType
    from flwr.supercore.inflatable.inflatable_object import get_object_tree
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supernode.nodestate import NodeStateFactory

    from alphafed_flwr.deploy.longpoll import LongPoll

    compat.supernode_long_polls(hold=1.0)
    factory = NodeStateFactory(objectstore_factory=ObjectStoreFactory())
    app = importlib.import_module(compat.SUPERNODE_MAIN).create_app(state_factory=factory)
    assert isinstance(app, LongPoll)
    tasks = app.rules.pulls["/v1/runtime/acquire-task"].pulse
    objects = app.rules.pulls["/v1/runtime/pull-object"].pulse
    before = (tasks.generation, objects.generation)
    factory.state().create_task(task_type=TaskType.CLIENT_APP, run_id=1, fab_hash="f")
    record = ConfigRecord({"x": 1})
    store = factory.state().object_store
    store.preregister(1, get_object_tree(record))
    store.put(record.object_id, record.deflate())
    assert (tasks.generation, objects.generation) == (before[0] + 1, before[1] + 1)


@pytest.fixture
def superlink_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Flower's SuperLink command line in ``sys.argv``, its database a file under ``tmp_path`` (returned)."""
    database = tmp_path / "db.sqlite"
    monkeypatch.setattr("sys.argv", ["flower-superlink", "--insecure", "--isolation", "process",
                                     "--database", str(database)])
    return database


@pytest.mark.usefixtures("superlink_argv")
def test_superlink_long_polls_wrap_flowers_app() -> None:
    from alphafed_flwr.deploy.longpoll import LongPoll, Rules

    flower_app = compat.superlink_app(compat.superlink_lifespan_config())
    app = compat.superlink_long_polls(flower_app, hold=1.0)
    assert isinstance(app, LongPoll) and app.app is flower_app
    assert {"/v1/fleet/pull-messages", "/v1/runtime/pull-messages"} <= set(app.rules.pulls)
    with pytest.raises(compat.FlowerCompatError, match="no longer serves"):
        compat._require_routes(flower_app, Rules(pulls={"/v1/fleet/gone": app.rules.pulls["/v1/fleet/pull-messages"]}))


def test_superlink_keeps_its_whole_state_in_memory(superlink_argv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    main = importlib.import_module(compat.SUPERLINK_MAIN)
    monkeypatch.setattr(main, "get_objectstore_linkstate_factories", main.get_objectstore_linkstate_factories)
    compat.keep_superlink_state_in_memory()
    compat.keep_superlink_state_in_memory()  # a second call does not wrap twice
    state = compat.superlink_app(compat.superlink_lifespan_config()).state.linkstate_factory.state()
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
    from flwr.supercore.object_store.in_memory_object_store import InMemoryObjectStore

    assert isinstance(state, InMemoryLinkState) and isinstance(state.object_store, InMemoryObjectStore)
    assert not superlink_argv.exists()


def test_empty_pull_answers_are_told_from_full_ones() -> None:
    from flwr.proto.message_pb2 import PullObjectResponse
    from flwr.proto.runtime_pb2 import AcquireTaskResponse

    waiting = PullObjectResponse(object_found=True, object_available=False).SerializeToString()
    there = PullObjectResponse(object_found=True, object_available=True, object_content=b"x").SerializeToString()
    assert compat._empty("pull-object")(waiting) and not compat._empty("pull-object")(there)
    assert not compat._empty("pull-object")(b"")  # not found at all: answered at once
    assert compat._empty("acquire-task")(AcquireTaskResponse().SerializeToString())


class _RecordingEvent(threading.Event):
    waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        _RecordingEvent.waits.append(timeout)
        return super().wait(0)


def test_object_pull_backoff_defaults_take_effect(monkeypatch: pytest.MonkeyPatch, restore_flower: None) -> None:
    utils = importlib.import_module(compat.INFLATABLE_UTILS)
    ObjectUnavailableError = utils.ObjectUnavailableError

    compat.set_pull_defaults(initial_backoff=0.01, backoff_cap=0.015, max_tries_per_object=None)
    monkeypatch.setattr(utils, "threading", types.SimpleNamespace(Event=_RecordingEvent, Lock=threading.Lock))
    monkeypatch.setattr(utils.random, "uniform", lambda a, b: 0.0)
    _RecordingEvent.waits = []
    failures = iter(range(3))

    def pull(object_id: str) -> bytes:
        if next(failures, None) is not None:
            raise ObjectUnavailableError(object_id)
        return b"x"

    assert utils.pull_objects(["a"], pull) == {"a": b"x"}
    assert _RecordingEvent.waits == [0.01, 0.015, 0.015]
    # the tree variant passes its own defaults down explicitly: patched too
    seen: dict[str, object] = {}
    monkeypatch.setattr(utils, "pull_objects", lambda ids, fn, **kw: seen.update(kw) or {})
    with pytest.raises(Exception):  # noqa: B017 - nothing to inflate; only the forwarded defaults matter
        utils.pull_and_inflate_object_from_tree(_Tree(), pull, lambda _: None)
    assert seen["initial_backoff"] == 0.01 and seen["backoff_cap"] == 0.015


class _Tree:
    object_id = "a"
    children: list[object] = []


def test_object_pulls_bounded_in_time(restore_flower: None) -> None:
    utils = importlib.import_module(compat.INFLATABLE_UTILS)
    ObjectUnavailableError = utils.ObjectUnavailableError

    compat.set_pull_defaults(max_time=0.0)

    def never(object_id: str) -> bytes:
        raise ObjectUnavailableError(object_id)

    with pytest.raises(utils.ObjectPullError):  # Flower's default would retry for 2 hours
        utils.pull_objects(["a"], never)


class _LinkState:
    """The two link-state methods the simulation's dispatcher and the grid use."""

    def __init__(self) -> None:
        self.messages: dict[int, list[str]] = {}

    def store_message_ins(self, message: tuple[int, str]) -> str:
        node_id, text = message
        self.messages.setdefault(node_id, []).append(text)
        return text

    def get_message_ins(self, node_id: int, limit: int) -> list[str]:
        taken, self.messages[node_id] = self.messages.get(node_id, [])[:limit], self.messages.get(node_id, [])[limit:]
        return taken


def test_simulation_dispatcher_wakes_on_push(restore_flower: None) -> None:
    vce = importlib.import_module(compat.VCE_API)
    compat.set_simulation_poll(600.0)  # the fallback scan would come after 10 minutes
    state, box, stop = _LinkState(), queue.Queue(), threading.Event()
    state.store_message_ins((7, "early-1"))
    state.store_message_ins((7, "early-2"))
    dispatcher = threading.Thread(target=vce.add_messages_to_queue, args=(state, box, {7: 0, 8: 1}, stop), daemon=True)
    dispatcher.start()
    # two queued for one node: both taken, one per scan, without waiting for the fallback
    assert [box.get(timeout=60), box.get(timeout=60)] == ["early-1", "early-2"]
    state.store_message_ins((8, "pushed"))  # the dispatcher is asleep now: the push wakes it
    assert box.get(timeout=60) == "pushed"
    stop.set()
    state.store_message_ins((8, "wake to stop"))
    dispatcher.join(60)
    assert not dispatcher.is_alive()
    assert "add_messages_to_queue" in vce.run_api.__code__.co_names  # run_api looks it up at call time


def test_replies_stored_for_the_in_memory_grid_set_its_reply_event() -> None:
    grid_class = importlib.import_module(compat.INMEMORY_GRID).InMemoryGrid
    stored: list[str] = []
    grid = grid_class.__new__(grid_class)  # only its link state matters here
    grid.state = SimpleNamespace(store_message_res=stored.append)
    event = compat.reply_event(grid)
    assert event is not None and not event.is_set()
    grid.state.store_message_res("reply")
    assert stored == ["reply"] and event.is_set()
    assert compat.reply_event(grid) is event  # one event per state, wrapped once
    assert compat.reply_event(SimpleNamespace(state=grid.state)) is None  # any other grid: poll


def test_simulation_dispatcher_scans_every_interval_without_a_push(restore_flower: None) -> None:
    vce = importlib.import_module(compat.VCE_API)
    compat.set_simulation_poll(0.02)
    state, box, stop = _LinkState(), queue.Queue(), _RecordingEvent()
    _RecordingEvent.waits = []
    scans = iter(range(2))  # the third scan asks to stop

    def get_message_ins(node_id: int, limit: int) -> list[str]:
        if next(scans, None) is None:
            stop.set()
        return []

    state.get_message_ins = get_message_ins  # type: ignore[method-assign]
    pushed = compat._wake_on_push(state)  # pylint: disable=protected-access
    recorded: list[float | None] = []
    pushed.wait = lambda timeout=None: recorded.append(timeout) or False  # type: ignore[method-assign]
    vce.add_messages_to_queue(state, box, {7: 0}, stop)
    assert recorded == [0.02, 0.02, 0.02] and box.empty()
    assert compat._wake_on_push(state) is pushed  # one event per state  # pylint: disable=protected-access
    with pytest.raises(ValueError, match="> 0"):
        compat.set_simulation_poll(0)


def test_a_grid_not_storing_through_the_link_state_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    grid = importlib.import_module(compat.INMEMORY_GRID).InMemoryGrid

    def push_messages(self, messages):  # noqa: ANN001, ANN202 - a Flower that stores elsewhere
        return [self.state.store_message(m) for m in messages]

    monkeypatch.setattr(compat, "_passed", set())
    monkeypatch.setattr(grid, "push_messages", push_messages)
    with pytest.raises(compat.FlowerCompatError, match="store_message_ins"):
        compat.set_simulation_poll(0.1)


def test_auth_failure_lines_match_what_flower_logs() -> None:
    from flwr.supercore.error import ApiErrorCode
    from flwr.supercore.error.catalog import API_ERROR_MAP

    pattern = compat.auth_failure_pattern()
    for code in (ApiErrorCode.FLEET_SUPERNODE_REGISTRATION_DISABLED, ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED):
        # the line fleet_http_connection logs when the SuperLink refuses the node
        assert pattern.search(f"Failed to initialize the connection.\n[code: {int(code)}] {API_ERROR_MAP[code].public_message}")
    assert not pattern.search("[code: 2008] Failed to get run.")
    assert not pattern.search("Connection successful")


def test_executor_uses_flowers_task_io() -> None:
    run = importlib.import_module(compat.RUN_CLIENTAPP)
    assert compat.clientapp_task_io() == (run.pull_task_input, run.push_message, run.push_task_output)


@pytest.mark.usefixtures("superlink_argv")
def test_superlink_app_comes_from_flower() -> None:
    config = compat.superlink_lifespan_config()
    assert (config.isolation, config.insecure) == ("process", True)
    app = compat.superlink_app(config)
    from fastapi.routing import iter_route_contexts

    paths = {context.path for context in iter_route_contexts(app.routes)}
    assert {p.split("/")[2] for p in paths if p.startswith("/v1/")} >= {"fleet", "control", "runtime"}
    assert compat.uvicorn_log_config()["version"] == 1


@pytest.mark.usefixtures("superlink_argv")
def test_superlink_middlewares_run_only_on_the_routes_they_act_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient
    from flwr.proto.fleet_pb2 import PullMessagesRequest

    main = importlib.import_module(compat.SUPERLINK_MAIN)
    monkeypatch.setattr(main, "_get_middleware", main._get_middleware)
    compat.skip_idle_superlink_middlewares()
    compat.skip_idle_superlink_middlewares()  # a second call does not wrap twice
    wrapped = {m.kwargs["middleware"].__name__: m.kwargs["prefix"] for m in main._get_middleware()
               if m.cls is compat.PathMiddleware}
    assert wrapped == {name: prefix for name, (_, prefix) in compat._PATH_MIDDLEWARES.items()}
    client = TestClient(compat.superlink_app(compat.superlink_lifespan_config()))
    unsigned = client.post("/v1/fleet/pull-messages", content=PullMessagesRequest().SerializeToString(),
                           headers={"content-type": "application/protobuf"})
    assert unsigned.status_code == 401  # the node authentication still guards the Fleet API
    sensitive = client.post("/v1/control/get-login-details", content=b"",
                            headers={"content-type": "application/protobuf"})
    assert sensitive.headers["cache-control"] == "no-store"  # and Control's middlewares their routes


def test_path_middleware_passes_other_paths_straight_on() -> None:
    seen: list[str] = []

    async def app(scope, receive, send) -> None:  # noqa: ANN001
        seen.append("app " + scope["path"])

    class Middleware:
        def __init__(self, inner, flag: int) -> None:  # noqa: ANN001
            self.inner, self.flag = inner, flag

        async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
            seen.append(f"middleware {self.flag} " + scope["path"])
            await self.inner(scope, receive, send)

    import asyncio

    wrapped = compat.PathMiddleware(app, middleware=Middleware, prefix="/v1/control/", flag=7)
    for path in ("/v1/control/x", "/v1/fleet/x"):
        asyncio.run(wrapped({"type": "http", "path": path}, None, None))
    assert seen == ["middleware 7 /v1/control/x", "app /v1/control/x", "app /v1/fleet/x"]


def test_a_middleware_acting_on_every_path_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    control = importlib.import_module("flwr.superlink.routers.control.middlewares")

    async def dispatch(self, request, call_next):  # noqa: ANN001, ANN202
        """Checks every request."""
        return await call_next(request)

    monkeypatch.setattr(compat, "_passed", set())
    monkeypatch.setattr(control.ControlLicenseMiddleware, "dispatch", dispatch)
    with pytest.raises(compat.FlowerCompatError, match="ControlLicenseMiddleware.dispatch"):
        compat.skip_idle_superlink_middlewares()


@pytest.mark.parametrize("name", ["FedAdam", "FedYogi", "FedAdagrad", "FedAvgM"])
def test_strategy_state_round_trip(name: str) -> None:
    from flwr.app import Array, ArrayRecord
    from flwr.serverapp import strategy as flower_strategies

    source = getattr(flower_strategies, name)()
    weights = {"w": np.arange(4, dtype=np.float32), "b": np.ones(2, dtype=np.float32)}
    if name == "FedAvgM":
        source.current_arrays = ArrayRecord({k: Array(v) for k, v in weights.items()})
        source.momentum_vector = [np.full(4, 0.5, np.float32), np.zeros(2, np.float32)]
    else:
        source.current_arrays = dict(weights)
        source.m_t = {k: v * 2 for k, v in weights.items()}
        source.v_t = {k: v * 3 for k, v in weights.items()}
    state = compat.get_strategy_state(source)
    target = getattr(flower_strategies, name)()
    compat.set_strategy_state(target, state)
    assert compat.get_strategy_state(target).keys() == state.keys()
    for attribute, arrays in state.items():
        got = compat.get_strategy_state(target)[attribute]
        assert all(np.array_equal(got[k], v) for k, v in arrays.items())
        assert type(getattr(target, attribute)) is type(getattr(source, attribute))


def test_strategy_state_refuses_unknown_attributes() -> None:
    from flwr.serverapp.strategy import FedAvg

    with pytest.raises(ValueError, match="keeps no 'm_t'"):
        compat.set_strategy_state(FedAvg(), {"m_t": {"w": np.zeros(1)}})
    with pytest.raises(ValueError, match="unknown strategy state"):
        compat.set_strategy_state(FedAvg(), {"secret": {}})


def test_the_simulation_command_dispatches_on_push_unless_told(monkeypatch: pytest.MonkeyPatch, restore_flower: None) -> None:
    from alphafed_flwr.api.errors import ConfigError
    from alphafed_flwr.simulation import engine

    vce = importlib.import_module(compat.VCE_API)
    flowers = vce.add_messages_to_queue
    monkeypatch.setenv(engine.DISPATCH_ENV, "flower")
    assert engine.dispatch_on_push() is False and vce.add_messages_to_queue is flowers
    monkeypatch.setenv(engine.DISPATCH_ENV, "sometimes")
    with pytest.raises(ConfigError, match="'push' .* or 'flower'"):
        engine.dispatch_on_push()
    monkeypatch.delenv(engine.DISPATCH_ENV)
    assert engine.dispatch_on_push() is True and vce.add_messages_to_queue is not flowers
    assert vce.add_messages_to_queue.__qualname__.startswith("set_simulation_poll")


def test_parties_get_their_share_of_torch_threads_and_it_is_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import torch

    from alphafed_flwr.simulation import engine

    monkeypatch.delenv(engine.OMP_THREADS_ENV, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert [engine.party_threads(n) for n in (1, 2, 3, 9)] == [8, 4, 2, 1]
    before = torch.get_num_threads()
    with engine.torch_threads(1):
        # the ServerApp's process, and the local Ray workers that inherit the variable
        assert torch.get_num_threads() == 1 and os.environ[engine.OMP_THREADS_ENV] == "1"
    assert torch.get_num_threads() == before and engine.OMP_THREADS_ENV not in os.environ
    monkeypatch.setenv(engine.OMP_THREADS_ENV, "3")  # the user's choice wins
    with engine.torch_threads(1):
        assert torch.get_num_threads() == before and os.environ[engine.OMP_THREADS_ENV] == "3"
