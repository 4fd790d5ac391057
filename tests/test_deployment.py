"""Flower's deployment engine on loopback: our server and client commands as real processes.

The first tests are quick (no processes, or processes that stop at once); the later ones
run whole tasks and take minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
from deploy_helpers import Cluster, checkpoint_round, path_without_env, rounds_done, summary, wait_for
from flwr.app import Context, Message, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from tasks import write_fedavg

from alphafed_flwr import compat
from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.certs import make_certificates
from alphafed_flwr.deploy import apps, bundle, superlink
from alphafed_flwr.deploy.processes import claim_folder, flower_env, free_port, scripts_dir

pytestmark = pytest.mark.timeout(1200)  # upper bounds: this CPU is shared
TOKEN = "t" * 32


# ------------------------------------------------------------------ §1 the environment
def test_flower_processes_come_from_this_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    env = flower_env(tmp_path)
    assert env["PATH"].split(os.pathsep)[0] == str(scripts_dir())
    assert Path(sys.executable).parent.resolve() == scripts_dir().resolve()
    for name in ("flower-superexec", "flwr-serverapp", "flwr-clientapp"):
        found = subprocess.run(["sh", "-c", f"command -v {name}"], env=env, capture_output=True, text=True)
        assert Path(found.stdout.strip()).parent == scripts_dir(), name


def test_a_superlink_that_cannot_start_says_why_on_the_terminal(tmp_path: Path) -> None:
    task = write_fedavg(tmp_path, args="max_rounds=1")
    port = free_port()
    with __import__("socket").socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = subprocess.run(
            [sys.executable, "-m", "alphafed_flwr.server", str(task), "--insecure", "--address",
             f"127.0.0.1:{port}", "--out", str(tmp_path / "run"), "--start-timeout", "120"],
            capture_output=True, text=True, timeout=240, cwd=tmp_path,
            env={**os.environ, "PATH": path_without_env(), "NO_COLOR": "1"},
        )
    assert done.returncode != 0
    assert "the SuperLink stopped while starting" in done.stderr + done.stdout
    assert "address already in use" in (done.stderr + done.stdout).lower()


def test_an_executor_that_cannot_start_is_given_up_with_its_cause(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from alphafed_flwr.client import ExecutorKeeper

    stopped = []
    broken = [sys.executable, "-c", "import sys; print('ImportError: no module named torch'); sys.exit(3)"]
    keeper = ExecutorKeeper(broken, dict(os.environ), tmp_path, on_failure=lambda: stopped.append(True))
    keeper.CHECK_EVERY = 0.05
    keeper.start()
    keeper.join(60)
    assert not keeper.is_alive() and stopped == [True]
    assert keeper.failed is not None and "failed 3 times while starting (exit 3" in keeper.failed
    assert capsys.readouterr().out.count("ImportError: no module named torch") == 3  # the cause, on the terminal
    # one that was ready and then died (killed for memory, say) is restarted, however often
    flaky = ExecutorKeeper([sys.executable, "-c", "print('Warm executor ready')"], dict(os.environ), tmp_path,
                           on_failure=lambda: stopped.append(False))
    flaky.CHECK_EVERY = 0.05
    flaky.start()
    wait_for(lambda: capsys.readouterr().out.count("Warm executor ready") or None, 60, "a restart")
    wait_for(lambda: "Warm executor ready" in capsys.readouterr().out, 60, "another restart")
    flaky.stop()
    assert flaky.failed is None and stopped == [True]


# ------------------------------------------------------------------ §2 one folder per node
def test_nodes_never_share_a_folder(tmp_path: Path) -> None:
    def client(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "alphafed_flwr.client", "--server", f"127.0.0.1:{free_port()}",
             "--insecure", "--connect-timeout", "60", "--no-warm-executor", *args],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**os.environ, "PATH": path_without_env(), "NO_COLOR": "1"},
        )

    first = client("--partition-id", "0", "--num-partitions", "2")
    second = client("--partition-id", "1", "--num-partitions", "2")
    try:
        configs = [tmp_path / "alphafed-client" / f"partition-{i}-of-2" / "node-config.toml" for i in (0, 1)]
        wait_for(lambda: all(c.exists() and "partition-id" in c.read_text() for c in configs), 120, "node configs")
        assert "partition-id = 0" in configs[0].read_text() and "partition-id = 1" in configs[1].read_text()
        twin = client("--partition-id", "0", "--num-partitions", "2")  # same node again: refused
        output, _ = twin.communicate(timeout=120)
        assert twin.returncode == 2, output
        assert "in use by another node" in output and "give each its own --out" in output
        assert "partition-id = 0" in configs[0].read_text()
    finally:
        for proc in (first, second):
            for child in psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]:
                child.kill()
            proc.wait(10)


def test_a_folder_lock_goes_with_its_process(tmp_path: Path) -> None:
    handle = claim_folder(tmp_path / "node", "node")
    with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
        claim_folder(tmp_path / "node", "node")
    handle.close()
    claim_folder(tmp_path / "node", "node").close()


# ------------------------------------------------------------------ §5 roles
def _incoming(kind: str) -> Message:
    message = Message(RecordDict(), dst_node_id=5, message_type=kind)
    message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
    return message


def _bundle_with_host_code(root: Path, marker: Path) -> Path:
    app_dir = root / "app"
    (app_dir / bundle.TASK_FOLDER).mkdir(parents=True)
    (app_dir / bundle.TASK_FOLDER / "f0.py").write_text(f"open({str(marker)!r}, 'w').write('host code ran')\n")
    manifest = {"files": {"host.py": "f0.py"}, "entry": "host.py", "name": None}
    (app_dir / bundle.MANIFEST).write_text(json.dumps(manifest))
    return app_dir


def test_a_node_serves_only_its_roles_message_types(tmp_path: Path) -> None:
    marker = tmp_path / "host-code-ran"
    apps.use_bundle(_bundle_with_host_code(tmp_path, marker))
    run = {"task-id": "t", "seed": 0}
    collaborator = Context(run_id=1, node_id=5, state=RecordDict(), run_config=run,
                           node_config={"collaborator": str(tmp_path / "collab.py"), "out-dir": str(tmp_path / "c")})
    horizontal = Context(run_id=1, node_id=6, state=RecordDict(), run_config=run,
                         node_config={"out-dir": str(tmp_path / "h")})
    try:
        for context, refused in ((collaborator, ("train", "evaluate", "query.full_batch", "query.other")),
                                 (horizontal, ("query.hello", "query.psi", "train.exchange", "reconnect"))):
            for kind in refused:
                reply = apps.local_client_app()(_incoming(kind), context)
                assert reply.has_error(), kind
                assert f"refuses message type '{kind}'" in reply.error.reason
        assert not marker.exists()  # the host's script never ran on the collaborator
    finally:
        apps.use_bundle(None)


# ------------------------------------------------------------------ §7 guarded SuperLink
@pytest.fixture(scope="module")
def superlink_app(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    db = tmp_path_factory.mktemp("superlink") / "state.db"
    saved = sys.argv
    sys.argv = ["flower-superlink", "--insecure", "--isolation", "process", "--database", str(db)]
    try:
        config = compat.superlink_lifespan_config()
    finally:
        sys.argv = saved
    return config, compat.superlink_app(config)


def test_public_listener_serves_only_the_fleet_api(superlink_app, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")  # uvicorn would trust X-Forwarded-For from anyone
    config, app = superlink_app
    public, loopback = superlink.listener_configs(app, config, free_port(), TOKEN)
    assert public.proxy_headers is False and loopback.proxy_headers is False
    assert (loopback.host, public.lifespan, loopback.lifespan) == ("127.0.0.1", "on", "off")
    public.load()
    assert isinstance(public.loaded_app, superlink.Guard)  # no ProxyHeadersMiddleware in front
    client = TestClient(public.app)
    spoof = {"X-Forwarded-For": "127.0.0.1", superlink.TOKEN_HEADER: TOKEN}
    for path in ("/v1/runtime/pull-app-inputs", "/v1/control/list-runs", "/docs", "/openapi.json"):
        response = client.post(path, headers=spoof, content=b"")
        assert response.status_code == 403 and "only the Fleet API" in response.text, path
    fleet = client.post("/v1/fleet/pull-messages", content=b"")
    assert "only the Fleet API" not in fleet.text  # reached Flower's Fleet API


def test_loopback_listener_serves_runtime_and_token_guarded_control(superlink_app) -> None:  # noqa: ANN001
    config, app = superlink_app
    _, loopback = superlink.listener_configs(app, config, free_port(), TOKEN)
    client = TestClient(loopback.app)
    assert client.post("/v1/control/list-runs", content=b"").status_code == 403
    wrong = client.post("/v1/control/list-runs", headers={superlink.TOKEN_HEADER: "x" * 32}, content=b"")
    assert wrong.status_code == 403 and "control token" in wrong.text
    right = client.post("/v1/control/list-runs", headers={superlink.TOKEN_HEADER: TOKEN}, content=b"")
    assert "control token" not in right.text
    assert client.post("/v1/fleet/pull-messages", content=b"").status_code == 403
    assert "not served" not in client.post("/v1/runtime/pull-app-inputs", content=b"").text


# ------------------------------------------------------------------ §7/§9 bundle extraction
def _installed(root: Path, manifest: object, files: dict[str, bytes] | None = None) -> Path:
    app_dir = root / f"app-{uuid.uuid4().hex[:8]}"
    (app_dir / bundle.TASK_FOLDER).mkdir(parents=True)
    raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    (app_dir / bundle.MANIFEST).write_bytes(raw)
    for name, data in ({"f0.py": b"x = 1\n"} if files is None else files).items():
        (app_dir / bundle.TASK_FOLDER / name).write_bytes(data)
    return app_dir


@pytest.mark.parametrize("original", ["../evil.py", "/tmp/evil.py", "sub/evil.py", "..", ".hidden.py", "a\\b.py", "x\x00.py"])
def test_bundle_extraction_refuses_paths(tmp_path: Path, original: str) -> None:
    app_dir = _installed(tmp_path, {"files": {original: "f0.py"}, "entry": original, "name": None})
    with pytest.raises(ConfigError, match="refused the app bundle"):
        bundle.task_ref_in(app_dir)
    assert not (tmp_path / "evil.py").exists()


def test_bundle_extraction_refuses_links(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    app_dir = _installed(tmp_path, {"files": {"task.py": "f0.py"}, "entry": "task.py", "name": None}, files={})
    (app_dir / bundle.TASK_FOLDER / "f0.py").symlink_to(secret)
    with pytest.raises(ConfigError, match="not a regular file"):
        bundle.task_ref_in(app_dir)
    ok = _installed(tmp_path, {"files": {"task.py": "f0.py", "util.py": "f1.py"}, "entry": "task.py", "name": "Task"},
                    files={"f0.py": b"a = 1\n", "f1.py": b"b = 2\n"})
    ref = bundle.task_ref_in(ok)
    assert ref.endswith("task_files/task.py:Task") and (ok / "task_files" / "util.py").read_text() == "b = 2\n"


_names = st.one_of(st.text(max_size=12), st.sampled_from(["../a.py", "/a.py", "a.py", "f0.py", "..", "a/b.py"]))
_manifests = st.one_of(
    st.binary(max_size=64),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                 max_leaves=8),
    st.fixed_dictionaries({"files": st.dictionaries(_names, st.sampled_from(["f0.py", "f1.py", "../f0.py", "f0"]),
                                                    max_size=3),
                           "entry": _names, "name": st.none() | st.text(max_size=6)}),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(manifest=_manifests)
def test_fuzz_bundle_manifests_are_parsed_or_clearly_refused(tmp_path: Path, manifest: object) -> None:
    app_dir = _installed(tmp_path, manifest, files={"f0.py": b"a = 1\n", "f1.py": b"b = 2\n"})
    before = set(tmp_path.rglob("*")) - set(app_dir.rglob("*"))
    try:
        ref = bundle.task_ref_in(app_dir)
    except ConfigError as exc:
        assert "refused the app bundle" in str(exc)
    else:
        assert Path(ref.split(":")[0]).parent == app_dir / "task_files"
        extracted = {p.name for p in (app_dir / "task_files").iterdir()} - {".complete"}
        parsed = json.loads(manifest) if isinstance(manifest, bytes) else manifest
        assert extracted == set(parsed["files"])
    assert set(tmp_path.rglob("*")) - set(app_dir.rglob("*")) == before  # nothing written outside


@pytest.fixture
def cluster(tmp_path: Path):  # noqa: ANN201
    c = Cluster(tmp_path)
    yield c
    c.stop()


def test_tls_node_authentication_and_a_guarded_control_api(cluster: Cluster, tiny_mnist: Path) -> None:
    root = cluster.root
    certs = make_certificates(root / "certs", ["127.0.0.1"], nodes=3)
    task = write_fedavg(root, args="min_clients=2, max_rounds=2, log_rounds=1, schedule_timeout=180")
    out = root / "run"
    tls = ["--ca-cert", str(certs["ca"])]
    server = cluster.server(
        "server", str(task), "--out", str(out), "--data-dir", str(tiny_mnist), "--seed", "0",
        *tls, "--server-cert", str(certs["server-cert"]), "--server-key", str(certs["server-key"]),
        "--node-public-key", str(root / "certs" / "node-1.pub"),
        "--node-public-key", str(root / "certs" / "node-2.pub"),
    )
    # a node whose key the server does not know is refused while the server waits for nodes
    intruder = cluster.client("intruder", *tls, "--node-key", str(certs["node-3"]), "--data-dir", str(tiny_mnist))
    assert intruder.wait(240) == 1
    assert "the server refused this node's key" in intruder.text()
    for i in (1, 2):
        cluster.client(f"client-{i}", *tls, "--node-key", str(certs[f"node-{i}"]),
                       "--data-dir", str(tiny_mnist), "--partition-id", str(i - 1), "--num-partitions", "2")
    # the public port serves the Fleet API only: no Control API (start runs), no runtime API
    for path in ("/v1/control/list-runs", "/v1/runtime/pull-app-inputs"):
        response = httpx.post(f"https://{cluster.address}{path}", verify=str(certs["ca"]), content=b"",
                              headers={"X-Forwarded-For": "127.0.0.1"})
        assert response.status_code == 403, path
    # the control token is in no process's environment or command line (SuperExec, ServerApp)
    tree = wait_for(lambda: _tree_with_serverapp(server), 360, "the ServerApp process", [server])
    for proc in tree:
        try:
            assert not any("CONTROL_TOKEN" in key for key in proc.environ()), proc.cmdline()
            launched = [arg for arg in proc.cmdline() if arg.endswith("flwr-serverapp")]
            assert all(Path(arg).parent == scripts_dir() for arg in launched), launched  # this environment's
        except psutil.NoSuchProcess:
            continue
    assert server.wait(480) == 0, server.text()[-4000:]
    result = summary(out)
    assert result["status"] == "completed" and result["rounds_completed"] == 2
    assert all(r["train"]["num-results"] == 2 for r in result["rounds"])
    assert (out / "model.pt").exists() and (out / "metrics" / "test_results.csv").exists()


def _tree_with_serverapp(proc) -> list[psutil.Process]:  # noqa: ANN001
    """The server command's process tree once a ServerApp runs in it (else [])."""
    try:
        tree = [psutil.Process(proc.process.pid), *psutil.Process(proc.process.pid).children(recursive=True)]
        return tree if any("flwr-serverapp" in " ".join(p.cmdline()) for p in tree) else []
    except psutil.NoSuchProcess:
        return []


