"""Loads the compiled module deeprec._C once and remembers why it failed, if it did.

The package works without it (every op has a pure-PyTorch reference), so an
import failure is recorded here and reported by ``deeprec.info`` and by
``impl="fused"`` errors instead of being raised at ``import deeprec``.
"""

from __future__ import annotations

from types import ModuleType

import torch

_C: ModuleType | None
try:
    from deeprec import _C
except ImportError as exc:  # not built (source checkout) or built for another platform
    _C = None
    IMPORT_ERROR: str | None = f"{type(exc).__name__}: {exc}"
else:
    IMPORT_ERROR = None

# Scalar and index dtype codes, as csrc/common.h defines them.
DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
INDEX_CODE = {torch.int32: 0, torch.int64: 1}
# Which output dtypes the fused kernels cover on each device type.
FUSED_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}


def module() -> ModuleType | None:
    """The compiled module, or None when it could not be imported."""
    return _C


def unavailable_reason(device: torch.device | str) -> str | None:
    """Why the fused kernels cannot run on ``device``, or None when they can."""
    device = torch.device(device)
    if _C is None:
        return f"the native module deeprec._C is not importable ({IMPORT_ERROR})"
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        return f"no fused kernels for device type {device.type!r}"
    if not _C.WITH_CUDA:
        return "deeprec was built without CUDA kernels (nvcc not found or DEEPREC_CUDA=0)"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    index = device.index if device.index is not None else torch.cuda.current_device()
    problem = _C.cuda_kernel_problem(index)
    if problem:
        return f"the CUDA kernels cannot run on cuda:{index} ({problem}; built for {_C.CUDA_ARCHS})"
    return None
