"""Records (optimizer state, arrays) and partitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import RecordDict
from torch.utils.data import DataLoader, TensorDataset

from alphafed_flwr.adapters.partition import PartitionSpec, partition_indices, partition_loader
from alphafed_flwr.adapters.records import (
    arrays_to_state,
    restore_optimizer,
    save_optimizer,
    state_to_arrays,
)
from alphafed_flwr.api import ConfigError


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [(torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}), (torch.optim.Adam, {"lr": 0.01, "betas": (0.8, 0.9)})],
)
def test_optimizer_state_survives_the_trip_through_context_state(cls, kwargs) -> None:  # noqa: ANN001
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    optimizer = cls(model.parameters(), **kwargs)
    model(torch.randn(8, 3)).sum().backward()
    optimizer.step()
    state = RecordDict()
    save_optimizer(state, optimizer)
    fresh = cls(model.parameters(), **kwargs)
    assert restore_optimizer(state, fresh)
    before, after = optimizer.state_dict(), fresh.state_dict()
    assert before["param_groups"] == after["param_groups"]
    for index, values in before["state"].items():
        for name, value in values.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(after["state"][index][name]))


def test_state_dicts_keep_shapes_and_integer_buffers() -> None:
    model = torch.nn.BatchNorm1d(3)
    state = arrays_to_state(state_to_arrays(model.state_dict()))
    assert state["num_batches_tracked"].dtype == torch.int64
    assert state["num_batches_tracked"].shape == torch.Size([])
    model.load_state_dict(state)
    with pytest.raises(ConfigError, match="'x' is a str"):
        state_to_arrays({"x": "text"})


def dataset(n: int = 100) -> TensorDataset:
    data = TensorDataset(torch.randn(n, 2), torch.arange(n) % 5)
    data.targets = data.tensors[1]  # type: ignore[attr-defined]
    return data


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partitions_cover_the_dataset_and_are_reproducible(scheme: str) -> None:
    spec = PartitionSpec(scheme, 4, alpha=0.3, seed=7)
    parts = [partition_indices(spec, dataset(), i) for i in range(4)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    again = [partition_indices(PartitionSpec(scheme, 4, alpha=0.3, seed=7), dataset(), i) for i in range(4)]
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_sample_partitions_are_lazy_per_id_and_seeded() -> None:
    spec = PartitionSpec("sample", 100_000, seed=3, samples=5)
    a = partition_indices(spec, dataset(), 99_999)
    assert len(a) == 5 and np.array_equal(a, partition_indices(spec, dataset(), 99_999))
    with pytest.raises(ConfigError, match="outside 0..99999"):
        partition_indices(spec, dataset(), 100_000)


def test_partition_loader_keeps_settings_and_can_be_full_batch() -> None:
    loader = DataLoader(dataset(), batch_size=8, shuffle=True, drop_last=True)
    part = partition_loader(loader, np.arange(20))
    assert part.batch_size == 8 and part.drop_last and len(part.dataset) == 20
    full = partition_loader(loader, np.arange(20), full_batch=True)
    assert full.batch_size == 20 and len(list(full)) == 1
