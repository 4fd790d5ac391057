"""Flower's deployment engine on loopback: our server and client commands as real processes."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from deploy_helpers import Cluster, rounds_done, summary, wait_for
from tasks import write_fedavg

from alphafed_flwr.certs import make_certificates

pytestmark = pytest.mark.timeout(600)


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
    assert intruder.wait(120) == 1
    assert "the server refused this node's key" in intruder.text()
    for i in (1, 2):
        cluster.client(f"client-{i}", *tls, "--node-key", str(certs[f"node-{i}"]),
                       "--data-dir", str(tiny_mnist), "--partition-id", str(i - 1), "--num-partitions", "2")
    # the Control API (start runs, register nodes) answers nobody without the server's token
    response = httpx.post(f"https://{cluster.address}/v1/control/list-runs", verify=str(certs["ca"]), content=b"")
    assert response.status_code == 403
    assert server.wait(300) == 0, server.text()[-4000:]
    result = summary(out)
    assert result["status"] == "completed" and result["rounds_completed"] == 2
    assert all(r["train"]["num-results"] == 2 for r in result["rounds"])
    assert (out / "model.pt").exists() and (out / "metrics" / "test_results.csv").exists()


def test_a_killed_client_and_a_killed_server(cluster: Cluster, tiny_mnist: Path) -> None:
    root = cluster.root
    task = write_fedavg(root, args="min_clients=1, max_rounds=3, log_rounds=1, calculation_timeout=30")
    out = root / "run"
    args = (str(task), "--out", str(out), "--data-dir", str(tiny_mnist), "--insecure")
    server = cluster.server("server", *args)
    keep = cluster.client("client-1", "--insecure", "--data-dir", str(tiny_mnist))
    doomed = cluster.client("client-2", "--insecure", "--data-dir", str(tiny_mnist))
    procs = [server, keep, doomed]
    wait_for(lambda: rounds_done(out) >= 1, 180, "round 1", procs)
    doomed.kill()  # a client dies: later rounds complete with the other one (min_clients=1)
    wait_for(lambda: rounds_done(out) >= 2, 180, "round 2 without the killed client", procs)
    server.kill()  # the server machine dies mid-run
    assert summary(out)["status"] == "running"
    server = cluster.server("server-again", *args)
    assert server.wait(300) == 0, server.text()[-4000:]
    result = summary(out)
    assert result["status"] == "completed"
    assert result["resumed_from_round"] == 2
    assert [r["round"] for r in result["rounds"]] == [1, 2, 3]


def test_vertical_host_and_collaborator_fail_clearly_and_resume(cluster: Cluster) -> None:
    root = cluster.root
    tests_dir = Path(__file__).parent
    (root / "host.py").write_text(
        f"import sys; sys.path.insert(0, {str(tests_dir)!r})\n"
        "from vertical_tasks import Host\n"
        "scheduler = Host(max_rounds=2, log_rounds=1, calculation_timeout=30)\n"
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
    wait_for(lambda: rounds_done(out) >= 1, 240, "vertical round 1", [server, collab])
    collab.kill()  # the collaborator disappears: the host names it and the batch
    assert server.wait(120) == 1
    failed = summary(out)
    assert failed["status"] == "failed"
    assert "no answer from collaborator 'c1'" in failed["error"] and "round 2" in failed["error"]
    server = cluster.server("server-again", *args)
    cluster.client("collab-again", "--insecure", "--collaborator", str(root / "collab.py"),
                   "--out", str(root / "collab"))
    assert server.wait(300) == 0, server.text()[-4000:]
    result = summary(out)
    assert result["status"] == "completed" and result["resumed_from_round"] == 1
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    assert (root / "collab" / "collaborators" / "c1" / "feature_model.pt").exists()
