"""A simulation that joins an existing two-node Ray cluster (``--ray-address``), and the
Ray placement settings (GPUs per client, CPU-only clients, addresses that are refused).

The cluster is Ray's own ``ray.cluster_utils.Cluster`` on 127.0.0.1: a head and a second
node with one CPU each, so the simulation's two client actors can only fit one per node.
Ray rewrites a ``127.0.0.1`` cluster address to the machine's outward IP (where a
loopback-only GCS does not listen) unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes it
use loopback throughout; the test sets it for the cluster and the simulation command.
Which node each ``ClientAppActor`` ran on is read from Ray's GCS actor table (the state API
``ray.util.state.list_actors`` needs Ray's dashboard, which this install lacks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tasks import write_fedavg

from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.simulation.engine import ACCEL_OVERRIDE_ENV, RayPlacement, backend_config, hide_gpus_from_cpu_clients

pytestmark = pytest.mark.timeout(420)
ROOT = Path(__file__).resolve().parents[1]


LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture
def two_node_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """A head and one more node, 1 CPU each, on 127.0.0.1; shut down afterwards."""
    from ray._private import ray_constants  # pylint: disable=import-outside-toplevel
    from ray.cluster_utils import Cluster  # pylint: disable=import-outside-toplevel

    for key, value in LOOPBACK_ONLY.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)  # read at import: patch it too
    node_args = {"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024}
    cluster = Cluster(initialize_head=True, head_node_args={**node_args, "include_dashboard": False})
    processes = []
    try:
        cluster.add_node(**node_args)
        cluster.wait_for_nodes(timeout=60)
        for node in cluster.list_all_nodes():
            processes += [info.process for infos in node.all_processes.values() for info in infos]
        yield cluster
    finally:
        cluster.shutdown()
    assert processes and all(proc.poll() is not None for proc in processes), "Ray processes left running"


def test_fedavg_runs_on_both_nodes_of_an_existing_cluster(
    tmp_path: Path, tiny_mnist: Path, two_node_cluster: object
) -> None:
    cluster = two_node_cluster
    task = write_fedavg(tmp_path)
    out = tmp_path / "run"
    env = {**os.environ, **LOOPBACK_ONLY, "NO_COLOR": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "alphafed_flwr.simulation", str(task), "--ray-address", cluster.address,
         "--num-clients", "4", "--rounds", "2", "--seed", "0", "--cpus-per-client", "1",
         "--data-dir", str(tiny_mnist), "--out", str(out), "--client-eval", "off"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert summary["config"]["ray_address"] == cluster.address

    nodes = {node["NodeID"] for node in cluster.global_state.node_table() if node["Alive"]}
    actors = cluster.global_state.actor_table(None).values()
    client_nodes = {a["Address"]["NodeID"] for a in actors if a["ActorClassName"] == "ClientAppActor"}
    assert len(nodes) == 2 and cluster.address.startswith("127.0.0.1:")
    assert client_nodes == nodes, f"client actors ran on {client_nodes}, cluster nodes {nodes}"


def test_local_run_never_joins_an_address_from_the_environment() -> None:
    config = backend_config(RayPlacement(cpus_per_client=2, gpus_per_client=0.25))
    assert config == {"client_resources": {"num_cpus": 2, "num_gpus": 0.25},
                      "init_args": {"address": "local", "_system_config": {"max_direct_call_object_size": 1 << 20}}}


def test_joining_passes_only_the_address() -> None:
    config = backend_config(RayPlacement(address="10.0.0.1:6379"), {"logging_level": "warning"})
    assert config["init_args"] == {"address": "10.0.0.1:6379", "logging_level": "warning"}
    assert config["client_resources"] == {"num_cpus": 1.0, "num_gpus": 0.0}
    with pytest.raises(ConfigError, match="num_cpus"):
        backend_config(RayPlacement(address="10.0.0.1:6379"), {"num_cpus": 4})


@pytest.mark.parametrize("address", ["auto", "AUTO", "", "local"])
def test_auto_and_empty_addresses_are_refused(address: str) -> None:
    with pytest.raises(ConfigError, match="ray-address"):
        RayPlacement(address=address)


@pytest.mark.parametrize(("cpus", "gpus", "flag"), [(0, 0, "cpus"), (1, -0.5, "gpus"), (1, 1.5, "gpus")])
def test_bad_resources_are_refused(cpus: float, gpus: float, flag: str) -> None:
    with pytest.raises(ConfigError, match=f"--{flag}-per-client"):
        RayPlacement(cpus_per_client=cpus, gpus_per_client=gpus)


def test_cpu_only_clients_are_not_shown_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ACCEL_OVERRIDE_ENV, "0")  # the old setting: zero-GPU actors saw every GPU
    hide_gpus_from_cpu_clients()
    assert os.environ[ACCEL_OVERRIDE_ENV] == "1"


def _probe_app() -> tuple[object, object, list[dict[str, str]]]:
    """A ServerApp that asks every node what Ray gave its actor, and the ClientApp that answers."""
    # pylint: disable=import-outside-toplevel
    import time

    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp

    seen: list[dict[str, str]] = []
    server_app, client_app = ServerApp(), ClientApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        del context
        deadline = time.monotonic() + 60
        while len(list(grid.get_node_ids())) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        asks = [Message(RecordDict({"ask": ConfigRecord({})}), dst_node_id=node, message_type="query")
                for node in grid.get_node_ids()]
        seen.extend(dict(r.content["env"]) for r in grid.send_and_receive(asks, timeout=120) if r.has_content())

    @client_app.query()
    def _answer(message: Message, context: Context) -> Message:
        import ray

        from alphafed_flwr.api.env import default_device

        del context
        return Message(RecordDict({"env": ConfigRecord({
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
            "ray_gpus": str(ray.get_gpu_ids()),
            "device": str(default_device(None)),
        })}), reply_to=message)

    return server_app, client_app, seen


@pytest.mark.parametrize(("gpus", "visible", "ray_gpus"), [(0.5, "0", "[0]"), (0.0, "", "[]")])
def test_gpu_requests_reach_ray_and_cpu_clients_see_none(gpus: float, visible: str, ray_gpus: str) -> None:
    """On a local Ray instance that declares one (fake) GPU: 0.5 GPU per client gives each
    client actor GPU 0 (two share it); 0 hides it. No CUDA driver here, so the default
    device stays the CPU (the fallback)."""
    from alphafed_flwr.simulation.engine import run_ray_simulation  # pylint: disable=import-outside-toplevel

    server_app, client_app, seen = _probe_app()
    run_ray_simulation(server_app, client_app, 2, 1.0, {"num_gpus": 1, "num_cpus": 2}, gpus_per_client=gpus)
    import torch  # pylint: disable=import-outside-toplevel

    device = "cuda:0" if gpus and torch.cuda.is_available() else "cpu"
    assert len(seen) == 2
    assert all(s == {"visible": visible, "ray_gpus": ray_gpus, "device": device} for s in seen), seen


def test_a_task_that_chose_cuda_on_the_driver_runs_on_the_cpu_without_a_gpu(caplog: pytest.LogCaptureFixture) -> None:
    """SDK tasks set ``self.device`` in ``__init__``, which a simulation runs in the driver."""
    import torch  # pylint: disable=import-outside-toplevel

    from alphafed_flwr.adapters.templates import PickledTemplate  # pylint: disable=import-outside-toplevel
    from alphafed_flwr.api.fed_avg import FedAvgScheduler  # pylint: disable=import-outside-toplevel

    class Chooser(FedAvgScheduler):
        def __init__(self, device: str) -> None:
            super().__init__()
            self.device = torch.device(device)

        def build_model(self) -> None: ...
        def build_optimizer(self, model: object) -> None: ...
        def build_train_dataloader(self) -> None: ...
        def build_test_dataloader(self) -> None: ...
        def train_an_epoch(self) -> None: ...
        def test(self) -> None: ...

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the CPU fallback does not apply")
    with caplog.at_level("WARNING"):
        assert PickledTemplate(Chooser("cuda")).new_instance().device == torch.device("cpu")
    assert "--gpus-per-client" in caplog.text
    assert PickledTemplate(Chooser("meta")).new_instance().device == torch.device("meta")  # other choices kept
