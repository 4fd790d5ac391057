"""Split learning side by side: alphafed-flwr (K=1 and the best K) against NVFlare 2.9.0's
SplitNN workflow in its simulator, on the same two-party MNIST job, in one run.

    python bench/vertical_peers.py [--epochs 3] [--ks 1 2 4 8 16] [--threads 1] [--data-dir ../shared/data]

The job (``bench/peers_job.py``, used word for word by both sides): MNIST left/right halves
(14 columns each), a small CNN bottom model per party, an MLP top model at the label holder,
Adam lr 1e-3, batch 128, 3 epochs, the training set (5,000 images in ``../shared/data``)
and the 10,000 test images; the same seeded initial weights and the same batch order on
both sides, float32 on the wire, test accuracy after every epoch.

- alphafed-flwr: the simulation command (``python -m alphafed_flwr.simulation``) with the
  task scripts ``bench/peers_host.py`` (label holder) and ``bench/peers_collaborator.py``.
- NVFlare: installed by this bench into its own venv (``--venv``, default
  ``~/.cache/alphafed-flwr/bench/nvflare-2.9.0``; reused when present) from the package
  registry, with this venv's torch and torchvision versions. The bench writes a job into a
  temporary folder (NVFlare's ``FedJob``: ``SplitNNController``, ``SplitNNLearnerExecutor``
  and the learner in ``bench/peers_nvflare.py``, as NVFlare's CIFAR-10 split-learning
  example) and runs it in NVFlare's simulator (``FedJob.simulator_run``, 2 sites, 2 threads).

Threads: ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and ``torch.set_num_threads`` (through
``$PEERS_THREADS``) are the same in every process of both sides.

Epoch time, the same on both sides (``peers_job.EpochClock``): from the moment the loop's
driver starts the epoch's first batch (alphafed-flwr: the host's ``iterate_train_feature``,
before the round's first exchange; NVFlare: site-1's loop) to the label holder's update on
the epoch's last batch. It leaves out start-up, the PSI / model initialisation, the tests
and the last gradient's trip back. The headline is the median of the epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import ROOT, default_data_dir, run_command

NVFLARE_VERSION = "2.9.0"
DEFAULT_VENV = Path.home() / ".cache" / "alphafed-flwr" / "bench" / f"nvflare-{NVFLARE_VERSION}"
BENCH = Path(__file__).resolve().parent
HOST = "bench/peers_host.py"
COLLABORATOR = "bench/peers_collaborator.py"
JOB_NAME = "peers_splitnn"
MARKER = ".made-by-vertical-peers"
ACCURACY_TOLERANCE = 0.005  # "equal accuracy": within 0.5 pp


@dataclass
class Side:
    """One run's figures."""

    name: str
    epochs: dict[int, float]
    accuracy: dict[int, float]
    wall: float
    notes: list[str] = field(default_factory=list)

    @property
    def epoch(self) -> float:
        return statistics.median(self.epochs.values())

    @property
    def final(self) -> float:
        return self.accuracy[max(self.accuracy)]

    def line(self) -> str:
        per_epoch = ", ".join(f"{s:.2f}" for _, s in sorted(self.epochs.items()))
        accuracies = ", ".join(f"{100 * a:.2f}" for _, a in sorted(self.accuracy.items()))
        return (f"{self.name:<22}: epoch {self.epoch:.2f}s (median of {per_epoch}); test accuracy per epoch "
                f"{accuracies}%; whole run {self.wall:.0f}s" + "".join(f"; {n}" for n in self.notes))


# ----- NVFlare's venv ----------------------------------------------------------------------
def our_versions() -> dict[str, str]:
    """torch and torchvision versions of this venv."""
    import torch  # pylint: disable=import-outside-toplevel
    import torchvision  # pylint: disable=import-outside-toplevel

    return {"torch": torch.__version__, "torchvision": torchvision.__version__}


def venv_versions(python: Path) -> dict[str, str] | None:
    """nvflare, torch and torchvision versions in a venv, or None if they do not import."""
    code = "import json, nvflare, torch, torchvision; print(json.dumps({'nvflare': nvflare.__version__, " \
           "'torch': torch.__version__, 'torchvision': torchvision.__version__}))"
    try:
        proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None


