"""Every ``deeprec::`` op, defined once: its schema, fake, autograd and eager fast path.

An op is an ``Op`` built from plain functions: ``check`` (the metadata of everything the
kernels read: dtypes, devices, shapes, lengths), ``run`` (the kernel launches, arguments
by name; the kernels check every index they read), ``fake`` (output shapes only, for
torch.compile and opcheck) and, for differentiable ops, ``setup`` and ``backward``.

``Op`` registers them with ``torch.library`` (what torch.compile and opcheck see) and
builds the eager fast path from the same functions: an autograd.Function that skips the
custom-op dispatcher's per-call Python layer. A backward calls the ops it needs through
``Op.grad``: from the registered op's autograd (torch.compile, opcheck) that is the
registered op, opaque in the graph; on the eager fast path it is the op's ``run`` (the
saved inputs were checked in forward; the kernels check their indices again as they read
them, since an edit autograd's version counter cannot see may have happened in between).

Launches name the family (masked_mse, sparse_layers, row_adam) whose dtype table applies.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from deeprec import csr
from deeprec.csr import ColumnIndex
from deeprec.ops import recycle
from deeprec.ops.launch import (
    as_scalar,
    check_kernel,
    check_scale,
    dtype_code,
    index_code,
    launch,
    ptr,
)

DEVICES = ("cpu", "cuda")
# Every Op, in the order defined (the op modules import this one and add theirs).
OPS: list[Op] = []


class Op:
    """One registered op and its eager fast path, from one set of functions."""

    def __init__(
        self,
        name: str,
        check: Callable[..., None],
        run: Callable,
        fake: Callable,
        setup: Callable | None = None,
        backward: Callable | None = None,
        mutates: tuple[str, ...] = (),
    ) -> None:
        self.name, self.check, self.run = name, check, run
        OPS.append(self)

        @functools.wraps(run)  # the schema is inferred from run's annotated signature
        def forward(*args):
            check(*args)
            return run(*args)

        self.forward = forward
        self.registered = torch.library.custom_op(
            f"deeprec::{name}", mutates_args=mutates, device_types=DEVICES
        )(forward)
        self.registered.register_fake(fake)
        self.eager: type[torch.autograd.Function] | None = None
        if backward is not None:
            self.registered.register_autograd(backward, setup_context=setup)
            self.eager = _eager_function(name, forward, setup, backward)

    def __call__(self, *args):
        """The op: the registered one while compiling, else the eager fast path."""
        if torch.compiler.is_compiling():
            return getattr(torch.ops.deeprec, self.name)(*args)
        if self.eager is not None:
            return self.eager.apply(*args)
        return self.forward(*args)

    def grad(self, ctx, *args):
        """The op as a backward calls it: on the eager fast path (ctx.eager) its kernels;
        from the registered op's autograd (torch.compile, opcheck) the registered op."""
        if getattr(ctx, "eager", False):
            return self.run(*args)
        return getattr(torch.ops.deeprec, self.name)(*args)


def _eager_function(name: str, forward, setup, backward) -> type[torch.autograd.Function]:
    def eager_forward(ctx, *inputs):
        out = forward(*inputs)
        setup(ctx, inputs, out)
        ctx.eager = True
        # No zero tensor for outputs backward does not read (sparse_output_mse's residuals).
        ctx.set_materialize_grads(False)
        return out

    def eager_backward(ctx, *grads):
        return backward(ctx, *grads)

    members = {"forward": staticmethod(eager_forward), "backward": staticmethod(eager_backward)}
    return type(f"Eager_{name}", (torch.autograd.Function,), members)


