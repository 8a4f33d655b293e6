"""The native row-sparse Adam step behind deeprec.optim.ItemAdam (validated here)."""

from __future__ import annotations

import math

import numpy as np
import torch

from deeprec import _native
from deeprec.ops.launch import cuda_target, dtype_code, ptr, threads


def row_adam_step(
    p: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    grad: torch.Tensor,
    step: int,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    lazy: bool,
) -> None:
    """In-place Adam update of an item-major parameter from a sparse (or dense) row gradient."""
    N = p.shape[0]
    H = p[0].numel() if N else 0
    if grad.is_sparse:
        ucol, values = grad._indices()[0], grad._values()
        cols = ucol.cpu().numpy()
        if not grad.is_coalesced() and bool((np.diff(cols) <= 0).any()):
            # Rows out of order or repeated (tied weights sum two sparse gradients): merge
            # them. Our own gradients arrive sorted and unique; autograd may drop the flag.
            grad = grad.coalesce()
            ucol, values = grad.indices()[0], grad.values()
            cols = ucol.cpu().numpy()
        ucol, values = ucol.contiguous(), values.contiguous()
    else:
        ucol, values = torch.arange(N, device=p.device), grad.contiguous()
        cols = np.arange(N)
    for name, t in (("param", p), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        if not t.is_contiguous() or t.dtype != p.dtype or t.device != p.device:
            raise ValueError(f"row_adam_step: {name} must be contiguous {p.dtype} on {p.device}")
    if exp_avg.shape != p.shape or exp_avg_sq.shape != p.shape:
        raise ValueError("row_adam_step: optimizer state does not have the parameter's shape")
    U = ucol.numel()
    if values.dtype != p.dtype or values.numel() != U * H:
        raise ValueError(
            f"row_adam_step: gradient rows have {values.numel()} values of {values.dtype}, "
            f"expected {U} x {H} of {p.dtype}"
        )
    if U and (cols.min() < 0 or cols.max() >= N or bool((np.diff(cols) <= 0).any())):
        raise ValueError(
            "row_adam_step: gradient rows must be sorted, unique and inside the parameter"
        )
    b1, b2 = betas
    step_size = lr / (1.0 - b1**step)
    inv_sqrt_bc2 = 1.0 / math.sqrt(1.0 - b2**step)
    C = _native.module()
    args = (
        ptr(p),
        ptr(exp_avg),
        ptr(exp_avg_sq),
        ptr(values),
        ptr(ucol),
        U,
        N,
        H,
        step_size,
        inv_sqrt_bc2,
        b1,
        b2,
        eps,
        weight_decay,
        lazy,
        dtype_code(p),
    )
    if p.device.type == "cpu":
        C.row_adam_cpu(*args, threads())
    else:
        C.row_adam_cuda(*args, *cuda_target(p.device))