def ensure_nvflare(venv: Path, log: Path) -> Path:
    """The python of a venv holding NVFlare 2.9.0 and our torch/torchvision (installed if missing)."""
    wanted = {"nvflare": NVFLARE_VERSION, **our_versions()}
    python = venv / "bin" / "python"
    found = venv_versions(python) if python.exists() else None
    if found == wanted:
        print(f"NVFlare venv: {venv} (reused: {found})", flush=True)
        return python
    if found is not None:
        raise SystemExit(f"{venv} holds {found}, not {wanted}: remove it (rm -r {venv}) and rerun")
    marker = venv / MARKER
    if venv.exists() and not marker.exists():
        raise SystemExit(f"{venv} exists but is not a venv this bench made (no {MARKER}): give another --venv")
    if Path(sys.prefix).resolve() == venv.resolve():
        raise SystemExit(f"--venv {venv} is this bench's own venv: NVFlare never goes there")
    shutil.rmtree(venv, ignore_errors=True)  # an unfinished install of ours
    venv.mkdir(parents=True)
    marker.write_text("made by bench/vertical_peers.py for NVFlare's side\n")
    pins = [f"nvflare=={NVFLARE_VERSION}"] + [f"{name}=={version.split('+')[0]}" for name, version in our_versions().items()]
    print(f"installing {' '.join(pins)} into {venv} (from the package registry; log: {log})", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log.open("w") as out:
        for step in ([_base_python(), "-m", "venv", str(venv)], [str(python), "-m", "pip", "install", *pins]):
            code = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, timeout=3600, check=False).returncode
            if code != 0:
                shutil.rmtree(venv, ignore_errors=True)
                raise SystemExit(
                    f"installing NVFlare failed: `{' '.join(step)}` exited {code} (see {log}). The bench installs "
                    f"{' '.join(pins)} from the package registry into its own venv {venv}; pip must reach the "
                    "registry and find our torch wheels."
                )
    found = venv_versions(python)
    if found != wanted:
        raise SystemExit(f"the new venv {venv} holds {found}, not {wanted} (see {log})")
    print(f"NVFlare venv ready in {time.monotonic() - start:.0f}s: {found}", flush=True)
    return python


def _base_python() -> str:
    """The plain interpreter this venv was made from (NVFlare's venv gets none of our packages)."""
    return getattr(sys, "_base_executable", None) or sys.executable


# ----- the runs -----------------------------------------------------------------------------
def clock_file(out: Path) -> Path:
    path = out / "clock.jsonl"
    path.unlink(missing_ok=True)
    os.environ["PEERS_CLOCK"] = str(path)
    return path


def run_ours(k: int, args: argparse.Namespace, out: Path) -> Side:
    """The job through alphafed-flwr's simulation command at K batches per exchange."""
    import peers_job  # pylint: disable=import-outside-toplevel

    out.mkdir(parents=True, exist_ok=True)
    clock = clock_file(out)
    cmd = ["-m", "alphafed_flwr.simulation", "--host", HOST, "--collaborator", COLLABORATOR,
           "--rounds", str(args.epochs), "--batches-per-exchange", str(k), "--seed", "0", "--fresh",
           "--data-dir", args.data_dir, "--out", str(out / "run")]
    wall, _ = run_command(cmd, out / "run.log", timeout=args.timeout)
    summary = json.loads((out / "run" / "summary.json").read_text())
    if summary.get("status") != "completed":
        raise RuntimeError(f"alphafed-flwr K={k} did not complete: {summary.get('status')} (see {out / 'run.log'})")
    accuracy = {r["round"]: r["test"]["accuracy"] for r in summary["rounds"] if r.get("test")}
    exchanges = statistics.median(r["stats"]["exchanges"] for r in summary["rounds"])
    rounds = ", ".join(f"{r['seconds']:.2f}" for r in summary["rounds"])
    return Side(f"alphafed-flwr K={k}", peers_job.epoch_seconds(clock, peers_job.OURS), accuracy, wall,
                [f"{exchanges:.0f} exchanges per round", f"product's round times incl. test {rounds}s",
                 threads_note(clock, peers_job.OURS, args.threads)])


def run_plain(args: argparse.Namespace) -> Side:
    """The job in plain PyTorch in one process (no framework): the reference."""
    import peers_job  # pylint: disable=import-outside-toplevel

    start = time.monotonic()
    results = peers_job.train_in_one_process(args.data_dir, args.epochs)
    return Side("plain PyTorch, 1 proc.", {i + 1: r["seconds"] for i, r in enumerate(results)},
                {i + 1: r["accuracy"] for i, r in enumerate(results)}, time.monotonic() - start)


