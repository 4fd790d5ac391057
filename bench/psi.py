"""PSI near the primitive's limit: a host and one collaborator with 1,000,000 IDs each, half
in common, as two deployments on loopback (``python -m alphafed_flwr.server`` and ``.client``,
Flower's SuperLink and SuperNode), against the limit measured in the same run.

    python bench/psi.py [--ids 1000000] [--repeat 3] [--rate-seconds 8] [--in-process IDS]

The two-party protocol takes 4n X25519 multiplications (n = IDs per party: each party
blinds its own list and the other's). The limit is 4n divided by the rate of raw X25519
multiplications on both cores (two processes at once), measured just before and just after
the PSI (their mean), with two implementations: OpenSSL through ``cryptography`` (prebuilt
key objects) and libsodium through ctypes (the PSI's own call); the limit takes the faster.
The PSI time is the host's own log line (start to the last reply); memory is the peak,
sampled every 0.5 s, of the resident set sizes summed over each side's process tree
(psutil). On a shared machine the wall-time ratio moves with other people's load (the speed
of raw multiplications drifts by several percent within minutes), so the bench runs the
deployment ``--repeat`` times (default 3), each between two rate measurements and against
its own limit, and reports the median ratio with every run's; it also prints the load
average and the CPU seconds both parties' process trees spent during the PSI against the CPU
seconds of 4n raw multiplications (rates per CPU second, same measurements), and those CPU
seconds by process (``psi_cpu_seconds_by_role``: ServerApp, executor, SuperLink, SuperNode).
``--in-process IDS`` also runs the protocol with both parties in this process (messages
through the payload codec, no transport): its CPU seconds against raw multiplications are
the protocol's own overhead, hashing included. The task is
``bench/psi_task.py``; messages carry chunks of ``alphafed_flwr.psi.CHUNK`` points.

    python bench/psi.py --in-process 100000 --no-deployment
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from common import ROOT

TASK = "bench/psi_task.py"
KINDS = ("openssl", "libsodium")


def _multiply_for(kind: str, seconds: float, out: Any) -> None:
    """One process: raw X25519 multiplications for ``seconds``; puts the rate (per wall
    second, per CPU second). ``openssl``: ``cryptography``'s X25519 with prebuilt key
    objects; ``libsodium``: ``crypto_scalarmult_curve25519`` through ctypes, as the PSI calls it."""
    if kind == "openssl":
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: PLC0415

        key = X25519PrivateKey.generate()
        peers = [X25519PrivateKey.generate().public_key() for _ in range(256)]
        step = lambda: [key.exchange(p) for p in peers]  # noqa: E731
    else:
        import numpy as np  # noqa: PLC0415

        from alphafed_flwr.psi_core import _hash_all, _x25519, new_key  # noqa: PLC0415

        x25519, key = _x25519(), new_key()
        points = _hash_all([str(i) for i in range(256)])
        result = np.empty_like(points)
        source, target = points.ctypes.data, result.ctypes.data
        step = lambda: [x25519(target + o, key, source + o) for o in range(0, 256 * 32, 32)]  # noqa: E731
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        step()
        done += 256
    out.put((done / (time.perf_counter() - start), done / (time.process_time() - cpu)))


def rate(kind: str, seconds: float, cores: int = 2) -> tuple[float, float]:
    """Scalar multiplications per second on ``cores`` processes running at once, and per
    CPU second (their mean)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_multiply_for, args=(kind, seconds, queue)) for _ in range(cores)]
    for proc in procs:
        proc.start()
    measured = [queue.get(timeout=seconds + 120) for _ in procs]
    for proc in procs:
        proc.join()
    return sum(r[0] for r in measured), sum(r[1] for r in measured) / cores


def tree(pid: int, measure: Any) -> float:
    """``measure(process)`` summed over a process and its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            total += measure(proc)
        except psutil.NoSuchProcess:
            continue
    return total


def rss(proc: psutil.Process) -> float:
    return float(proc.memory_info().rss)


def cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def processes(pid: int, party: str) -> dict[str, float]:
    """CPU seconds of a process and its descendants, by ``"<pid> <party>: <role>"`` (``role``:
    the module or program that the process runs)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    out = {}
    for proc in procs:
        try:
            out[f"{proc.pid} {party}: {role(proc.cmdline())}"] = cpu(proc)
        except psutil.NoSuchProcess:
            continue
    return out


def role(cmdline: list[str]) -> str:
    """``python -m module ...`` -> module; ``program ...`` -> the program's file name."""
    if "-m" in cmdline[:-1]:
        return cmdline[cmdline.index("-m") + 1]
    if "-c" in cmdline[:-1]:  # Flower's entry points started as ``python -c "...sys.argv[0] = 'name'..."``
        named = re.search(r"argv\[0\] = '([^']+)'", cmdline[cmdline.index("-c") + 1])
        return named[1] if named else "python -c"
    scripts = [arg for arg in cmdline[1:] if not arg.startswith("-")][:1] or cmdline[:1]
    return Path(scripts[0]).name if scripts else "?"


