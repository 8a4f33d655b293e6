"""The fully sparse path: an input layer straight from a CSR batch, and an output
layer + masked MSE evaluated only at the stored ratings.

``sparse_linear(x, W, b)`` computes ``x @ W + b`` for a CSR batch x (B x N) and an
item-major weight W (N x H) without building the dense x; its backward accumulates
dW only in the rows of the columns present, through the batch's column index
(entries grouped by column), so no two threads write one row.
``sparse_output_mse(h, W, b, target)`` computes the predictions p = h[i] . W[j] + b[j]
only at the stored (i, j), the mean squared error against the ratings, and in
backward dh = G W (rows), dW[j] and db[j] (columns), G the scaled residuals.

Both equal their dense definitions (tests compare every gradient in float64 to
1e-10); both have a pure-PyTorch reference (ops/reference.py) and the same
impl="auto"|"fused"|"reference" switch as masked_mse. Each is a registered op defined
below with ops/schema.py's Op (what torch.compile and opcheck see, and the eager fast
path), with the backward's building blocks (spmm_rows, col_accumulate) and the column
index (column_index); the kernels are csrc/sparse_layers/. Python
checks metadata only; every kernel checks the batch's indices and its column index
(against the batch) as it reads them, in backward too.
"""

from __future__ import annotations

import torch

from deeprec import csr
from deeprec.csr import Batch, ColumnIndex, column_index
from deeprec.ops import recycle
from deeprec.ops.launch import (
    Impl,
    as_scalar,
    batch_args,
    check_kernel,
    check_scale,
    choose_impl,
    dtype_code,
    launch,
)
from deeprec.ops.reference import sparse_linear_reference, sparse_output_mse_reference
from deeprec.ops.schema import Op, check_same, check_weight

__all__ = [
    "sparse_linear",
    "sparse_linear_reference",
    "sparse_output_mse",
    "sparse_output_mse_reference",
]


# ------------------------------------------------------------------ public ops
def sparse_linear(
    x: object,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    index: ColumnIndex | None = None,
    impl: Impl = "auto",
    sparse_grad: bool = False,
) -> torch.Tensor:
    """x @ weight + bias for a CSR batch x (B x N), weight (N x H), bias (H); (B x H).

    Differentiable with respect to weight and bias (x is data: a Batch, a torch sparse
    CSR tensor or a triple). ``index``: the batch's ColumnIndex, if already known (a
    Batch carries its own; otherwise it is built here, which on a GPU costs a host sync).
    ``sparse_grad``: the fused path returns weight's gradient as a sparse COO tensor
    holding only the batch's columns (for deeprec.training.optim.ItemAdam).
    """
    check_weight(weight, bias, 1)
    parts = csr.unpack(x, (_rows_of(x), weight.shape[0]), name="x")
    check_same(weight, parts.val, "x values")
    if choose_impl(weight, impl, "sparse_linear", "sparse_layers") == "reference":
        if not torch.compiler.is_compiling():
            csr.check_values(parts, weight.shape[0], "x")
        return sparse_linear_reference(parts, weight, bias)
    index = _index_of(x, parts, index)
    return SPARSE_LINEAR(*parts, *index, weight, bias, sparse_grad)


def sparse_output_mse(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    target: object,
    *,
    index: ColumnIndex | None = None,
    impl: Impl = "auto",
    sparse_grad: bool = False,
) -> torch.Tensor:
    """Masked MSE of the output layer h @ weight^T + bias, only where target stores a rating.

    h: (B, H) hidden activations; weight: (N, H); bias: (N); target: CSR (B, N) ratings
    (a Batch, a torch sparse CSR tensor or a triple).
    Differentiable with respect to h, weight and bias. ``sparse_grad``: the fused path
    returns weight's and bias's gradients as sparse COO tensors of the batch's columns.
    """
    check_weight(weight, bias, 0)
    if not isinstance(h, torch.Tensor) or h.dim() != 2 or h.shape[1] != weight.shape[1]:
        raise ValueError(
            f"h must be (B, {weight.shape[1]}) to match weight {tuple(weight.shape)}, "
            f"got {tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__}"
        )
    check_same(weight, h, "h")
    parts = csr.unpack(target, (h.shape[0], weight.shape[0]))
    check_same(weight, parts.val, "target values")
    if choose_impl(weight, impl, "sparse_output_mse", "sparse_layers") == "reference":
        if not torch.compiler.is_compiling():
            csr.check_values(parts, weight.shape[0])
        return sparse_output_mse_reference(h, weight, bias, parts)
    if not h.is_contiguous():
        h = h.contiguous()
    index = _index_of(target, parts, index)
    loss, _ = SPARSE_OUTPUT_MSE(h, weight, bias, *parts, *index, sparse_grad)
    return loss


