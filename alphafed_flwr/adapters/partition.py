"""Per-client partitions of the scheduler's training dataset (simulation and deployment).

``iid`` and ``dirichlet`` use flwr-datasets' partitioners on a table of sample indices
(and labels), so the partition math is Flower's own. ``sample`` draws a few indices with
replacement, seeded by the partition id, for runs with very many virtual clients where
materialising every partition up front would not scale.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset

from alphafed_flwr.api.errors import ConfigError

SCHEMES = ("iid", "dirichlet", "sample")


@dataclass(frozen=True)
class PartitionSpec:
    """How the training dataset is split between ``num_partitions`` clients.

    Parameters
    ----------
    scheme : str
        ``"iid"``, ``"dirichlet"`` (label skew, needs labels) or ``"sample"``.
    num_partitions : int
        Number of clients sharing the dataset.
    alpha : float
        Dirichlet concentration (smaller: more skew).
    seed : int
        Seed of the partitioner.
    samples : int
        Samples per client for ``sample``.
    """

    scheme: str
    num_partitions: int
    alpha: float = 0.5
    seed: int = 0
    samples: int = 32

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ConfigError(f"unknown partition scheme '{self.scheme}': use one of {SCHEMES}")
        if self.num_partitions < 1:
            raise ConfigError(f"num_partitions must be >= 1, got {self.num_partitions}")
        if self.scheme == "dirichlet" and self.alpha <= 0:
            raise ConfigError(f"--alpha must be > 0, got {self.alpha}")


def partition_indices(spec: PartitionSpec, dataset: Dataset, partition_id: int) -> np.ndarray:
    """Indices of ``dataset`` that belong to ``partition_id``."""
    if not 0 <= partition_id < spec.num_partitions:
        raise ConfigError(
            f"partition id {partition_id} is outside 0..{spec.num_partitions - 1}"
        )
    size = len(dataset)  # type: ignore[arg-type]
    if spec.scheme == "sample":
        rng = np.random.default_rng([spec.seed, partition_id])
        return rng.integers(0, size, size=spec.samples)
    labels = _labels(dataset) if spec.scheme == "dirichlet" else None
    partitioner = _partitioner(spec, size, None if labels is None else labels.tobytes())
    return np.asarray(partitioner.load_partition(partition_id)["idx"], dtype=np.int64)


@functools.lru_cache(maxsize=8)
def _partitioner(spec: PartitionSpec, size: int, label_bytes: bytes | None) -> Any:
    from datasets import Dataset as HFDataset  # pylint: disable=import-outside-toplevel
    from flwr_datasets.partitioner import (  # pylint: disable=import-outside-toplevel
        DirichletPartitioner,
        IidPartitioner,
    )

    if spec.num_partitions > size:
        raise ConfigError(
            f"cannot split {size} samples into {spec.num_partitions} partitions: use fewer "
            "clients or --partition sample"
        )
    columns: dict[str, Any] = {"idx": np.arange(size)}
    if spec.scheme == "iid":
        partitioner: Any = IidPartitioner(num_partitions=spec.num_partitions)
    else:
        columns["label"] = np.frombuffer(label_bytes or b"", dtype=np.int64)
        partitioner = DirichletPartitioner(
            num_partitions=spec.num_partitions,
            partition_by="label",
            alpha=spec.alpha,
            min_partition_size=0,
            self_balancing=False,
            shuffle=True,
            seed=spec.seed,
        )
    partitioner.dataset = HFDataset.from_dict(columns)
    return partitioner


def _labels(dataset: Dataset) -> np.ndarray:
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return np.asarray(targets, dtype=np.int64).reshape(-1)
    try:
        return np.asarray([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(
            "--partition dirichlet needs labels: the dataset has no 'targets' attribute and "
            f"its items are not (input, integer label) pairs ({exc}); use --partition iid"
        ) from exc


def partition_loader(
    loader: DataLoader, indices: np.ndarray, full_batch: bool = False
) -> DataLoader:
    """A loader like ``loader`` over ``Subset(loader.dataset, indices)``.

    Batch size, shuffling, collate function, workers and ``drop_last`` are kept; with
    ``full_batch`` the whole partition is one batch (FedSGD).
    """
    if loader.batch_size is None:
        raise ConfigError(
            "the training loader uses a custom batch_sampler; partitioning needs a "
            "DataLoader built with batch_size"
        )
    subset = Subset(loader.dataset, indices.tolist())
    return DataLoader(
        subset,
        batch_size=max(len(subset), 1) if full_batch else loader.batch_size,
        shuffle=isinstance(loader.sampler, RandomSampler),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
    )