def cpu_spent(marks: list[dict[str, float]]) -> dict[str, Any]:
    """CPU seconds of both parties' processes between the PSI's two marks, in all and by role."""
    if len(marks) != 2:
        return {"psi_cpu_seconds": float("nan"), "psi_cpu_seconds_by_role": {}}
    by_role: dict[str, float] = {}
    for key, end in marks[1].items():
        name = key.split(" ", 1)[1]
        by_role[name] = round(by_role.get(name, 0.0) + end - marks[0].get(key, 0.0), 1)
    return {"psi_cpu_seconds": sum(by_role.values()), "psi_cpu_seconds_by_role": by_role}


def free_port() -> int:
    from alphafed_flwr.deploy.processes import free_port as port  # noqa: PLC0415

    return port()


def deploy(ids: int, out: Path) -> dict[str, Any]:
    """Server and client commands on loopback; the host's PSI seconds and peak memory."""
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "NO_COLOR": "1", "PSI_BENCH_IDS": str(ids)}
    out.mkdir(parents=True, exist_ok=True)
    client_log, server_log = (out / "client.log").open("w"), (out / "server.log").open("w")
    client = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "alphafed_flwr.client", "--server", address, "--insecure",
         "--collaborator", f"{TASK}:collaborator", "--out", str(out / "collaborator")],
        cwd=ROOT, env=env, stdout=client_log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    server = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "alphafed_flwr.server", "--host", f"{TASK}:host", "--collaborators", "1",
         "--rounds", "1", "--address", address, "--out", str(out / "host"), "--insecure", "--fresh"],
        cwd=ROOT, env=env, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    peaks = {"host": 0.0, "collaborator": 0.0, "both": 0.0}
    cpu_marks: list[dict[str, float]] = []  # CPU seconds per process when the PSI starts and ends

    def sample() -> None:
        marks = ("Private set intersection of ", "Private set intersection: ")
        while server.poll() is None:
            host, collab = tree(server.pid, rss), tree(client.pid, rss)
            peaks.update(host=max(peaks["host"], host), collaborator=max(peaks["collaborator"], collab),
                         both=max(peaks["both"], host + collab))
            if len(cpu_marks) < 2 and re.search(marks[len(cpu_marks)] + r"\d+ (host|common) IDs",
                                                 (out / "server.log").read_text()):
                cpu_marks.append(processes(server.pid, "host") | processes(client.pid, "collaborator"))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    start = time.monotonic()
    sampler.start()
    try:
        server.wait(timeout=3600)
    finally:
        wall = time.monotonic() - start
        client.terminate()
        client.wait(60)
        sampler.join()
        client_log.close()
        server_log.close()
    text = (out / "server.log").read_text()
    found = re.search(r"Private set intersection: (\d+) common IDs .* in ([\d.]+)s", text)
    if server.returncode != 0 or not found:
        raise RuntimeError(f"the deployment failed; see {out / 'server.log'} and {out / 'client.log'}")
    return {"common": int(found[1]), "psi_seconds": float(found[2]), "wall": wall,
            **cpu_spent(cpu_marks),
            **{f"peak_rss_gb_{k}": v / 1e9 for k, v in peaks.items()}}