def _index_of(data: object, parts: csr.CSRParts, index: ColumnIndex | None) -> ColumnIndex:
    """The given index, a Batch's own, or one built for a caller's CSR (on a GPU: a sync)."""
    if index is not None:
        return index
    if isinstance(data, Batch):
        return data.index
    return column_index(parts.crow, parts.col)


def _rows_of(x: object) -> int:
    if isinstance(x, Batch):
        return x.crow.numel() - 1
    if isinstance(x, torch.Tensor) and x.layout == torch.sparse_csr:
        return x.shape[0]
    if isinstance(x, (tuple, list)) and len(x) == 3 and isinstance(x[0], torch.Tensor):
        return x[0].numel() - 1
    raise TypeError(
        f"x must be a torch sparse CSR tensor or a (crow, col, val) triple, got {type(x).__name__}"
    )


# ------------------------------------------------------------------ the ops' definitions
def check_batch(op: str, weight, crow, col, val, n_rows: int, index=None, name="target"):
    """The sparse kernels exist, and the batch (n_rows rows) and its index have the dtypes,
    devices and lengths they need. The values are the kernels' to check."""
    check_kernel(op, weight, "sparse_layers")
    csr.check_structure(crow, col, val, n_rows, name)
    check_same(weight, val, f"{name} values")
    if index is not None:
        csr.check_index_structure(ColumnIndex(*index), col.numel(), weight.device)


def _spmm(crow, col, val, weight, bias, out, scale, op: str) -> None:
    """out = bias + scale * CSR @ weight."""
    B, H = out.shape
    launch("sparse_layers.spmm_rows", weight.device, op=op, **batch_args(crow, col), val=val,
           W=weight, bias=bias, out=out, B=B, N=weight.shape[0], H=H, scale=scale,
           dtype=dtype_code(weight))  # fmt: skip


def _col_accumulate(index: ColumnIndex, crow, col, coef, A, n_cols, with_bias, scale, compact, op):
    """(dW, db or None): per-column sums of scale * coef * A[row], over the column index
    of the batch (crow, col) that A's rows belong to. Dense: dW (n_cols x H), db (n_cols),
    zero where the batch has no entry. Compact: only the touched columns, dW (U x H) and db
    (U) in ucol order."""
    B, H = A.shape
    rows_out = index.ucol.numel() if compact else n_cols
    dW = recycle.empty(rows_out, H, A.dtype, A.device)
    db = torch.empty(rows_out, dtype=A.dtype, device=A.device) if with_bias else None
    launch("sparse_layers.col_accumulate", A.device, op=op, **index._asdict(),
           **batch_args(crow, col), coef=coef, A=A, dW=dW, db=db, U=index.ucol.numel(),
           N=n_cols, B=B, H=H, scale=scale, dtype=dtype_code(A), compact=compact)  # fmt: skip
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
    check_batch("sparse_linear", weight, crow, col, val, crow.numel() - 1, index, "x")


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
    check_batch("sparse_output_mse", weight, crow, col, val, h.shape[0], index)


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
    launch("sparse_layers.sddmm_residual", h.device, op="sparse_output_mse",
           **batch_args(crow, col), val=val, h=h, W=weight, bias=bias, resid=resid, loss=loss,
           B=h.shape[0], N=weight.shape[0], H=weight.shape[1], dtype=dtype_code(h))  # fmt: skip
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
    check_batch("spmm_rows", weight, crow, col, val, crow.numel() - 1)
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