# ------------------------------------------------------------------ shared checks
def check_weight(weight, bias, bias_dim: int) -> None:
    """An item-major (items x hidden) weight and its bias (or None) of as many entries as
    the weight's dimension ``bias_dim`` (1: the input layer's H, 0: the output layer's N)."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError("weight must be a 2-D tensor (items x hidden)")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be floating point, got {weight.dtype}")
    if not weight.is_contiguous():
        raise ValueError("weight must be contiguous (item-major rows)")
    bias_len = weight.shape[bias_dim]
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        check_same(weight, bias, "bias")
        if tuple(bias.shape) != (bias_len,) or not bias.is_contiguous():
            raise ValueError(
                f"bias must be a contiguous 1-D tensor of {bias_len} entries, got shape "
                f"{tuple(bias.shape)}"
            )


def check_same(ref: torch.Tensor, other: torch.Tensor, name: str) -> None:
    if other.dtype != ref.dtype:
        raise TypeError(f"{name}: dtype {other.dtype}, but the weight's dtype is {ref.dtype}")
    if other.device != ref.device:
        raise ValueError(f"{name}: on {other.device}, but the weight is on {ref.device}")


def _check_batch(op: str, weight, crow, col, val, n_rows: int, index=None, name="target"):
    """The sparse kernels exist, and the batch (n_rows rows) and its index have the dtypes,
    devices and lengths they need. The values are the kernels' to check."""
    check_kernel(op, weight, "sparse_layers")
    csr.check_structure(crow, col, val, n_rows, name)
    check_same(weight, val, f"{name} values")
    if index is not None:
        csr.check_index_structure(ColumnIndex(*index), col.numel(), weight.device)


# ------------------------------------------------------------------ masked_mse
def _check_masked_mse(output, crow, col, val) -> None:
    csr.check_tensor(output, "output", dim=2)
    check_kernel("masked_mse", output, "masked_mse")
    csr.check_structure(crow, col, val, output.shape[0])
    if val.dtype != output.dtype:
        raise TypeError(f"target values have dtype {val.dtype} but output has {output.dtype}")
    if crow.device != output.device:
        raise ValueError(f"target is on {crow.device} but output is on {output.device}")


def masked_mse_launch(output, crow, col, val, loss, grad, grad_scale) -> None:
    B, N = output.shape
    launch(
        "masked_mse",
        output.device,
        op="masked_mse" if loss is not None else "masked_mse backward",
        reduce=loss is not None,
        out=ptr(output),
        crow=ptr(crow),
        col=ptr(col),
        val=ptr(val),
        B=B,
        N=N,
        nnz=col.numel(),
        dtype=dtype_code(output),
        index_dtype=index_code(col),
        loss=ptr(loss),
        grad=ptr(grad),
        grad_scale=ptr(grad_scale),
    )


def _masked_mse_run(
    output: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor
) -> torch.Tensor:
    """Mean squared error of ``output`` at the entries the CSR batch stores."""
    loss = output.new_empty(())
    masked_mse_launch(output, crow, col, val, loss, None, None)
    return loss


def _masked_mse_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _masked_mse_backward(ctx, grad):
    if grad is None:  # eager path, materialize_grads off: no gradient came
        return None, None, None, None
    output, crow, col, val = ctx.saved_tensors
    grad_output = None
    if ctx.needs_input_grad[0]:
        grad_output = MASKED_MSE_BACKWARD.grad(ctx, grad, output, crow, col, val)
    return grad_output, None, None, None


MASKED_MSE = Op(
    "masked_mse",
    _check_masked_mse,
    _masked_mse_run,
    fake=lambda output, crow, col, val: output.new_empty(()),
    setup=_masked_mse_setup,
    backward=_masked_mse_backward,
)


def _check_masked_mse_backward(grad, output, crow, col, val) -> None:
    _check_masked_mse(output, crow, col, val)
    if not isinstance(grad, torch.Tensor) or grad.numel() != 1 or not grad.is_floating_point():
        raise ValueError("deeprec::masked_mse_backward: grad must be a one-element float tensor")
    if grad.device != output.device:
        raise ValueError(f"grad is on {grad.device} but output is on {output.device}")


def _masked_mse_backward_run(
    grad: torch.Tensor,
    output: torch.Tensor,
    crow: torch.Tensor,
    col: torch.Tensor,
    val: torch.Tensor,
) -> torch.Tensor:
    """d loss / d output, scaled by ``grad``; dense, zero where nothing is stored."""
    out = torch.empty_like(output, memory_format=torch.contiguous_format)
    masked_mse_launch(output, crow, col, val, None, out, as_scalar(grad, output.dtype))
    return out


MASKED_MSE_BACKWARD = Op(
    "masked_mse_backward",
    _check_masked_mse_backward,
    _masked_mse_backward_run,
    fake=lambda grad, output, crow, col, val: torch.empty_like(
        output, memory_format=torch.contiguous_format
    ),
)