def test_a_killed_client_and_a_killed_server(cluster: Cluster, tiny_mnist: Path) -> None:
    root = cluster.root
    task = write_fedavg(root, args="min_clients=1, max_rounds=3, log_rounds=1, calculation_timeout=30")
    out = root / "run"
    args = (str(task), "--out", str(out), "--data-dir", str(tiny_mnist), "--insecure",
            "--strategy", "fedadam", "--strategy-arg", "eta=0.01")  # a strategy with server state
    server = cluster.server("server", *args)
    keep = cluster.client("client-1", "--insecure", "--data-dir", str(tiny_mnist))
    doomed = cluster.client("client-2", "--insecure", "--data-dir", str(tiny_mnist))
    procs = [server, keep, doomed]
    wait_for(lambda: rounds_done(out) >= 1, 360, "round 1", procs)
    doomed.kill()  # a client dies: later rounds complete with the other one (min_clients=1)
    # the checkpoint (written just after summary.json) is what a restarted server resumes from
    wait_for(lambda: checkpoint_round(out) >= 2, 360, "round 2's checkpoint without the killed client", procs)
    server.kill()  # the server machine dies mid-run
    assert summary(out)["status"] == "running"
    server = cluster.server("server-again", *args)
    assert server.wait(480) == 0, server.text()[-4000:]
    result = summary(out)
    assert result["status"] == "completed"
    assert result["resumed_from_round"] == 2
    assert [r["round"] for r in result["rounds"]] == [1, 2, 3]
    assert result["config"]["strategy"] == "fedadam" and result["config"]["strategy_args"] == {"eta": 0.01}
    assert "Restored FedAdam's server state (current_arrays, m_t, v_t)" in server.text()