JOB_SCRIPT = '''"""Generated by bench/vertical_peers.py: the job as NVFlare's split-learning tutorial builds it."""
import sys

from nvflare.app_common.executors.splitnn_learner_executor import SplitNNLearnerExecutor
from nvflare.app_common.shareablegenerators.full_model_shareable_generator import FullModelShareableGenerator
from nvflare.app_common.workflows.splitnn_workflow import SplitNNConstants, SplitNNController
from nvflare.app_opt.pt.file_model_persistor import PTFileModelPersistor
from nvflare.job_config.api import FedJob
from peers_nvflare import PeersSplitLearner, PeersSplitNN

epochs, data_dir, workspace = int(sys.argv[1]), sys.argv[2], sys.argv[3]
job = FedJob(name="{name}", min_clients=2)
job.to_server(
    SplitNNController(
        num_rounds=epochs,  # the learner reads these rounds as epochs
        batch_size={batch},
        start_round=0,
        persistor_id=job.as_id(PTFileModelPersistor(model=PeersSplitNN())),
        task_timeout=0,
        shareable_generator_id=job.as_id(FullModelShareableGenerator()),
    )
)
for i in range(2):
    learner_id = job.as_id(PeersSplitLearner(data_dir=data_dir, split_id=i))
    job.to(SplitNNLearnerExecutor(learner_id=learner_id), f"site-{{i + 1}}",
           tasks=[SplitNNConstants.TASK_INIT_MODEL, SplitNNConstants.TASK_TRAIN])
job.simulator_run(workspace, threads=2)  # NVFlare's simulator: both sites (site-1, site-2) at once
'''


def run_nvflare(python: Path, args: argparse.Namespace, out: Path) -> Side:
    """The job as an NVFlare SplitNN job in NVFlare's simulator (2 sites, 2 threads)."""
    import peers_job  # pylint: disable=import-outside-toplevel

    out.mkdir(parents=True, exist_ok=True)
    clock = clock_file(out)
    result = out / "result.jsonl"
    result.unlink(missing_ok=True)
    workspace = out / "workspace"
    shutil.rmtree(workspace, ignore_errors=True)
    env = {**os.environ, "PEERS_RESULT": str(result), "NO_COLOR": "1"}
    with tempfile.TemporaryDirectory(prefix="peers-nvflare-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("peers_job.py", "peers_nvflare.py"):
            shutil.copy(BENCH / name, src / name)
        (src / "job.py").write_text(JOB_SCRIPT.format(name=JOB_NAME, batch=peers_job.BATCH_SIZE))
        start = time.monotonic()
        _run([str(python), "job.py", str(args.epochs), args.data_dir, str(workspace)], src, env,
             out / "simulator.log", args.timeout, "the NVFlare job in NVFlare's simulator")
        wall = time.monotonic() - start
    accuracy = {}
    if result.exists():
        for line in result.read_text().splitlines():
            row = json.loads(line)
            accuracy[int(row["epoch"])] = float(row["accuracy"])
    epochs = peers_job.epoch_seconds(clock, peers_job.NVFLARE)
    if len(accuracy) != args.epochs or len(epochs) != args.epochs:
        raise RuntimeError(f"NVFlare's run reported {len(epochs)} epochs and {len(accuracy)} tests of "
                           f"{args.epochs} (see {out / 'simulator.log'} and {workspace})")
    return Side(f"NVFlare {NVFLARE_VERSION} SplitNN", epochs, accuracy, wall,
                [f"{peers_job.batch_count(_train_count(args))} aux round trips per epoch",
                 threads_note(clock, peers_job.NVFLARE, args.threads)])


def threads_note(clock: Path, side: str, wanted: int) -> str:
    """The torch threads each party reported; an error if any differs from ``wanted``."""
    import peers_job  # pylint: disable=import-outside-toplevel

    found = peers_job.threads_used(clock, side)
    if not found or any(counts != {wanted} for counts in found.values()):
        raise RuntimeError(f"{side}: parties ran with torch threads {found or 'unreported'}, not {wanted}")
    return "torch threads " + ", ".join(f"{party} {wanted}" for party in sorted(found))


def _train_count(args: argparse.Namespace) -> int:
    import peers_job  # pylint: disable=import-outside-toplevel

    return len(peers_job.cached_split(args.data_dir, True)[1])


def _run(cmd: list[str], cwd: Path, env: dict[str, str], log: Path, timeout: float, what: str) -> None:
    with log.open("w") as out:
        try:
            code = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=timeout, check=False, start_new_session=True).returncode
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"{what} did not finish within {timeout:.0f}s (see {log})") from exc
    if code != 0:
        raise RuntimeError(f"{what} failed ({code}); see {log}")