# ------------------------------------------------------------------ sparse layers: kernels
def _spmm(crow, col, val, weight, bias, out, scale, op: str) -> None:
    """out = bias + scale * CSR @ weight."""
    B, H = out.shape
    launch(
        "spmm_rows",
        weight.device,
        op=op,
        crow=ptr(crow),
        col=ptr(col),
        val=ptr(val),
        W=ptr(weight),
        bias=ptr(bias),
        out=ptr(out),
        B=B,
        N=weight.shape[0],
        H=H,
        nnz=col.numel(),
        scale=ptr(scale),
        dtype=dtype_code(weight),
        index_dtype=index_code(col),
    )


def _col_accumulate(index: ColumnIndex, crow, col, coef, A, n_cols, with_bias, scale, compact, op):
    """(dW, db or None): per-column sums of scale * coef * A[row], over the column index
    of the batch (crow, col) that A's rows belong to. Dense: dW (n_cols x H), db (n_cols),
    zero where the batch has no entry. Compact: only the touched columns, dW (U x H) and db
    (U) in ucol order."""
    B, H = A.shape
    rows_out = index.ucol.numel() if compact else n_cols
    dW = recycle.empty(rows_out, H, A.dtype, A.device)
    db = torch.empty(rows_out, dtype=A.dtype, device=A.device) if with_bias else None
    launch(
        "col_accumulate",
        A.device,
        op=op,
        perm=ptr(index.perm),
        ucol=ptr(index.ucol),
        uptr=ptr(index.uptr),
        rows=ptr(index.rows),
        crow=ptr(crow),
        col=ptr(col),
        coef=ptr(coef),
        A=ptr(A),
        dW=ptr(dW),
        db=ptr(db),
        U=index.ucol.numel(),
        N=n_cols,
        B=B,
        H=H,
        nnz=col.numel(),
        scale=ptr(scale),
        dtype=dtype_code(A),
        index_dtype=index_code(col),
        compact=compact,
    )
    return dW, db


def _as_sparse_rows(indices: torch.Tensor, values: torch.Tensor, shape: tuple[int, ...]):
    """A coalesced sparse COO gradient holding the rows of ``shape`` that ``indices`` names
    (ucol.unsqueeze(0): sorted, unique; the kernels that read them check them). Checking
    the invariants here is declined explicitly; torch still warned that they were
    "implicitly disabled" on every GPU training run, a warning we silence at this call."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly")
        return torch.sparse_coo_tensor(
            indices, values, shape, is_coalesced=True, check_invariants=False
        )


# ------------------------------------------------------------------ sparse_linear
def _check_sparse_linear(crow, col, val, perm, ucol, uptr, rows, weight, bias, sparse_grad):
    check_weight(weight, bias, 1)
    index = (perm, ucol, uptr, rows)
    _check_batch("sparse_linear", weight, crow, col, val, crow.numel() - 1, index, "x")


def _sparse_linear_run(
    crow: torch.Tensor,
    col: torch.Tensor,
    val: torch.Tensor,
    perm: torch.Tensor,
    ucol: torch.Tensor,
    uptr: torch.Tensor,
    rows: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    sparse_grad: bool,
) -> torch.Tensor:
    """x @ weight + bias for the CSR batch x and its column index."""
    out = torch.empty(crow.numel() - 1, weight.shape[1], dtype=weight.dtype, device=weight.device)
    _spmm(crow, col, val, weight, bias, out, None, "sparse_linear")
    return out


def _sparse_linear_setup(ctx, inputs, output):
    crow, col, val, perm, ucol, uptr, rows, weight, _bias, sparse_grad = inputs
    ctx.save_for_backward(crow, col, val, perm, ucol, uptr, rows)
    ctx.weight_shape = tuple(weight.shape)
    ctx.sparse_grad = sparse_grad


def _sparse_linear_backward(ctx, grad):
    if grad is None:  # eager path, materialize_grads off: no gradient came (gradcheck does this)
        return (None,) * 10
    crow, col, val, perm, ucol, uptr, rows = ctx.saved_tensors
    d_weight = d_bias = None
    if ctx.needs_input_grad[7]:
        d_weight, _ = COL_ACCUMULATE.grad(
            ctx, perm, ucol, uptr, rows, crow, col, val, grad.contiguous(), ctx.weight_shape[0],
            False, None, ctx.sparse_grad,
        )  # fmt: skip
        if ctx.sparse_grad:
            d_weight = _as_sparse_rows(ucol.unsqueeze(0), d_weight, ctx.weight_shape)
    if ctx.needs_input_grad[8]:
        d_bias = grad.sum(0)
    return None, None, None, None, None, None, None, d_weight, d_bias, None


SPARSE_LINEAR = Op(
    "sparse_linear",
    _check_sparse_linear,
    _sparse_linear_run,
    fake=lambda crow, col, val, perm, ucol, uptr, rows, weight, bias, sparse_grad: weight.new_empty(
        crow.shape[0] - 1, weight.shape[1]
    ),
    setup=_sparse_linear_setup,
    backward=_sparse_linear_backward,
)


# ------------------------------------------------------------------ sparse_output_mse
def _check_sparse_output_mse(h, weight, bias, crow, col, val, perm, ucol, uptr, rows, sparse_grad):
    check_weight(weight, bias, 0)
    csr.check_tensor(h, "h", dim=2)
    check_same(weight, h, "h")
    if h.shape[1] != weight.shape[1]:
        raise ValueError(f"h has {h.shape[1]} columns but the weight has {weight.shape[1]}")
    index = (perm, ucol, uptr, rows)
    _check_batch("sparse_output_mse", weight, crow, col, val, h.shape[0], index)


def _sparse_output_mse_run(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    crow: torch.Tensor,
    col: torch.Tensor,
    val: torch.Tensor,
    perm: torch.Tensor,
    ucol: torch.Tensor,
    uptr: torch.Tensor,
    rows: torch.Tensor,
    sparse_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked MSE of h @ weight^T + bias at the stored entries, their residuals)."""
    nnz = col.numel()
    resid = torch.empty(nnz, dtype=h.dtype, device=h.device)
    loss = h.new_empty(())
    launch(
        "sddmm_residual",
        h.device,
        op="sparse_output_mse",
        crow=ptr(crow),
        col=ptr(col),
        val=ptr(val),
        h=ptr(h),
        W=ptr(weight),
        bias=ptr(bias),
        resid=ptr(resid),
        loss=ptr(loss),
        B=h.shape[0],
        N=weight.shape[0],
        H=weight.shape[1],
        nnz=nnz,
        dtype=dtype_code(h),
        index_dtype=index_code(col),
    )
    return loss, resid


