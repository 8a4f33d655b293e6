"""How an op reaches native code: the impl choice, the checks shared by every op, and
``launch``, the one place that picks the CPU or CUDA entry point of a kernel.

Kept in one place so every op module launches the same way: addresses of
contiguous tensors, dtype codes read from the compiled module, torch's thread
count on the CPU, torch's current stream (and a reduction workspace) on CUDA.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch

from deeprec import _native

Impl = Literal["auto", "fused", "reference"]
_warned: set[tuple[str, str]] = set()


def fused_available(device: torch.device | str) -> bool:
    """True when the fused kernels are compiled and can run on ``device``."""
    return _native.unavailable_reason(device) is None


def choose_impl(
    t: torch.Tensor, impl: str, op: str, dtypes: tuple[torch.dtype, ...] | None = None
) -> str:
    """Resolve impl to "fused" or "reference" for a tensor's device and dtype, or raise.

    "auto" falls back to the reference with one warning per (device type, reason).
    """
    if impl == "reference":
        return "reference"
    if impl not in ("auto", "fused"):
        raise ValueError(f"impl must be 'auto', 'fused' or 'reference', got {impl!r}")
    reason = _native.unavailable_reason(t.device)
    supported = dtypes or _native.FUSED_DTYPES.get(t.device.type, ())
    if reason is None and t.dtype not in supported:
        reason = (
            f"no fused kernel for {t.dtype} on {t.device.type} "
            f"(supported: {', '.join(str(d) for d in supported)})"
        )
        if impl == "fused":
            raise TypeError(f"{op}(impl='fused'): {reason}")
    if reason is None:
        return "fused"
    if impl == "fused":
        raise RuntimeError(f"{op}(impl='fused') is unavailable on {t.device}: {reason}")
    key = (t.device.type, reason)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(
            f"deeprec: using the reference {op} because {reason}",
            RuntimeWarning,
            stacklevel=3,
        )
    return "reference"


def check_kernel(op: str, t: torch.Tensor, dtypes: tuple[torch.dtype, ...] | None = None) -> None:
    """Inside a registered op: the native kernels exist for t's device and dtype."""
    reason = _native.unavailable_reason(t.device)
    if reason is not None:
        raise RuntimeError(f"deeprec::{op}: no native kernel on {t.device}: {reason}")
    supported = dtypes or _native.FUSED_DTYPES.get(t.device.type, ())
    if t.dtype not in supported:
        raise TypeError(
            f"deeprec::{op}: no kernel for {t.dtype} on {t.device.type} "
            f"(supported: {', '.join(str(d) for d in supported)})"
        )


def check_scale(scale: torch.Tensor | None, like: torch.Tensor, name: str = "scale") -> None:
    """An optional one-element scale the kernels read in place: like's dtype and device."""
    if scale is None:
        return
    if not isinstance(scale, torch.Tensor) or scale.numel() != 1:
        raise ValueError(f"{name} must be a one-element tensor")
    if scale.dtype != like.dtype or scale.device != like.device:
        raise TypeError(
            f"{name} must be {like.dtype} on {like.device}, got {scale.dtype} on {scale.device}"
        )
    if not scale.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def as_scalar(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A one-element tensor as the contiguous 0-dim ``dtype`` scalar the kernels read in
    place (an incoming gradient, a folded scale); ``t`` itself when it already is one."""
    if t.dtype == dtype and t.dim() == 0 and t.is_contiguous():
        return t
    return t.to(dtype).reshape(()).contiguous()


def ptr(t: torch.Tensor | None) -> int:
    """The data address of a contiguous tensor, or 0 for None."""
    return 0 if t is None else t.data_ptr()


def dtype_code(t: torch.Tensor) -> int:
    return _native.DTYPE_CODE[t.dtype]


def index_code(t: torch.Tensor) -> int:
    return _native.INDEX_CODE[t.dtype]


def threads() -> int:
    """Native CPU threads: torch's own setting, so both never oversubscribe the cores."""
    return torch.get_num_threads()


def cuda_target(device: torch.device) -> tuple[int, int]:
    """(device index, address of torch's current stream on it) for a CUDA launch."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return index, torch.cuda.current_stream(device).cuda_stream


# Kernels whose CUDA entry point takes a workspace for its deterministic loss reduction,
# and the module constant that bounds its blocks.
_REDUCTIONS = {"masked_mse": "MASKED_MSE_MAX_BLOCKS", "sddmm_residual": "SPARSE_MAX_BLOCKS"}


def launch(kernel: str, device: torch.device, *args: object, reduce: bool = True) -> None:
    """deeprec._C.<kernel>_cpu(*args, threads) or <kernel>_cuda(*args, [workspace,] device,
    stream): the device branch, written once for every op.

    reduce: the CUDA kernel computes a loss, so it gets a reduction workspace (kernels
    with one take null addresses otherwise).
    """
    C = _native.module()
    if device.type == "cpu":
        getattr(C, f"{kernel}_cpu")(*args, threads())
        return
    workspace: tuple[int, ...] = ()
    if kernel in _REDUCTIONS:
        partials = counter = None
        if reduce:
            partials, counter = reduction_workspace(device, getattr(C, _REDUCTIONS[kernel]))
        workspace = (ptr(partials), ptr(counter))
    getattr(C, f"{kernel}_cuda")(*args, *workspace, *cuda_target(device))


def reduction_workspace(device: torch.device, blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(partials, zeroed counter) for the kernels' deterministic last-block reduction."""
    partials = torch.empty(blocks, dtype=torch.float64, device=device)
    counter = torch.zeros(1, dtype=torch.int32, device=device)
    return partials, counter
