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
1e-10); both have a pure-PyTorch reference (gather / index_add) and the same
impl="auto"|"fused"|"reference" switch as masked_mse. Each is a registered op (what
torch.compile and opcheck see) and, for eager calls, an autograd.Function over the same
checks and kernels whose backward launches the kernels directly. Python checks metadata
only; every kernel checks the batch's indices and its column index (against the batch)
as it reads them, in backward too.
"""

from __future__ import annotations

import warnings

import torch

from deeprec import csr
from deeprec.csr import Batch, ColumnIndex, column_index
from deeprec.ops import recycle
from deeprec.ops.launch import (
    Impl,
    as_scalar,
    check_kernel,
    check_scale,
    choose_impl,
    dtype_code,
    index_code,
    launch,
    ptr,
)

__all__ = [
    "sparse_linear",
    "sparse_linear_reference",
    "sparse_output_mse",
    "sparse_output_mse_reference",
]

SPARSE_DTYPES = (torch.float32, torch.float64)


# ------------------------------------------------------------------ references
def sparse_linear_reference(
    parts: csr.CSRParts, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x @ W + b for CSR x, in pure PyTorch (gather rows of W, index_add into rows)."""
    crow, col, val = parts
    B, nnz = crow.numel() - 1, col.numel()
    rows = csr.entry_rows(crow, nnz)
    out = torch.zeros(B, weight.shape[1], dtype=weight.dtype, device=weight.device)
    out = out.index_add(0, rows, val[:, None] * weight[col])
    return out if bias is None else out + bias


def sparse_output_mse_reference(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, parts: csr.CSRParts
) -> torch.Tensor:
    """Masked MSE of h @ W^T + b at the stored entries only, in pure PyTorch."""
    crow, col, val = parts
    nnz = col.numel()
    rows = csr.entry_rows(crow, nnz)
    pred = (h[rows] * weight[col]).sum(1) + bias[col]
    return ((pred - val) ** 2).sum() / max(nnz, 1)


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
    holding only the batch's columns (for deeprec.optim.ItemAdam).
    """
    _check_weight(weight, bias, 1)
    parts = csr.unpack(x, (_rows_of(x), weight.shape[0]), name="x")
    _check_same(weight, parts.val, "x values")
    if choose_impl(weight, impl, "sparse_linear", SPARSE_DTYPES) == "reference":
        if not torch.compiler.is_compiling():
            csr.check_values(parts, weight.shape[0], "x")
        return sparse_linear_reference(parts, weight, bias)
    index = _index_of(x, parts, index)
    if torch.compiler.is_compiling():
        return torch.ops.deeprec.sparse_linear(*parts, *index, weight, bias, sparse_grad)
    return _SparseLinear.apply(*parts, *index, weight, bias, sparse_grad)


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
    _check_weight(weight, bias, 0)
    if not isinstance(h, torch.Tensor) or h.dim() != 2 or h.shape[1] != weight.shape[1]:
        raise ValueError(
            f"h must be (B, {weight.shape[1]}) to match weight {tuple(weight.shape)}, "
            f"got {tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__}"
        )
    _check_same(weight, h, "h")
    parts = csr.unpack(target, (h.shape[0], weight.shape[0]))
    _check_same(weight, parts.val, "target values")
    if choose_impl(weight, impl, "sparse_output_mse", SPARSE_DTYPES) == "reference":
        if not torch.compiler.is_compiling():
            csr.check_values(parts, weight.shape[0])
        return sparse_output_mse_reference(h, weight, bias, parts)
    if not h.is_contiguous():
        h = h.contiguous()
    index = _index_of(target, parts, index)
    if torch.compiler.is_compiling():
        loss, _ = torch.ops.deeprec.sparse_output_mse(h, weight, bias, *parts, *index, sparse_grad)
    else:
        loss, _ = _SparseOutputMSE.apply(h, weight, bias, *parts, *index, sparse_grad)
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


def _check_weight(weight, bias, bias_dim: int) -> None:
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
        _check_same(weight, bias, "bias")
        if tuple(bias.shape) != (bias_len,) or not bias.is_contiguous():
            raise ValueError(
                f"bias must be a contiguous 1-D tensor of {bias_len} entries, got shape "
                f"{tuple(bias.shape)}"
            )


def _check_same(ref: torch.Tensor, other: torch.Tensor, name: str) -> None:
    if other.dtype != ref.dtype:
        raise TypeError(f"{name}: dtype {other.dtype}, but the weight's dtype is {ref.dtype}")
    if other.device != ref.device:
        raise ValueError(f"{name}: on {other.device}, but the weight is on {ref.device}")


def _check_batch(op: str, weight, crow, col, val, n_rows: int, index=None, name="target"):
    """Inside an op: the kernel exists, and the batch (n_rows rows) and its index have the
    dtypes, devices and lengths the kernels need. The values are the kernels' to check."""
    check_kernel(op, weight, SPARSE_DTYPES)
    csr.check_structure(crow, col, val, n_rows, name)
    _check_same(weight, val, f"{name} values")
    if index is not None:
        csr.check_index_structure(ColumnIndex(*index), col.numel(), weight.device)