VERTICAL_ROUNDS = 8  # enough that the kill after round 1 lands mid-run


def test_vertical_host_and_collaborator_fail_clearly_and_resume(cluster: Cluster) -> None:
    root = cluster.root
    tests_dir = Path(__file__).parent
    (root / "host.py").write_text(
        f"import sys; sys.path.insert(0, {str(tests_dir)!r})\n"
        "from vertical_tasks import Host\n"
        f"scheduler = Host(max_rounds={VERTICAL_ROUNDS}, log_rounds=1, calculation_timeout=30)\n"
        "scheduler.launch_task(task_id='vertical-deploy')\n"
    )
    (root / "collab.py").write_text(
        f"import sys; sys.path.insert(0, {str(tests_dir)!r})\n"
        "from vertical_tasks import Collaborator\n"
        "scheduler = Collaborator('c1')\n"
    )
    out = root / "run"
    args = ("--host", str(root / "host.py"), "--collaborators", "1", "--batches-per-exchange", "4",
            "--out", str(out), "--insecure")
    server = cluster.server("server", *args)
    collab = cluster.client("collab", "--insecure", "--collaborator", str(root / "collab.py"))
    wait_for(lambda: rounds_done(out) >= 1, 360, "vertical round 1", [server, collab])
    collab.kill()  # the collaborator disappears mid-run: the host names it and the batch
    assert server.wait(240) == 1, server.text()[-4000:]
    failed = summary(out)
    done = failed["rounds_completed"]  # rounds are quick: more than one may finish before the kill
    assert failed["status"] == "failed" and 1 <= done < VERTICAL_ROUNDS
    assert "no answer from collaborator 'c1'" in failed["error"] and f"round {done + 1}" in failed["error"]
    server = cluster.server("server-again", *args)
    cluster.client("collab-again", "--insecure", "--collaborator", str(root / "collab.py"),
                   "--out", str(root / "collab"))
    assert server.wait(480) == 0, server.text()[-4000:]
    result = summary(out)
    assert result["status"] == "completed" and result["resumed_from_round"] == done
    assert [r["round"] for r in result["rounds"]] == list(range(1, VERTICAL_ROUNDS + 1))
    assert (root / "collab" / "collaborators" / "c1" / "feature_model.pt").exists()
