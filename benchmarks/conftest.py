"""pytest-benchmark setup: the workloads module is importable and CUDA clocks synchronize.

Run with: pytest benchmarks/ --benchmark-only [--benchmark-json out.json]
(plain `pytest` collects tests/ only).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def synced(fn, device: str):
    """fn followed by a CUDA synchronize, so the benchmark clock stops after the GPU work."""
    if not device.startswith("cuda"):
        return fn

    def run():
        fn()
        torch.cuda.synchronize(device)

    return run


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
