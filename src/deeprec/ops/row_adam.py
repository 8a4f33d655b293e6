"""Adam for an item-major parameter whose gradient holds only some rows.

``row_adam_step`` updates a parameter in place from a sparse COO gradient of
sorted, unique rows (or a dense one). exact (lazy=False): torch's Adam update,
untouched rows included with a zero gradient, without building the dense gradient.
lazy=True: only the gradient's rows move (SparseAdam semantics). A native kernel
(csrc/row_adam/, the op deeprec::row_adam defined below) and a pure-PyTorch reference compute the
same update. The kernel checks the gradient's row ids (inside the parameter, sorted,
unique) as it reads them, and the reference checks them with torch ops first, so the
step reads nothing back to the host.

A gradient whose rows repeat or come out of order (tied weights: autograd sums the input
and the output layer's row-sparse gradients) is merged without a host read: its rows are
summed into a dense gradient (exact Adam reads every row anyway), and lazy Adam then
moves only the rows the gradient names (a mask, torch ops).
"""

from __future__ import annotations

import math

import torch

from deeprec import csr
from deeprec.ops import errors
from deeprec.ops.device_checks import grad_rows_problem
from deeprec.ops.native import DeviceKernels
from deeprec.ops.reference import adam_update, row_adam_reference
from deeprec.ops.schema import Impl, Op

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
    tensor of p's shape. ``step`` counts from 1. merge: a sparse gradient not flagged
    coalesced (rows out of order or repeated, as when tied weights sum two gradients) is
    merged first (no host read; see the module's docstring). merge=False: its rows are
    used as they are, as for deeprec's own gradients, whose rows are sorted and unique but
    which autograd hands over without the flag; the kernel refuses rows out of order.
    """
    _check_hyper(step, lr, betas, eps, weight_decay)
    b1, b2 = betas
    step_size = lr / (1.0 - b1**step)
    inv_sqrt_bc2 = 1.0 / math.sqrt(1.0 - b2**step)
    coefs = (step_size, inv_sqrt_bc2, b1, b2, eps, weight_decay, lazy)
    ucol, values, touched = _rows_of_grad(p, grad, merge)
    if touched is not None and lazy:  # merged rows, lazily: only the named rows move
        ROW_ADAM.check(p, exp_avg, exp_avg_sq, ucol, values, *coefs)
        _masked_step(p, exp_avg, exp_avg_sq, values, touched, *coefs[:-1])
        return
    ROW_ADAM.call(impl, p, exp_avg, exp_avg_sq, ucol, values, *coefs)


def _rows_of_grad(p, grad, merge) -> tuple[object, object, torch.Tensor | None]:
    """(row ids, gradient rows, None) of a gradient; for a merged one (every row id, the
    dense summed gradient, the mask of the rows it names). What the op cannot see of grad
    is checked here: a tensor of p's shape, dense or sparse over rows."""
    if not isinstance(grad, torch.Tensor):
        raise TypeError(f"row_adam_step: grad must be a tensor, got {type(grad).__name__}")
    if isinstance(p, torch.Tensor):
        if grad.shape != p.shape:
            raise ValueError(
                f"row_adam_step: grad has shape {tuple(grad.shape)}, param {tuple(p.shape)}"
            )
        if grad.dtype != p.dtype:
            raise TypeError(f"row_adam_step: grad is {grad.dtype}, but param is {p.dtype}")
        if grad.device != p.device:
            raise ValueError(f"row_adam_step: grad is on {grad.device}, but param on {p.device}")
    if not grad.is_sparse:
        if grad.layout != torch.strided:
            raise TypeError(f"row_adam_step: grad layout {grad.layout} is not supported")
        return torch.arange(grad.shape[0] if grad.dim() else 0, device=grad.device), \
            grad.contiguous(), None  # fmt: skip
    if grad.sparse_dim() != 1:
        raise ValueError(
            "row_adam_step: a sparse grad must be sparse over rows only (sparse_dim 1)"
        )
    raw = grad._indices()
    csr.check_tensor(raw, "grad rows", dtypes=(torch.int64,), device=grad.device, contiguous=False)
    if merge and not grad.is_coalesced() and raw.shape[1] > 1:
        return _merged(grad)
    return grad._indices()[0].contiguous(), grad._values().contiguous(), None


def _merged(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A gradient's rows summed into a dense gradient (every row id, the dense rows, the
    mask of the rows named), with no host read. A row id outside the parameter is reported
    (errors.py) and its rows dropped."""
    ids, values = grad._indices()[0], grad._values()
    N = grad.shape[0]
    ok = errors.report(grad.device, "row_adam_step", grad_rows_problem(ids, N, ordered=False))
    inside = (ids >= 0) & (ids < N) & ok
    at = ids.clamp(0, max(N - 1, 0))
    mask = inside.reshape(-1, *([1] * (values.dim() - 1)))
    dense = torch.zeros(grad.shape, dtype=values.dtype, device=values.device)
    dense.index_add_(0, at, torch.where(mask, values, 0))
    touched = torch.zeros(N, dtype=torch.int32, device=ids.device).index_add_(0, at, inside.int())
    return torch.arange(N, device=ids.device), dense, touched > 0


@torch.no_grad()
def _masked_step(p, m, v, g, touched, step_size, inv_sqrt_bc2, b1, b2, eps, wd) -> None:
    """Lazy Adam on the rows ``touched`` marks, from the dense gradient g, as torch ops."""
    rows = touched.reshape(-1, *([1] * (p.dim() - 1)))
    new = (p.clone(), m.clone(), v.clone())
    adam_update(*new, g, step_size, inv_sqrt_bc2, b1, b2, eps, wd)
    for old, updated in zip((p, m, v), new, strict=True):
        old.copy_(torch.where(rows, updated, old))


def _check_hyper(step, lr, betas, eps, weight_decay) -> None:
    try:
        b1, b2 = betas
        ok = (
            isinstance(step, int) and step >= 1
            and math.isfinite(lr) and lr >= 0
            and 0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0
            and math.isfinite(eps) and eps >= 0
            and math.isfinite(weight_decay) and weight_decay >= 0
        )  # fmt: skip
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"row_adam_step: bad hyperparameters (step={step}, lr={lr}, betas={betas}, "
            f"eps={eps}, weight_decay={weight_decay})"
        )


# ------------------------------------------------------------------ the op's definition
def _check(p, exp_avg, exp_avg_sq, ucol, values, step_size, inv_sqrt_bc2, b1, b2, eps, wd,
           lazy) -> None:  # fmt: skip
    csr.check_tensor(p, "param")
    if p.dim() == 0:
        raise ValueError("row_adam_step: param must have at least one dimension (rows)")
    if not p.is_floating_point():
        raise TypeError(f"row_adam_step: param must be floating point, got {p.dtype}")
    for name, t in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        csr.check_tensor(t, name, dtypes=(p.dtype,), device=p.device)
        if t.shape != p.shape:
            raise ValueError(
                f"row_adam_step: {name} has shape {tuple(t.shape)}, param {tuple(p.shape)}"
            )
    csr.check_tensor(ucol, "gradient rows", dim=1, dtypes=(torch.int64,), device=p.device)
    csr.check_tensor(values, "gradient values", dtypes=(p.dtype,), device=p.device)
    if tuple(values.shape) != (ucol.numel(), *p.shape[1:]):
        raise ValueError(
            f"row_adam_step: gradient rows have shape {tuple(values.shape)}, expected "
            f"{(ucol.numel(), *p.shape[1:])}"
        )
    if ucol.numel() > p.shape[0]:
        raise ValueError(
            f"row_adam_step: {ucol.numel()} gradient rows for a param of {p.shape[0]} rows"
        )


def _run(
    kernels: DeviceKernels,
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
    kernels.launch("row_adam.row_adam", p.device, op="row_adam_step", dtype=p.dtype, p=p,
                   m=exp_avg, v=exp_avg_sq, g=values, ucol=ucol, U=ucol.numel(), N=N,
                   H=p[0].numel() if N else 0, step_size=step_size, inv_sqrt_bc2=inv_sqrt_bc2,
                   b1=b1, b2=b2, eps=eps, wd=wd, lazy=lazy)  # fmt: skip


def _reference(p, exp_avg, exp_avg_sq, ucol, values, *coefs) -> None:
    """The reference, after the kernel's row checks as torch ops (a refused gradient moves
    nothing)."""
    problem = grad_rows_problem(ucol, p.shape[0], ordered=True)
    ok = errors.report(p.device, "row_adam_step", problem)
    ucol = torch.where(ok, ucol, torch.arange(ucol.numel(), device=ucol.device))
    before = (p.clone(), exp_avg.clone(), exp_avg_sq.clone()) if errors.deferred(p.device) else None
    row_adam_reference(p, exp_avg, exp_avg_sq, ucol, values, *coefs)
    if before is not None:  # a GPU: the refusal waits in the word; undo the update
        with torch.no_grad():
            for t, old in zip((p, exp_avg, exp_avg_sq), before, strict=True):
                t.copy_(torch.where(ok, t, old))


ROW_ADAM = Op(
    "row_adam",
    _check,
    _run,
    fake=lambda *args: None,
    family="row_adam",
    reference=_reference,
    mutates=("p", "exp_avg", "exp_avg_sq"),
    public="row_adam_step",
)