# ------------------------------------------------------------------ native launches
def _spmm(crow, col, val, weight, bias, out, scale, op: str) -> None:
    """out = bias + scale * CSR @ weight."""
    B, H = out.shape
    launch(
        "spmm_rows",
        weight.device,
        *(ptr(crow), ptr(col), ptr(val), ptr(weight), ptr(bias), ptr(out)),
        *(B, weight.shape[0], H, col.numel(), ptr(scale), dtype_code(weight), index_code(col)),
        op=op,
    )


def _col_accumulate(
    index: ColumnIndex,
    crow,
    col,
    coef,
    A,
    n_cols: int,
    with_bias: bool,
    scale,
    compact: bool,
    op: str,
):
    """(dW, db or None): per-column sums of scale * coef * A[row], over the column index
    of the batch (crow, col) that A's rows belong to.

    Dense: dW (n_cols x H), db (n_cols), zero where the batch has no entry. Compact:
    only the touched columns, dW (U x H) and db (U) in ucol order.
    """
    B, H = A.shape
    rows_out = index.ucol.numel() if compact else n_cols
    dW = recycle.empty(rows_out, H, A.dtype, A.device)
    db = torch.empty(rows_out, dtype=A.dtype, device=A.device) if with_bias else None
    launch(
        "col_accumulate",
        A.device,
        *(ptr(t) for t in index),
        *(ptr(crow), ptr(col), ptr(coef), ptr(A), ptr(dW), ptr(db)),
        *(index.ucol.numel(), n_cols, B, H, col.numel(), ptr(scale)),
        *(dtype_code(A), index_code(col), compact),
        op=op,
    )
    return dW, db