def _sparse_output_setup(ctx, inputs, output):
    h, weight, _bias, crow, col, _val, perm, ucol, uptr, rows, sparse_grad = inputs
    ctx.save_for_backward(h, weight, crow, col, perm, ucol, uptr, rows, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.sparse_grad = sparse_grad


def _sparse_output_backward(ctx, grad_loss, _grad_resid):
    if grad_loss is None:  # eager path, materialize_grads off: no gradient came for the loss
        return (None,) * 11
    h, weight, crow, col, perm, ucol, uptr, rows, resid = ctx.saved_tensors
    nnz = col.numel()
    # G = 2 (p - r) / nnz * grad_loss, folded into one scale so the kernels read it in place.
    scale = as_scalar(torch.mul(grad_loss, 2.0 / max(nnz, 1)), h.dtype)
    d_h = d_weight = d_bias = None
    if ctx.needs_input_grad[0]:
        d_h = SPMM_ROWS.grad(ctx, crow, col, resid, weight, scale)
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        d_weight, d_bias = COL_ACCUMULATE.grad(
            ctx, perm, ucol, uptr, rows, crow, col, resid, h, weight.shape[0], True, scale,
            ctx.sparse_grad,
        )  # fmt: skip
        if ctx.sparse_grad:
            rows_index = ucol.unsqueeze(0)
            d_weight = _as_sparse_rows(rows_index, d_weight, tuple(weight.shape))
            d_bias = _as_sparse_rows(rows_index, d_bias, (weight.shape[0],))
    return d_h, d_weight, d_bias, None, None, None, None, None, None, None, None


SPARSE_OUTPUT_MSE = Op(
    "sparse_output_mse",
    _check_sparse_output_mse,
    _sparse_output_mse_run,
    fake=lambda h, weight, bias, crow, col, val, perm, ucol, uptr, rows, sparse_grad: (
        h.new_empty(()),
        h.new_empty(col.shape[0]),
    ),
    setup=_sparse_output_setup,
    backward=_sparse_output_backward,
)


# ------------------------------------------------------------------ backward building blocks
def _check_spmm_rows(crow, col, val, weight, scale) -> None:
    check_weight(weight, None, 0)
    _check_batch("spmm_rows", weight, crow, col, val, crow.numel() - 1)
    check_scale(scale, weight)


def _spmm_rows_run(
    crow: torch.Tensor,
    col: torch.Tensor,
    val: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor | None,
) -> torch.Tensor:
    """scale * CSR @ weight (no bias): the output layer's dh."""
    out = weight.new_empty(crow.numel() - 1, weight.shape[1])
    _spmm(crow, col, val, weight, None, out, scale, "sparse_output_mse backward")
    return out


SPMM_ROWS = Op(
    "spmm_rows",
    _check_spmm_rows,
    _spmm_rows_run,
    fake=lambda crow, col, val, weight, scale: weight.new_empty(crow.shape[0] - 1, weight.shape[1]),
)


def _check_col_accumulate(
    perm, ucol, uptr, rows, crow, col, coef, A, n_cols, with_bias, scale, compact
) -> None:
    csr.check_tensor(A, "A", dim=2)
    check_kernel("col_accumulate", A, "sparse_layers")
    csr.check_structure(crow, col, coef, A.shape[0], "batch")
    csr.check_tensor(coef, "coef", dim=1, dtypes=(A.dtype,), device=A.device)
    csr.check_tensor(crow, "crow", dim=1, device=A.device)
    if n_cols < 0:
        raise ValueError(f"n_cols must be >= 0, got {n_cols}")
    csr.check_index_structure(ColumnIndex(perm, ucol, uptr, rows), coef.numel(), A.device)
    check_scale(scale, A)


def _col_accumulate_run(
    perm: torch.Tensor,
    ucol: torch.Tensor,
    uptr: torch.Tensor,
    rows: torch.Tensor,
    crow: torch.Tensor,
    col: torch.Tensor,
    coef: torch.Tensor,
    A: torch.Tensor,
    n_cols: int,
    with_bias: bool,
    scale: torch.Tensor | None,
    compact: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column sums of scale * coef * A[row] over the column index of the batch (crow,
    col) whose rows A holds: dense (n_cols x H) or compact (U x H) rows."""
    index = ColumnIndex(perm, ucol, uptr, rows)
    op = "sparse_output_mse backward" if with_bias else "sparse_linear backward"
    dW, db = _col_accumulate(index, crow, col, coef, A, n_cols, with_bias, scale, compact, op)
    return dW, (db if db is not None else A.new_empty(0))


def _col_accumulate_fake(perm, ucol, uptr, rows, crow, col, coef, A, n_cols, with_bias, scale,
                         compact):  # fmt: skip
    rows_out = ucol.shape[0] if compact else n_cols
    return A.new_empty(rows_out, A.shape[1]), A.new_empty(rows_out if with_bias else 0)


COL_ACCUMULATE = Op(
    "col_accumulate", _check_col_accumulate, _col_accumulate_run, fake=_col_accumulate_fake
)


# ------------------------------------------------------------------ column_index
def _column_index_run(
    crow: torch.Tensor, col: torch.Tensor, n_unique: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(perm, ucol, uptr, rows) of a CSR batch; n_unique < 0: count the distinct columns."""
    return csr.build_index(crow, col, n_unique)


def _column_index_fake(crow, col, n_unique):
    nnz = col.shape[0]
    if n_unique < 0:
        n_unique = torch.library.get_ctx().new_dynamic_size()

    def longs(n):
        return col.new_empty(n, dtype=torch.int64)

    return longs(nnz), longs(n_unique), longs(n_unique + 1), longs(nnz)


COLUMN_INDEX = Op(
    "column_index", csr.check_index_inputs, _column_index_run, fake=_column_index_fake
)


# ------------------------------------------------------------------ row_adam
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
    launch(
        "row_adam",
        p.device,
        op="row_adam_step",
        p=ptr(p),
        m=ptr(exp_avg),
        v=ptr(exp_avg_sq),
        g=ptr(values),
        ucol=ptr(ucol),
        U=ucol.numel(),
        N=N,
        H=p[0].numel() if N else 0,
        step_size=step_size,
        inv_sqrt_bc2=inv_sqrt_bc2,
        b1=b1,
        b2=b2,
        eps=eps,
        wd=wd,
        lazy=lazy,
        dtype=dtype_code(p),
    )


ROW_ADAM = Op(
    "row_adam",
    _check_row_adam,
    _row_adam_run,
    fake=lambda *args: None,
    mutates=("p", "exp_avg", "exp_avg_sq"),
)
