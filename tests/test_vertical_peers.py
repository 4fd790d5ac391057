"""The job of ``bench/vertical_peers.py`` (``bench/peers_job.py``) and our side of it.

NVFlare's side needs NVFlare (the bench installs it into its own venv), so it is not run
here; what both sides share is: the data split, the batch order, the seeded models, the
epoch clock, and the plain one-process loop whose updates both frameworks must reproduce.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from fakegrid import FakeGrid

from alphafed_flwr.adapters.templates import PickledTemplate
from alphafed_flwr.adapters.vertical_client import CollaboratorSettings, collaborator_client_app
from alphafed_flwr.adapters.vertical_host import VerticalHost, VerticalSettings, run_vertical_host
from alphafed_flwr.api.hetero_nn import HeteroNNCollaboratorScheduler, HeteroNNHostScheduler
from alphafed_flwr.loader import load_object
from alphafed_flwr.strategies.split_learning import SplitLearning

pytestmark = pytest.mark.timeout(300)

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _module(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


job = _module("peers_job")


def test_split_reads_idx_and_halves_rebuild_the_image(tiny_mnist: Path, tmp_path: Path) -> None:
    images, labels = job.load_split(tiny_mnist, train=True)
    assert images.shape == (240, 1, 28, 28) and images.dtype == torch.float32 and labels.dtype == torch.int64
    left, right = job.left_half(images), job.right_half(images)
    assert left.shape == right.shape == (240, 1, 28, 14)
    assert torch.equal(torch.cat((left, right), dim=-1), images)
    raw = tiny_mnist / "MNIST" / "raw"
    pixels = np.frombuffer((raw / "train-images-idx3-ubyte").read_bytes(), np.uint8, offset=16).reshape(-1, 28, 28)
    assert torch.allclose(images[:, 0] * job.STD + job.MEAN, torch.from_numpy(pixels / 255.0).float(), atol=1e-6)
    assert len(job.load_split(tiny_mnist, train=False, limit=30)[1]) == 30
    # only the .gz files: read the same
    gz_only = tmp_path / "MNIST" / "raw"
    gz_only.mkdir(parents=True)
    for path in raw.glob("*.gz"):
        (gz_only / path.name).write_bytes(path.read_bytes())
    assert torch.equal(job.load_split(tmp_path, train=True)[0], images)


def test_read_idx_rejects_a_short_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(9)))
    with pytest.raises(ValueError, match="declares"):
        job.read_idx(bad)


def test_ids_order_and_batches(tiny_mnist: Path) -> None:
    ids = job.sample_ids(str(tiny_mnist))
    assert ids[:2] == ["0", "1"] and ids[240] == str(job.TEST_ID_OFFSET) and len(ids) == 340
    train, test = job.split_ids(["3", "0", str(job.TEST_ID_OFFSET + 7), 5])
    assert train == {0, 3, 5} and test == {job.TEST_ID_OFFSET + 7}
    order = job.epoch_order(range(300), 1)
    assert sorted(order) == list(range(300)) and order == job.epoch_order(set(range(300)), 1)
    assert order != job.epoch_order(range(300), 2) and order != list(range(300))
    chunks = list(job.batches(order))
    assert [len(c) for c in chunks] == [128, 128, 44] and sum(chunks, []) == order
    assert job.batch_count(5000) == 40 and job.batch_count(128) == 1


def test_models_are_seeded_per_part() -> None:
    first, second = job.build("left").state_dict(), job.build("left").state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    right = job.build("right").state_dict()
    assert not torch.equal(first["fc.weight"], right["fc.weight"])
    features = job.build("left")(torch.zeros(4, 1, 28, 14))
    assert features.shape == (4, 64)
    out = job.build("top")(torch.zeros(4, 128))
    assert out.shape == (4, 10) and torch.allclose(out.exp().sum(1), torch.ones(4))


def test_epoch_clock_measures_start_to_last_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "clock.jsonl"
    monkeypatch.setenv(job.CLOCK_ENV, str(path))
    times = iter([10.0, 10.5, 11.0, 20.0, 23.0, 1.0])
    monkeypatch.setattr(job.time, "monotonic", lambda: next(times))
    ours, other = job.EpochClock("host"), job.EpochClock("nvflare")
    ours.mark(1, "start")
    ours.mark(1, "step")
    ours.mark(1, "step")
    ours.mark(2, "start")
    ours.mark(2, "step")
    other.mark(1, "start")
    assert job.epoch_seconds(path, "host") == {1: 1.0, 2: 3.0}
    assert job.epoch_seconds(path, "nvflare") == {}  # no step yet
    monkeypatch.delenv(job.CLOCK_ENV)
    job.EpochClock("host").mark(3, "start")  # no file: nothing happens
    assert len(path.read_text().splitlines()) == 6


def test_our_side_reproduces_the_one_process_loop(tiny_mnist: Path, tmp_path: Path) -> None:
    """K=1 on our adapter makes exactly the updates of the plain loop NVFlare's learner also runs."""
    host = load_object(str(BENCH / "peers_host.py"), HeteroNNHostScheduler).obj
    collaborator = load_object(str(BENCH / "peers_collaborator.py"), HeteroNNCollaboratorScheduler).obj
    source = PickledTemplate(collaborator)
    app = collaborator_client_app(
        lambda ctx: source,
        lambda ctx: CollaboratorSettings(task_id="vertical-peers", out_dir=str(tmp_path), data_dir=str(tiny_mnist)),
    )
    grid = FakeGrid({100: app}, {100: {"partition-id": 0}})
    settings = VerticalSettings(out_dir=tmp_path, task_id="vertical-peers", rounds=2, num_collaborators=1,
                                data_dir=tiny_mnist)
    summary = run_vertical_host(grid, VerticalHost(host, settings),
                                SplitLearning(1, schedule_timeout=5, calculation_timeout=60))
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    reference = job.train_in_one_process(str(tiny_mnist), 2)
    for round_, expected in zip(summary["rounds"], reference, strict=True):
        assert round_["test"]["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-9)
        assert round_["test"]["loss"] == pytest.approx(expected["loss"], rel=1e-4)


def test_report_states_the_target_honestly() -> None:
    bench = _module("vertical_peers")
    plain = bench.Side("plain", {1: 1.0}, {1: 0.9}, 1.0)

    def verdict(k1_epoch: float, k1_accuracy: float) -> str:
        sides = {"plain": plain, "k1": bench.Side("k1", {1: k1_epoch}, {1: k1_accuracy}, 1.0),
                 "nvflare": bench.Side("nv", {1: 3.0}, {1: 0.9}, 1.0),
                 "k16": bench.Side("k16", {1: 1.5}, {1: 0.85}, 1.0)}
        args = type("Args", (), {"epochs": 1, "threads": 1})()
        with redirect_stdout(io.StringIO()) as out:
            bench.report(sides, args)
        return out.getvalue()

    assert "met" in verdict(2.0, 0.9) and "NOT met" not in verdict(2.0, 0.9)
    assert "NOT met" in verdict(4.0, 0.9)  # slower
    assert "NOT met" in verdict(2.0, 0.88)  # 2 pp less accurate
    assert "best K" not in verdict(2.0, 0.9) and "no K > 1 within 1 pp" in verdict(2.0, 0.9)  # K=16 lost 5 pp
    assert "README:" in verdict(2.0, 0.9)


def test_install_never_touches_a_folder_it_did_not_make(tmp_path: Path) -> None:
    bench = _module("vertical_peers")
    precious = tmp_path / "venv"
    (precious / "bin").mkdir(parents=True)
    (precious / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not a venv this bench made"):
        bench.ensure_nvflare(precious, tmp_path / "install.log")
    assert (precious / "keep.txt").read_text() == "mine"
