"""benchmarks/gpu_profile.py's tables, from a made-up profile (the profile itself needs a GPU;
gpu_check.sh runs it there)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_profile


def test_the_tables_show_every_impl_sync_site_and_kernel_floor():
    rep = {
        "machine": {"gpu": "NVIDIA H200"},
        "bandwidth_GBps": 3776.0,
        "workloads": [
            {
                "workload": "step ml-32m b512 long-tailed",
                "impl": "--fused",
                "wall_ms": 1.5,
                "gpu_busy_ms": 1.25,
                "syncs": 1,
                "sync_sites": {"training.py:120 value = read_checked(self.total)": 1},
                "kernels_ms": {"spmm_rows_kernel": 0.04, "row_adam_kernel": 0.3},
            },
            {"workload": "?", "error": "Traceback ..."},
        ],
        "kernels": {
            "ml-32m": [
                {
                    "op": "input layer x @ W, forward",
                    "kernel": "spmm_rows_kernel",
                    "kernel_ms": 0.084,
                    "floor_ms": 0.042,
                    "wall_ms": 0.1,
                    "libraries_ms": {"cuSPARSE torch.sparse.mm": 0.038},
                }
            ]
        },
    }
    md = gpu_profile.to_markdown(rep)
    assert "| step ml-32m b512 long-tailed | --fused | 1.500 | 1.250 | 1 | 0.340 |" in md
    assert "1 x `training.py:120 value = read_checked(self.total)`" in md
    assert (
        "| input layer x @ W, forward | 0.084 | 0.042 | 2.0x | cuSPARSE torch.sparse.mm 0.038 |"
        in md
    )
    assert "| ? | error |" in md