# ----- main ---------------------------------------------------------------------------------
def set_threads(threads: int) -> None:
    """The same thread settings for every process of both sides (inherited through the env)."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PEERS_THREADS"):
        os.environ[name] = str(threads)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16],
                        help="batches per exchange on our side; K=1 first, the others compete for 'best K'")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads of every process")
    parser.add_argument("--data-dir", default=default_data_dir(), help="MNIST in torchvision's layout")
    parser.add_argument("--train", type=int, help="use only the first N training images (dry runs)")
    parser.add_argument("--test", type=int, help="use only the first N test images (dry runs)")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="NVFlare's venv (made if missing)")
    parser.add_argument("--only", choices=["ours", "nvflare"], help="run one side (dry runs)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--out", default="runs/bench/peers")
    args = parser.parse_args()
    if not args.data_dir:
        raise SystemExit("no MNIST found: give --data-dir, a folder in torchvision's layout (MNIST/raw/*-ubyte)")
    args.data_dir = str(Path(args.data_dir).resolve())
    if 1 not in args.ks:
        args.ks = [1, *args.ks]
    set_threads(args.threads)
    for name, limit in (("PEERS_TRAIN", args.train), ("PEERS_TEST", args.test)):
        os.environ.pop(name, None)
        if limit is not None:
            os.environ[name] = str(limit)
    sys.path.insert(0, str(BENCH))
    import peers_job  # pylint: disable=import-outside-toplevel

    out = (ROOT / args.out).resolve()
    python = ensure_nvflare(args.venv.expanduser(), out / "install.log") if args.only != "ours" else None
    train, test = _train_count(args), len(peers_job.cached_split(args.data_dir, False)[1])
    print(f"job: MNIST halves, {train} training / {test} test images from {args.data_dir}; batch "
          f"{peers_job.BATCH_SIZE} ({peers_job.batch_count(train)} per epoch), Adam lr {peers_job.LEARNING_RATE}, "
          f"{args.epochs} epochs; threads per process: OMP_NUM_THREADS=MKL_NUM_THREADS=torch={args.threads}; "
          f"torch {our_versions()['torch']} on both sides", flush=True)
    print(f"start: {load()}", flush=True)
    sides: dict[str, Side] = {"plain": run_plain(args)}
    print(sides["plain"].line(), flush=True)
    if args.only != "nvflare":
        side = run_ours(1, args, out / "ours-k1")
        sides["k1"] = side
        print(side.line(), flush=True)
    if python is not None:
        side = run_nvflare(python, args, out / "nvflare")
        sides["nvflare"] = side
        print(side.line(), flush=True)
    if args.only != "nvflare":
        for k in [k for k in args.ks if k != 1]:
            side = run_ours(k, args, out / f"ours-k{k}")
            sides[f"k{k}"] = side
            print(side.line(), flush=True)
    print(f"end: {load()}", flush=True)
    report(sides, args)


def report(sides: dict[str, Side], args: argparse.Namespace) -> None:
    """Ratios, the target and the README line."""
    if "k1" not in sides or "nvflare" not in sides:
        return
    k1, flare = sides["k1"], sides["nvflare"]
    others = {int(key[1:]): side for key, side in sides.items() if key.startswith("k") and key != "k1"}
    plain = sides["plain"]
    good = {k: s for k, s in others.items() if s.final >= k1.final - 0.01}
    best_k = min(good, key=lambda k: good[k].epoch) if good else None
    diff = 100 * (k1.final - flare.final)
    met = k1.epoch < flare.epoch and abs(diff) <= 100 * ACCURACY_TOLERANCE
    print()
    print(f"K=1 vs NVFlare: epoch {k1.epoch:.2f}s vs {flare.epoch:.2f}s = {k1.epoch / flare.epoch:.2f}x; "
          f"accuracy {100 * k1.final:.2f}% vs {100 * flare.final:.2f}% ({diff:+.2f} pp)")
    if best_k is not None:
        best = good[best_k]
        print(f"best K within 1 pp of K=1: K={best_k}, epoch {best.epoch:.2f}s = {best.epoch / flare.epoch:.2f}x "
              f"NVFlare's, accuracy {100 * best.final:.2f}%")
    elif others:
        print(f"no K > 1 within 1 pp of K=1 after {args.epochs} epochs: "
              + ", ".join(f"K={k} {100 * s.final:.2f}%" for k, s in sorted(others.items())))
    print(f"plain PyTorch in one process: epoch {plain.epoch:.2f}s, accuracy {100 * plain.final:.2f}%; "
          f"K=1 = {k1.epoch / plain.epoch:.2f}x, NVFlare = {flare.epoch / plain.epoch:.2f}x its epoch")
    print(f"target: our K=1 epoch faster than NVFlare's at equal accuracy (within {100 * ACCURACY_TOLERANCE:.1f} pp): "
          f"{'met' if met else 'NOT met'}")
    line = (f"README: vertical peers, {args.epochs} epochs, {args.threads} thread(s) per process: plain PyTorch "
            f"{plain.epoch:.2f}s/epoch {100 * plain.final:.2f}%; NVFlare "
            f"{NVFLARE_VERSION} {flare.epoch:.2f}s/epoch {100 * flare.final:.2f}%; ours K=1 {k1.epoch:.2f}s "
            f"({k1.epoch / flare.epoch:.2f}x) {100 * k1.final:.2f}%")
    if best_k is not None:
        line += (f"; K={best_k} {good[best_k].epoch:.2f}s ({good[best_k].epoch / flare.epoch:.2f}x) "
                 f"{100 * good[best_k].final:.2f}%")
    print(line + f"; {load()}")


if __name__ == "__main__":
    main()
