"""Helpers shared by the benchmarks."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def default_data_dir() -> str | None:
    """``../shared/data`` when it is there (real MNIST, 10,000 test images), else None."""
    return str(SHARED_DATA) if (SHARED_DATA / "MNIST" / "raw").is_dir() else None


def run_command(args: list[str], log: Path, timeout: float = 1800) -> tuple[float, str]:
    """Run ``python args...`` from the repository root; return (wall seconds, output)."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "NO_COLOR": "1"},
    )
    wall = time.monotonic() - start
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}); see {log}")
    return wall, proc.stdout


def last_json(text: str) -> dict[str, Any]:
    """The last line of ``text`` that parses as a JSON object."""
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise ValueError("no JSON line in the output")


def spread(values: list[float]) -> str:
    """``median (min-max)``."""
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"
