"""Adam for an item-major parameter whose gradient holds only some rows.

``row_adam_step`` updates a parameter in place from a sparse COO gradient of
sorted, unique rows (or a dense one). exact (lazy=False): torch's Adam update,
untouched rows included with a zero gradient, without building the dense gradient.
lazy=True: only the gradient's rows move (SparseAdam semantics). A native kernel
(csrc/row_adam/, the op deeprec::row_adam defined below) and a pure-PyTorch reference compute the
same update. The kernel checks the gradient's row ids (inside the parameter, sorted,
unique) as it reads them, so the step reads nothing back to the host.
"""

from __future__ import annotations

import math

import torch

from deeprec import csr
from deeprec.ops.launch import Impl, check_kernel, choose_impl, dtype_code, launch
from deeprec.ops.reference import row_adam_reference
from deeprec.ops.schema import Op

__all__ = ["row_adam_reference", "row_adam_step"]


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
    *,
    impl: Impl = "auto",
    merge: bool = True,
) -> None:
    """In-place Adam update of ``p`` (and its moments) from a row-sparse or dense gradient.

    p, exp_avg, exp_avg_sq: contiguous, same shape, dtype and device; rows are the
    first dimension. grad: a sparse COO tensor of p's shape over dimension 0 or a dense
    tensor of p's shape. ``step`` counts from 1. merge: coalesce a sparse gradient that is
    not flagged coalesced (rows out of order or repeated, as when tied weights sum two
    gradients; a sort, and on a GPU a host sync). merge=False: use its rows as they are, as
    for deeprec's own gradients, whose rows are sorted and unique but which autograd hands
    over without the flag; the kernel refuses rows out of order.
    """
    ucol, values = _rows_of_grad(p, exp_avg, exp_avg_sq, grad, merge)
    _check_hyper(step, lr, betas, eps, weight_decay)
    b1, b2 = betas
    step_size = lr / (1.0 - b1**step)
    inv_sqrt_bc2 = 1.0 / math.sqrt(1.0 - b2**step)
    coefs = (step_size, inv_sqrt_bc2, b1, b2, eps, weight_decay, lazy)
    if choose_impl(p, impl, "row_adam_step", "row_adam") == "reference":
        _check_rows(ucol, p.shape[0])
        row_adam_reference(p, exp_avg, exp_avg_sq, ucol, values, *coefs)
        return
    ROW_ADAM(p, exp_avg, exp_avg_sq, ucol, values, *coefs)


def _rows_of_grad(p, exp_avg, exp_avg_sq, grad, merge) -> tuple[torch.Tensor, torch.Tensor]:
    """(ucol int64 sorted unique, values (U, *row shape) contiguous), after every check."""
    csr.check_tensor(p, "param")
    if p.dim() == 0:
        raise ValueError("row_adam_step: param must have at least one dimension (rows)")
    for name, t in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        csr.check_tensor(t, name, dtypes=(p.dtype,), device=p.device)
        if t.shape != p.shape:
            raise ValueError(
                f"row_adam_step: {name} has shape {tuple(t.shape)}, param {tuple(p.shape)}"
            )
    if not isinstance(grad, torch.Tensor):
        raise TypeError(f"row_adam_step: grad must be a tensor, got {type(grad).__name__}")
    if grad.device != p.device or grad.dtype != p.dtype:
        raise ValueError(
            f"row_adam_step: gradient rows are {grad.dtype} on {grad.device}, but param is "
            f"{p.dtype} on {p.device}"
        )
    if grad.shape != p.shape:
        raise ValueError(
            f"row_adam_step: grad has shape {tuple(grad.shape)}, param {tuple(p.shape)}"
        )
    N = p.shape[0]
    if not grad.is_sparse:
        if grad.layout != torch.strided:
            raise TypeError(f"row_adam_step: grad layout {grad.layout} is not supported")
        return torch.arange(N, device=p.device), grad.contiguous()
    if grad.sparse_dim() != 1:
        raise ValueError(
            "row_adam_step: a sparse grad must be sparse over rows only (sparse_dim 1)"
        )
    raw = grad._indices()
    csr.check_tensor(raw, "grad rows", dtypes=(torch.int64,), device=p.device, contiguous=False)
    if merge and not grad.is_coalesced() and raw.shape[1] > 1:
        # Rows maybe out of order or repeated (tied weights sum two sparse gradients):
        # merge them. torch's coalesce() trusts the rows and corrupts the heap on one
        # outside the parameter, so they are checked on the host first (a merge is a host
        # sync on a GPU anyway). Unmerged rows are the kernel's to check.
        _check_rows_in_range(raw[0], N)
        grad = grad.coalesce()
    ucol, values = grad._indices()[0].contiguous(), grad._values().contiguous()
    if values.shape != (ucol.numel(), *p.shape[1:]):
        raise ValueError(
            f"row_adam_step: gradient rows have shape {tuple(values.shape)}, expected "
            f"{(ucol.numel(), *p.shape[1:])}"
        )
    return ucol, values