def _as_sparse_rows(indices: torch.Tensor, values: torch.Tensor, shape: tuple[int, ...]):
    """A coalesced sparse COO gradient holding the rows of ``shape`` that ``indices`` names
    (ucol.unsqueeze(0): sorted, unique; the kernels that read them check them). Checking
    the invariants here is declined explicitly; torch still warned that they were
    "implicitly disabled" on every GPU training run, a warning we silence at this call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly")
        return torch.sparse_coo_tensor(
            indices, values, shape, is_coalesced=True, check_invariants=False
        )


# ------------------------------------------------------------------ torch.library ops
def _sparse_linear_impl(
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
    _check_weight(weight, bias, 1)
    B, H = crow.numel() - 1, weight.shape[1]
    _check_batch("sparse_linear", weight, crow, col, val, B, (perm, ucol, uptr, rows), "x")
    out = torch.empty(B, H, dtype=weight.dtype, device=weight.device)
    _spmm(crow, col, val, weight, bias, out, None, "sparse_linear")
    return out


_sparse_linear_op = torch.library.custom_op(
    "deeprec::sparse_linear", mutates_args=(), device_types=("cpu", "cuda")
)(_sparse_linear_impl)


@_sparse_linear_op.register_fake
def _(crow, col, val, perm, ucol, uptr, rows, weight, bias, sparse_grad):
    return weight.new_empty(crow.shape[0] - 1, weight.shape[1])


def _sparse_linear_setup(ctx, inputs, output):
    crow, col, val, perm, ucol, uptr, rows, weight, _bias, sparse_grad = inputs
    ctx.save_for_backward(crow, col, val, perm, ucol, uptr, rows)
    ctx.weight_shape = tuple(weight.shape)
    ctx.sparse_grad = sparse_grad


def _sparse_linear_backward(ctx, grad, eager: bool = False):
    if grad is None:  # eager path, materialize_grads off: no gradient came (gradcheck does this)
        return (None,) * 10
    crow, col, val, perm, ucol, uptr, rows = ctx.saved_tensors
    d_weight = d_bias = None
    if ctx.needs_input_grad[7]:
        if eager:  # the kernel checks the index against the batch again as it reads it
            index = ColumnIndex(perm, ucol, uptr, rows)
            d_weight, _ = _col_accumulate(
                index, crow, col, val, grad.contiguous(), ctx.weight_shape[0], False, None,
                ctx.sparse_grad, "sparse_linear backward",
            )  # fmt: skip
        else:
            d_weight, _ = torch.ops.deeprec.col_accumulate(
                perm,
                ucol,
                uptr,
                rows,
                crow,
                col,
                val,
                grad.contiguous(),
                ctx.weight_shape[0],
                False,
                None,
                ctx.sparse_grad,
            )
        if ctx.sparse_grad:
            d_weight = _as_sparse_rows(ucol.unsqueeze(0), d_weight, ctx.weight_shape)
    if ctx.needs_input_grad[8]:
        d_bias = grad.sum(0)
    return None, None, None, None, None, None, None, d_weight, d_bias, None


_sparse_linear_op.register_autograd(_sparse_linear_backward, setup_context=_sparse_linear_setup)


def _sparse_output_mse_impl(
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
    _check_weight(weight, bias, 0)
    csr.check_tensor(h, "h", dim=2)
    _check_same(weight, h, "h")
    if h.shape[1] != weight.shape[1]:
        raise ValueError(f"h has {h.shape[1]} columns but the weight has {weight.shape[1]}")
    B, H, nnz = h.shape[0], weight.shape[1], col.numel()
    _check_batch("sparse_output_mse", weight, crow, col, val, B, (perm, ucol, uptr, rows))
    resid = torch.empty(nnz, dtype=h.dtype, device=h.device)
    loss = h.new_empty(())
    launch(
        "sddmm_residual",
        h.device,
        *(ptr(crow), ptr(col), ptr(val), ptr(h), ptr(weight), ptr(bias), ptr(resid), ptr(loss)),
        *(B, weight.shape[0], H, nnz, dtype_code(h), index_code(col)),
        op="sparse_output_mse",
    )
    return loss, resid


_sparse_output_mse_op = torch.library.custom_op(
    "deeprec::sparse_output_mse", mutates_args=(), device_types=("cpu", "cuda")
)(_sparse_output_mse_impl)


@_sparse_output_mse_op.register_fake
def _(h, weight, bias, crow, col, val, perm, ucol, uptr, rows, sparse_grad):
    return h.new_empty(()), h.new_empty(col.shape[0])


def _sparse_output_setup(ctx, inputs, output):
    h, weight, _bias, crow, col, _val, perm, ucol, uptr, rows, sparse_grad = inputs
    ctx.save_for_backward(h, weight, crow, col, perm, ucol, uptr, rows, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.sparse_grad = sparse_grad


def _sparse_output_backward(ctx, grad_loss, _grad_resid, eager: bool = False):
    if grad_loss is None:  # eager path, materialize_grads off: no gradient came for the loss
        return (None,) * 11
    h, weight, crow, col, perm, ucol, uptr, rows, resid = ctx.saved_tensors
    nnz = col.numel()
    # G = 2 (p - r) / nnz * grad_loss, folded into one scale so the kernels read it in place.
    scale = as_scalar(torch.mul(grad_loss, 2.0 / max(nnz, 1)), h.dtype)
    d_h = d_weight = d_bias = None
    op = "sparse_output_mse backward"
    if ctx.needs_input_grad[0]:
        if eager:  # the kernels check the batch and its index again as they read them
            d_h = h.new_empty(crow.numel() - 1, weight.shape[1])
            _spmm(crow, col, resid, weight, None, d_h, scale, op)
        else:
            d_h = torch.ops.deeprec.spmm_rows(crow, col, resid, weight, scale)
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        if eager:
            index = ColumnIndex(perm, ucol, uptr, rows)
            d_weight, d_bias = _col_accumulate(
                index, crow, col, resid, h, weight.shape[0], True, scale, ctx.sparse_grad, op
            )
        else:
            d_weight, d_bias = torch.ops.deeprec.col_accumulate(
                perm, ucol, uptr, rows, crow, col, resid, h, weight.shape[0], True, scale,
                ctx.sparse_grad,
            )  # fmt: skip
        if ctx.sparse_grad:
            rows_index = ucol.unsqueeze(0)
            d_weight = _as_sparse_rows(rows_index, d_weight, tuple(weight.shape))
            d_bias = _as_sparse_rows(rows_index, d_bias, (weight.shape[0],))
    return d_h, d_weight, d_bias, None, None, None, None, None, None, None, None


_sparse_output_mse_op.register_autograd(_sparse_output_backward, setup_context=_sparse_output_setup)


def _eager(name: str, impl, setup, backward) -> type[torch.autograd.Function]:
    """The eager path of a registered op: an autograd.Function running the op's
    own ``impl`` (its checks and kernels) and ``setup``, without the custom-op dispatcher's
    Python autograd layer and re-dispatch; ``backward(..., eager=True)`` launches the
    kernels directly on the saved inputs (which check them again). torch.compile uses the
    op."""

    def forward(ctx, *inputs):
        out = impl(*inputs)
        setup(ctx, inputs, out)
        # No zero tensor for outputs backward does not read (sparse_output_mse's residuals).
        ctx.set_materialize_grads(False)
        return out

    def eager_backward(ctx, *grads):
        return backward(ctx, *grads, eager=True)

    members = {"forward": staticmethod(forward), "backward": staticmethod(eager_backward)}
    return type(name, (torch.autograd.Function,), members)


_SparseLinear = _eager(
    "_SparseLinear", _sparse_linear_impl, _sparse_linear_setup, _sparse_linear_backward
)
_SparseOutputMSE = _eager(
    "_SparseOutputMSE", _sparse_output_mse_impl, _sparse_output_setup, _sparse_output_backward
)


# Backward building blocks, themselves ops so torch.compile sees them as opaque calls.
@torch.library.custom_op("deeprec::spmm_rows", mutates_args=(), device_types=("cpu", "cuda"))
def _spmm_rows_op(
    crow: torch.Tensor,
    col: torch.Tensor,
    val: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor | None,
) -> torch.Tensor:
    """scale * CSR @ weight (no bias): the output layer's dh."""
    _check_weight(weight, None, 0)
    _check_batch("spmm_rows", weight, crow, col, val, crow.numel() - 1)
    check_scale(scale, weight)
    out = torch.empty(crow.numel() - 1, weight.shape[1], dtype=weight.dtype, device=weight.device)
    _spmm(crow, col, val, weight, None, out, scale, "spmm_rows")
    return out


