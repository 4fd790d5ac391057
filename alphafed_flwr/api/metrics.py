"""Metrics groups: ``@register_metrics`` and ``self.get_metrics(name).append_metrics_item``.

Each group is one CSV file, ``<out>/metrics/<group name>.csv``, with a leading ``round``
column (unless the user's keys contain one). Every row is appended and flushed as it is
recorded, so a crash loses nothing.
"""

from __future__ import annotations

import csv
import functools
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


class MetricsGroup:
    """Rows of one metrics group.

    Parameters
    ----------
    name : str
        Group name (the CSV file's stem).
    keys : Sequence[str]
        Column names; every row must have exactly these keys.
    round_fn : Callable[[], int]
        Returns the current round, stored with each row.
    csv_path : Path | None
        Where rows are appended; ``None`` keeps them in memory only.
    """

    def __init__(
        self,
        name: str,
        keys: Sequence[str],
        round_fn: Callable[[], int],
        csv_path: Path | None = None,
    ) -> None:
        if not keys:
            raise ConfigError(f"metrics group '{name}' needs at least one key")
        self.name = name
        self.keys = list(keys)
        self.rows: list[dict[str, Any]] = []
        self._round_fn = round_fn
        self.csv_path = csv_path
        self._with_round = "round" not in self.keys

    @property
    def columns(self) -> list[str]:
        """CSV header."""
        return (["round"] if self._with_round else []) + self.keys

    def append_metrics_item(self, item: Mapping[str, Any]) -> None:
        """Record one row; every registered key must be present and no other key."""
        if not isinstance(item, Mapping):
            raise ConfigError(
                f"metrics group '{self.name}': append_metrics_item takes a dict, "
                f"got {type(item).__name__}"
            )
        missing = [k for k in self.keys if k not in item]
        unknown = [k for k in item if k not in self.keys]
        if missing or unknown:
            problems = []
            if missing:
                problems.append(f"missing key(s) {missing}")
            if unknown:
                problems.append(f"unknown key(s) {unknown}")
            raise ConfigError(
                f"metrics group '{self.name}': {' and '.join(problems)}; "
                f"the registered keys are {self.keys} "
                f"(change @register_metrics(name='{self.name}', keys=[...]) or the row)"
            )
        row = {"round": self._round_fn()} if self._with_round else {}
        row.update({k: _plain(item[k]) for k in self.keys})
        self.rows.append(row)
        if self.csv_path is not None:
            append_csv_row(self.csv_path, self.columns, row)


def register_metrics(name: str, keys: Sequence[str]) -> Callable[[F], F]:
    """Declare a metrics group on a scheduler method (stackable, as in AlphaFed).

    The group exists once the decorated method has been called at least once, or as soon
    as the scheduler is bound to a run (the adapters register declared groups up front).
    """
    keys = list(keys)

    def decorator(fn: F) -> F:
        declared = list(getattr(fn, "_alphafed_metrics", []))
        declared.append((name, keys))

        @functools.wraps(fn)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            for group, group_keys in declared:
                self._ensure_metrics(group, group_keys)
            return fn(self, *args, **kwargs)

        wrapper._alphafed_metrics = declared  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator


def declared_metrics(obj: Any) -> list[tuple[str, list[str]]]:
    """All ``(name, keys)`` groups declared with ``@register_metrics`` on ``obj``'s class."""
    found: dict[str, list[str]] = {}
    for attr in dir(type(obj)):
        fn = getattr(type(obj), attr, None)
        for group, keys in getattr(fn, "_alphafed_metrics", []):
            found.setdefault(group, keys)
    return list(found.items())


def csv_path_for(out_dir: Path, group: str) -> Path:
    """``<out>/metrics/<group>.csv``."""
    return csv_file(Path(out_dir) / "metrics", group)


def csv_file(folder: Path, name: str) -> Path:
    """``<folder>/<name>.csv`` with a file-system-safe name."""
    return Path(folder) / f"{_SAFE_NAME.sub('_', name)}.csv"


def append_csv_row(path: Path, columns: Sequence[str], row: Mapping[str, Any]) -> None:
    """Append one row (writing the header first if the file is new) and flush it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    is_new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        if is_new:
            writer.writeheader()
        writer.writerow(dict(row))
        handle.flush()


def truncate_csv_after_round(path: Path, last_round: int) -> None:
    """Drop rows recorded after ``last_round`` (used when a run resumes from a checkpoint)."""
    if not path.exists():
        return
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if "round" not in columns:
            return
        rows = [r for r in reader if _as_int(r.get("round")) <= last_round]
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def numeric_items(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The finite numeric values of the last row per key (for progress lines and replies)."""
    out: dict[str, float] = {}
    for row in rows:
        for key, value in row.items():
            if key == "round":
                continue
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                if math.isfinite(float(value)):
                    out[key] = float(value)
    return out


def _plain(value: Any) -> Any:
    """Tensors and numpy scalars become Python numbers."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 0) == 0:
        return item()
    return value


def _as_int(value: Any) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return 0
