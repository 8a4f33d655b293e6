"""masked_mse forward+backward at the seed, Netflix and ML-20M batch shapes."""

from __future__ import annotations

import pytest
import torch
from conftest import synced
from workloads import LOSS_SHAPES, loss_workload

IMPLS = ["dense eager (seed)", "dense torch.compile", "reference (CSR)", "fused"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", list(LOSS_SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_loss(benchmark, device, shape, impl, dtype):
    if dtype == torch.bfloat16 and device == "cpu":
        pytest.skip("bf16 is measured on the GPU only")
    w = loss_workload(shape, device, dtype)
    if impl not in w.impls:
        pytest.skip(f"{impl} unavailable on {device}")
    w.check()  # equal work, outside the timed region
    benchmark.extra_info.update(w.notes, bytes_moved=w.bytes_moved)
    benchmark.pedantic(synced(w.impls[impl], device), rounds=21, iterations=5, warmup_rounds=2)