def _check_rows_in_range(ids: torch.Tensor, n_rows: int) -> torch.Tensor:
    """The row ids on the host, after checking that they lie inside the parameter."""
    ids = ids.cpu()
    if ids.numel() and (bool(ids.min() < 0) or bool(ids.max() >= n_rows)):
        raise ValueError(
            f"row_adam_step: gradient rows must lie inside the parameter [0, {n_rows})"
        )
    return ids


def _check_rows(ucol: torch.Tensor, n_rows: int) -> None:
    """The reference path's check of the row ids, on the host (the kernel checks its own)."""
    ids = _check_rows_in_range(ucol, n_rows)
    if ids.numel() > 1 and bool((ids[1:] <= ids[:-1]).any()):
        raise ValueError("row_adam_step: gradient rows must be sorted and unique")


def _check_hyper(step, lr, betas, eps, weight_decay) -> None:
    b1, b2 = betas
    ok = (
        isinstance(step, int) and step >= 1
        and math.isfinite(lr) and lr >= 0
        and 0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0
        and math.isfinite(eps) and eps >= 0
        and math.isfinite(weight_decay) and weight_decay >= 0
    )  # fmt: skip
    if not ok:
        raise ValueError(
            f"row_adam_step: bad hyperparameters (step={step}, lr={lr}, betas={betas}, "
            f"eps={eps}, weight_decay={weight_decay})"
        )


# ------------------------------------------------------------------ the op's definition
def _check_row_adam(
    p, exp_avg, exp_avg_sq, ucol, values, step_size, inv_sqrt_bc2, b1, b2, eps, wd, lazy
) -> None:
    csr.check_tensor(p, "param")
    if p.dim() == 0:
        raise ValueError("row_adam: param must have at least one dimension (rows)")
    check_kernel("row_adam", p, "row_adam")
    for name, t in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        csr.check_tensor(t, name, dtypes=(p.dtype,), device=p.device)
        if t.shape != p.shape:
            raise ValueError(f"row_adam: {name} has shape {tuple(t.shape)}, param {tuple(p.shape)}")
    csr.check_tensor(ucol, "gradient rows", dim=1, dtypes=(torch.int64,), device=p.device)
    csr.check_tensor(values, "gradient values", dtypes=(p.dtype,), device=p.device)
    if tuple(values.shape) != (ucol.numel(), *p.shape[1:]):
        raise ValueError(
            f"row_adam: gradient rows have shape {tuple(values.shape)}, expected "
            f"{(ucol.numel(), *p.shape[1:])}"
        )


def _row_adam_run(
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
    wd: float,
    lazy: bool,
) -> None:
    """Adam on p's rows ``ucol`` (sorted, unique) with gradient rows ``values``, in place."""
    N = p.shape[0]
    launch("row_adam.row_adam", p.device, op="row_adam_step", p=p, m=exp_avg, v=exp_avg_sq,
           g=values, ucol=ucol, U=ucol.numel(), N=N, H=p[0].numel() if N else 0,
           step_size=step_size, inv_sqrt_bc2=inv_sqrt_bc2, b1=b1, b2=b2, eps=eps, wd=wd,
           lazy=lazy, dtype=dtype_code(p))  # fmt: skip


ROW_ADAM = Op(
    "row_adam",
    _check_row_adam,
    _row_adam_run,
    fake=lambda *args: None,
    mutates=("p", "exp_avg", "exp_avg_sq"),
)