def in_process(ids: int) -> dict[str, Any]:
    """Both parties in this process, messages through the payload codec (Flower records)
    but no transport: the protocol's own CPU cost, hashing included."""
    from alphafed_flwr.psi import PsiParty, collaborator_step, run_psi  # noqa: PLC0415
    from alphafed_flwr.strategies.payload import decode, encode  # noqa: PLC0415

    host = PsiParty.create((f"id-{i:07d}" for i in range(ids)), num_keys=1)
    collaborator = PsiParty.from_state((f"id-{i:07d}" for i in range(ids // 2, ids // 2 + ids)), {})

    def exchange(requests: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {n: decode(encode(collaborator_step(collaborator, decode(encode(r)))[0])) for n, r in requests.items()}

    start, cpu_start = time.perf_counter(), time.process_time()
    mine, _ = run_psi(host, ["c1"], exchange)
    if len(mine) != ids // 2:
        raise RuntimeError(f"{len(mine)} common IDs in process, expected {ids // 2}")
    return {"in_process_ids": ids, "in_process_seconds": time.perf_counter() - start,
            "in_process_cpu_seconds": time.process_time() - cpu_start}


def rates(seconds: float) -> dict[str, tuple[float, float]]:
    return {kind: rate(kind, seconds) for kind in KINDS}


def limit(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """Mean rates per implementation, and the faster one's (per wall and per CPU second)."""
    out: dict[str, Any] = {}
    for kind in KINDS:
        out[f"x25519_{kind}_rate_both_cores"] = (before[kind][0] + after[kind][0]) / 2
        out[f"x25519_{kind}_rate_spread"] = [before[kind][0], after[kind][0]]
        out[f"x25519_{kind}_rate_per_cpu_second"] = (before[kind][1] + after[kind][1]) / 2
    fastest = max(KINDS, key=lambda k: out[f"x25519_{k}_rate_both_cores"])
    out["x25519_fastest"] = fastest
    out["x25519_rate_both_cores"] = out[f"x25519_{fastest}_rate_both_cores"]
    out["x25519_rate_per_cpu_second"] = max(out[f"x25519_{k}_rate_per_cpu_second"] for k in KINDS)
    return out


def summary(run: dict[str, Any], before: dict[str, Any], after: dict[str, Any], ids: int) -> dict[str, Any]:
    """One deployment run against the limit from the rates measured just before and after it."""
    if run["common"] != ids // 2:
        raise RuntimeError(f"{run['common']} common IDs, expected {ids // 2}")
    result = {**limit(before, after), **run, "ids": ids, "multiplications": 4 * ids}
    result["limit_s"] = 4 * ids / result["x25519_rate_both_cores"]
    result["ratio"] = run["psi_seconds"] / result["limit_s"]
    result["cpu_ratio"] = run["psi_cpu_seconds"] / (4 * ids / result["x25519_rate_per_cpu_second"])
    return result


def readme_line(result: dict[str, Any], load: str) -> str:
    """The README line of one run."""
    ids = result["ids"]
    return (
        f"README: PSI {ids:,} x {ids:,} IDs (50% common), loopback deployment: "
        f"{result['psi_seconds']:.1f} s = {result['ratio']:.2f}x the X25519 limit ({result['limit_s']:.1f} s: "
        f"4n / {result['x25519_rate_both_cores']:,.0f} raw X25519 per s on 2 cores, "
        f"{result['x25519_fastest']}; OpenSSL {result['x25519_openssl_rate_both_cores']:,.0f}, "
        f"libsodium {result['x25519_libsodium_rate_both_cores']:,.0f}); peak RSS host "
        f"{result['peak_rss_gb_host']:.2f} GB, collaborator {result['peak_rss_gb_collaborator']:.2f} GB "
        f"(together {result['peak_rss_gb_both']:.2f} GB); CPU seconds of both parties during the PSI "
        f"{result['psi_cpu_seconds']:.0f} = {result['cpu_ratio']:.2f}x those of 4n raw multiplications; "
        f"whole run {result['wall']:.0f} s; {load}"
    )


def median_line(runs: list[dict[str, Any]], load: str) -> str:
    """The README line of several runs: the median ratio and every run's figures."""
    def listed(key: str, form: str) -> str:
        return ", ".join(format(run[key], form) for run in runs)

    ids = runs[0]["ids"]
    return (
        f"README: PSI {ids:,} x {ids:,} IDs (50% common), loopback deployment, {len(runs)} runs: median "
        f"{statistics.median(run['ratio'] for run in runs):.2f}x the X25519 limit "
        f"(each run: {listed('ratio', '.2f')}x; "
        f"{listed('psi_seconds', '.1f')} s against limits of {listed('limit_s', '.1f')} s from the raw X25519 "
        f"rates measured just before and after it); CPU seconds {listed('cpu_ratio', '.2f')}x those of 4n raw "
        f"multiplications; peak RSS together at most {max(run['peak_rss_gb_both'] for run in runs):.2f} GB; {load}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ids", type=int, default=1_000_000, help="IDs per party (half in common)")
    parser.add_argument("--rate-seconds", type=float, default=8.0, help="length of each rate measurement")
    parser.add_argument("--repeat", type=int, default=3,
                        help="deployment runs, each between two rate measurements; the median ratio is reported")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--in-process", type=int, default=0, metavar="IDS",
                        help="also run the protocol with both parties in this process at IDS IDs each")
    parser.add_argument("--no-deployment", action="store_true", help="skip the loopback deployment")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="psi-bench-"))
    load_before = os.getloadavg()
    measured = [rates(args.rate_seconds)]
    local = in_process(args.in_process) if args.in_process else {}
    runs: list[dict[str, Any]] = []
    for index in range(0 if args.no_deployment else args.repeat):
        run = deploy(args.ids, out / f"run{index + 1}")
        measured.append(rates(args.rate_seconds))
        runs.append(summary(run, measured[-2], measured[-1], args.ids))
    result: dict[str, Any] = {**limit(measured[0], measured[-1]), **local, "runs": runs,
                              "load_average_before": load_before, "load_average_after": os.getloadavg()}
    load = f"load average {load_before[0]:.1f} before, {result['load_average_after'][0]:.1f} after"
    if local:
        per_cpu = result["x25519_rate_per_cpu_second"]
        result["in_process_cpu_ratio"] = local["in_process_cpu_seconds"] / (4 * args.in_process / per_cpu)
    print(json.dumps(result, indent=1))
    if local:
        print(f"README: in process, {args.in_process:,} x {args.in_process:,} IDs: "
              f"{local['in_process_cpu_seconds']:.1f} CPU s = {result['in_process_cpu_ratio']:.2f}x the CPU "
              f"seconds of 4n raw X25519 multiplications ({per_cpu:,.0f} per CPU second); {load}")
    if len(runs) == 1:
        print(readme_line(runs[0], load))
    elif runs:
        print(median_line(runs, load))

if __name__ == "__main__":
    main()
