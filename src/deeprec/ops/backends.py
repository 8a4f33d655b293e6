"""Which implementation of the sparse layers and the multinomial epilogue runs where.

- "native": deeprec's kernels (csrc/sparse_layers/, csrc/multinomial/).
- "torch": torch's own ops: the input layer and dh as CSR matrix products (cuSPARSE on a
  GPU), dW and db through the column index (the transposed batch, as a CSR product and a
  segment sum), the output layer at the stored ratings with ``sampled_addmm``; the
  multinomial epilogue as elementwise ops. Indices are checked on the device first
  (ops/device_checks.py): these ops check none themselves.

Both compute the same loss and gradients (tests hold both to the dense definitions in
float64 to 1e-10, on the CPU, where the torch backend runs when asked for).

The defaults are the measured faster one on each device type:
- CPU: native (16-18x the dense path at ML-32M size, benchmarks/results/cpu-*.md; the
  native epilogue, benchmarks/results/multinomial_cost.md).
- CUDA: torch. The one GPU run (an H200, 2026-11-29, ML-32M shape, fp32) measured the
  input layer at 38 us with torch.sparse.mm against 1,911 us for spmm_rows, and the output
  layer at 775 us with sampled_addmm against 2,073 us for sddmm_residual; the CUDA
  epilogue kernels have not run on a GPU yet. deeprec's CUDA kernels stay selectable by
  name and become the default only once a GPU run measures them faster
  (benchmarks/gpu_check.sh measures both).
"""

from __future__ import annotations

import torch

BACKENDS = ("native", "torch")
DEFAULTS = {"cpu": "native", "cuda": "torch"}


def default(device: torch.device | str) -> str:
    """The measured faster backend on ``device``'s type (torch's ops on other types)."""
    return DEFAULTS.get(torch.device(device).type, "torch")


def resolve(backend: str | None, like: object) -> object:
    """``backend``, or for None the default on ``like``'s device (a tensor's; anything else
    is passed on for the op's validator to refuse)."""
    if backend is None and isinstance(like, torch.Tensor):
        return default(like.device)
    return backend


def check(backend: object) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
