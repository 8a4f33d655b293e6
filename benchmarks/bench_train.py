"""Training: one seed epoch on ml-latest-small (batch 32, 128) and one Netflix-shape step."""

from __future__ import annotations

import pytest
from conftest import synced
from workloads import TRAIN_IMPLS, epoch_workload, step_workload

IMPLS = [name for name, _, _ in TRAIN_IMPLS]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch_size", [32, 128])
def test_epoch(benchmark, device, batch_size, impl):
    w = epoch_workload(batch_size, device)
    if impl not in w.impls:
        pytest.skip(f"{impl} unavailable on {device}")
    w.check()
    benchmark.extra_info.update(w.notes, flops=w.flops)
    benchmark.pedantic(synced(w.impls[impl], device), rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("impl", IMPLS)
def test_netflix_step(benchmark, device, impl):
    w = step_workload("netflix", device)
    if impl not in w.impls:
        pytest.skip(f"{impl} unavailable on {device}")
    w.check()
    benchmark.extra_info.update(w.notes, flops=w.flops)
    benchmark.pedantic(synced(w.impls[impl], device), rounds=7, iterations=1, warmup_rounds=1)