@_spmm_rows_op.register_fake
def _(crow, col, val, weight, scale):
    return weight.new_empty(crow.shape[0] - 1, weight.shape[1])


@torch.library.custom_op("deeprec::col_accumulate", mutates_args=(), device_types=("cpu", "cuda"))
def _col_accumulate_op(
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
    csr.check_tensor(A, "A", dim=2)
    check_kernel("col_accumulate", A, SPARSE_DTYPES)
    csr.check_structure(crow, col, coef, A.shape[0], "batch")
    csr.check_tensor(coef, "coef", dim=1, dtypes=(A.dtype,), device=A.device)
    csr.check_tensor(crow, "crow", dim=1, device=A.device)
    if n_cols < 0:
        raise ValueError(f"n_cols must be >= 0, got {n_cols}")
    index = ColumnIndex(perm, ucol, uptr, rows)
    csr.check_index_structure(index, coef.numel(), A.device)
    check_scale(scale, A)
    dW, db = _col_accumulate(
        index, crow, col, coef, A, n_cols, with_bias, scale, compact, "col_accumulate"
    )
    return dW, (db if db is not None else A.new_empty(0))


@_col_accumulate_op.register_fake
def _(perm, ucol, uptr, rows, crow, col, coef, A, n_cols, with_bias, scale, compact):
    rows_out = ucol.shape[0] if compact else n_cols
    return A.new_empty(rows_out, A.shape[1]), A.new_empty(rows_out if with_bias else 0)
