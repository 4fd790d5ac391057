"""The run lifecycle that every server side shares (``HorizontalServer``, ``VerticalHost``).

- **Resume**: the summary continues the interrupted run's, and every metrics CSV loses the
  rows of rounds after the checkpoint (they are run again).
- **Finish**: the summary records the status, the rounds completed, the last test, the
  run's seconds (and the error of a failed run).
- **Errors**: a strategy's error fails the task (``TaskFailed``, one line for the user);
  anything else is recorded and raised as it is.

The checkpoints themselves are ``outputs.Checkpoint`` (one file) and
``vertical_common.RoundCheckpoints`` (one ``Checkpoint`` per kept round).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alphafed_flwr.api.errors import TaskFailed
from alphafed_flwr.api.metrics import truncate_csv_after_round
from alphafed_flwr.strategies.errors import StrategyError

from .outputs import RunSummary

#: The metrics folder of a run's output folder (``<out>/metrics/*.csv``).
METRICS_DIR = "metrics"


def resumed_summary(out: Path, config: Mapping[str, Any], meta: Mapping[str, Any], done: int) -> RunSummary:
    """The summary of a run resumed after round ``done``; metrics rows after it dropped.

    Parameters
    ----------
    out : Path
        The run's output folder.
    config : Mapping[str, Any]
        The run configuration recorded in the summary.
    meta : Mapping[str, Any]
        The checkpoint's metadata (its ``summary`` is the interrupted run's).
    done : int
        The checkpoint's round.
    """
    summary = RunSummary(out, config, meta.get("summary"))
    summary.data["resumed_from_round"] = done
    for csv in (Path(out) / METRICS_DIR).rglob("*.csv"):
        truncate_csv_after_round(csv, done)
    return summary


def finish_summary(
    summary: RunSummary, status: str, seconds: float = 0.0, error: str | None = None, **extra: Any
) -> dict[str, Any]:
    """Record the end of a run in ``summary.json``; return its content.

    Parameters
    ----------
    summary : RunSummary
        The run's summary.
    status : str
        ``completed`` or ``failed``.
    seconds : float
        The run's duration.
    error : str | None
        Why a failed run failed.
    **extra : Any
        More fields (e.g. ``outputs``).
    """
    rounds = summary.data["rounds"]
    fields: dict[str, Any] = {
        "rounds_completed": rounds[-1]["round"] if rounds else 0,
        "final_test": next((r["test"] for r in reversed(rounds) if r.get("test")), {}),
        "run_seconds": round(seconds, 3),
        **extra,
    }
    if error:
        fields["error"] = error
    summary.finish(status, **fields)
    return summary.data


@contextmanager
def failures_recorded(fail: Callable[[str], Any]) -> Iterator[None]:
    """Call ``fail(reason)`` when the run raises; a strategy's error becomes ``TaskFailed``.

    Parameters
    ----------
    fail : Callable[[str], Any]
        Records the failure (e.g. finishes the summary as ``failed``).
    """
    try:
        yield
    except StrategyError as exc:
        fail(str(exc))
        raise TaskFailed(str(exc)) from exc
    except BaseException as exc:
        fail(f"{type(exc).__name__}: {exc}")
        raise
