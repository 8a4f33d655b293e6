"""The pure-PyTorch definitions every fused op must match, and the fallback the package
uses where the kernels cannot run. Each takes checked inputs; the public ops check them.
"""

from __future__ import annotations

import torch

from deeprec import csr


def masked_mse_reference(
    output: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor
) -> torch.Tensor:
    """Masked MSE over stored entries: sum (output[i, col] - val)^2 / nnz, 0 when empty;
    computed in float32 for 16-bit outputs (the loss float32, the gradient the output's)."""
    nnz = col.numel()
    rows = csr.entry_rows(crow, nnz)
    pred = output[rows, col]
    if output.dtype in (torch.float16, torch.bfloat16):
        pred, val = pred.float(), val.float()
    return ((pred - val) ** 2).sum() / max(nnz, 1)


def sparse_linear_reference(
    parts: csr.CSRParts, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x @ W + b for CSR x (gather rows of W, index_add into rows)."""
    crow, col, val = parts
    B, nnz = crow.numel() - 1, col.numel()
    rows = csr.entry_rows(crow, nnz)
    out = torch.zeros(B, weight.shape[1], dtype=weight.dtype, device=weight.device)
    out = out.index_add(0, rows, val[:, None] * weight[col])
    return out if bias is None else out + bias


def sparse_output_mse_reference(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, parts: csr.CSRParts
) -> torch.Tensor:
    """Masked MSE of h @ W^T + b at the stored entries only (no bias: b = 0)."""
    crow, col, val = parts
    nnz = col.numel()
    rows = csr.entry_rows(crow, nnz)
    pred = (h[rows] * weight[col]).sum(1)
    if bias is not None:
        pred = pred + bias[col]
    return ((pred - val) ** 2).sum() / max(nnz, 1)


@torch.no_grad()
def row_adam_reference(
    p: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    ucol: torch.Tensor,
    values: torch.Tensor,
    step_size: float,
    inv_sqrt_bc2: float,
    b1: float,
    b2: float,
    eps: float,
    weight_decay: float,
    lazy: bool,
) -> None:
    """Adam on the rows ``ucol`` of p with gradient rows ``values``, in place; exact (every
    row moves, untouched ones with a zero gradient) or lazy (only the gradient's rows)."""
    values = values.reshape(ucol.numel(), *p.shape[1:])
    if lazy:
        rows = (p[ucol], exp_avg[ucol], exp_avg_sq[ucol])
        adam_update(*rows, values, step_size, inv_sqrt_bc2, b1, b2, eps, weight_decay)
        p[ucol], exp_avg[ucol], exp_avg_sq[ucol] = rows
        return
    g = torch.zeros_like(p)
    g[ucol] = values
    adam_update(p, exp_avg, exp_avg_sq, g, step_size, inv_sqrt_bc2, b1, b2, eps, weight_decay)


def adam_update(p, m, v, g, step_size, inv_sqrt_bc2, b1, b2, eps, wd) -> None:
    """torch's Adam step on whole tensors, in place: g + wd p into the moments, then p."""
    g = g + wd * p
    m.mul_(b1).add_(g, alpha=1.0 - b1)
    v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
    p.sub_(step_size * m / (v.sqrt() * inv_sqrt_bc2 + eps))
