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
impl="auto"|"fused"|"reference" switch as masked_mse. A fused op runs one of two
backends (ops/backends.py): deeprec's kernels (csrc/sparse_layers/) or torch's own sparse
ops (ops/sparse_torch.py). Each op is defined below with ops/schema.py's Op, with the
backward's building blocks (spmm_rows, col_accumulate) and the column index
(column_index). ``Op.check`` checks metadata only; the kernels, or the device checks
before torch's ops, check the batch's indices and its column index (against the batch)
as they read them, in backward too.
"""

from __future__ import annotations

import warnings

import torch

from deeprec import csr
from deeprec.csr import Batch, ColumnIndex, column_index
from deeprec.ops import backends, recycle, sparse_torch
from deeprec.ops.device_checks import checked_csr
from deeprec.ops.native import DeviceKernels, batch_args
from deeprec.ops.reference import sparse_linear_reference, sparse_output_mse_reference
from deeprec.ops.schema import (
    Impl,
    Op,
    as_scalar,
    check_rows_input,
    check_same,
    check_scale,
    check_weight,
    in_float32,
)

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
    bias: torch.Tensor | None,
    *,
    index: ColumnIndex | None = None,
    impl: Impl = "auto",
    backend: str | None = None,
    sparse_grad: bool = False,
) -> torch.Tensor:
    """x @ weight + bias for a CSR batch x (B x N), weight (N x H), bias (H) or None; (B x H).

    Differentiable with respect to weight and bias (x is data: a Batch, a torch sparse
    CSR tensor or a triple). ``index``: the batch's ColumnIndex, if already known (a
    Batch carries its own; otherwise it is built here, which on a GPU costs a host sync).
    ``backend``: "native" or "torch" (default: the measured faster one on weight's device,
    ops/backends.py). ``sparse_grad``: the fused path returns weight's gradient as a sparse
    COO tensor holding only the batch's columns (for deeprec.training.optim.ItemAdam).
    """
    parts = csr.unpack(x, (_rows_of(x), csr.dim(weight, 0)), name="x")
    index = _index_of(x, parts, index)
    backend = backends.resolve(backend, weight)
    return SPARSE_LINEAR.call(impl, *parts, *index, weight, bias, sparse_grad, backend)


def sparse_output_mse(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: object,
    *,
    index: ColumnIndex | None = None,
    impl: Impl = "auto",
    backend: str | None = None,
    sparse_grad: bool = False,
) -> torch.Tensor:
    """Masked MSE of the output layer h @ weight^T + bias, only where target stores a rating.

    h: (B, H) hidden activations; weight: (N, H); bias: (N) or None; target: CSR (B, N)
    ratings (a Batch, a torch sparse CSR tensor or a triple). Differentiable with respect
    to h, weight and bias. ``backend`` as sparse_linear's. ``sparse_grad``: the fused path
    returns weight's and bias's gradients as sparse COO tensors of the batch's columns.
    """
    parts = csr.unpack(target, (csr.dim(h, 0), csr.dim(weight, 0)), rows_from="h")
    index = _index_of(target, parts, index)
    backend = backends.resolve(backend, weight)
    args = (csr.contiguous(h), weight, bias, *parts, *index, sparse_grad, backend)
    loss, _ = SPARSE_OUTPUT_MSE.call(impl, *args)
    return loss


def _index_of(data: object, parts: csr.CSRParts, index: ColumnIndex | None) -> ColumnIndex:
    """The given index, a Batch's own, or one built for a caller's CSR (on a GPU: a sync)."""
    if index is not None:
        return index
    if isinstance(data, Batch):
        return data.index
    return column_index(parts.crow, parts.col)


def _rows_of(x: object) -> int | None:
    if isinstance(x, Batch):
        return x.crow.numel() - 1
    if isinstance(x, torch.Tensor) and x.layout == torch.sparse_csr:
        return x.shape[0]
    if isinstance(x, (tuple, list)) and len(x) == 3 and isinstance(x[0], torch.Tensor):
        return x[0].numel() - 1
    return None  # csr.unpack says what x must be


# ------------------------------------------------------------------ shared pieces
def check_batch(weight, crow, col, val, n_rows: int, index=None, name="target",
                rows_from="the batch") -> None:  # fmt: skip
    """The batch (n_rows rows, as ``rows_from`` has) and its index have the dtypes, devices
    and lengths they need. The values are the kernels' (or the device checks') to check."""
    csr.check_structure(crow, col, val, n_rows, name, rows_from=rows_from)
    check_same(weight, val, f"{name} values")
    if index is not None:
        csr.check_index_structure(ColumnIndex(*index), col.numel(), weight.device)


def _spmm(kernels, crow, col, val, weight, bias, scale, backend: str, op: str) -> torch.Tensor:
    """bias + scale * CSR @ weight, (B x H)."""
    if backend == "torch":
        return sparse_torch.product(op, crow, col, val, weight, bias, scale)
    B, N, H = crow.numel() - 1, weight.shape[0], weight.shape[1]
    out = weight.new_empty(B, H)
    kernels.launch("sparse_layers.spmm_rows", weight.device, op=op, dtype=weight.dtype,
                   **batch_args(crow, col), val=val, W=weight, bias=bias, out=out, B=B, N=N,
                   H=H, scale=scale)  # fmt: skip
    return out


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


# ------------------------------------------------------------------ sparse_linear
def _check_sparse_linear(crow, col, val, perm, ucol, uptr, rows, weight, bias, sparse_grad,
                         backend) -> None:  # fmt: skip
    check_weight(weight, bias, 1)
    check_batch(weight, crow, col, val, crow.numel() - 1, (perm, ucol, uptr, rows), "x")
    backends.check(backend)


def _sparse_linear_run(
    kernels: DeviceKernels,
    crow: torch.Tensor,
    col: torch.Tensor,
    val: torch.Tensor,
    perm: torch.Tensor,
    ucol: torch.Tensor,
    uptr: torch.Tensor,
    rows: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    sparse_grad: bool,
    backend: str,
) -> torch.Tensor:
    """x @ weight + bias for the CSR batch x and its column index."""
    return _spmm(kernels, crow, col, val, weight, bias, None, backend, "sparse_linear")


def _sparse_linear_reference(crow, col, val, perm, ucol, uptr, rows, weight, bias,
                             sparse_grad, backend) -> torch.Tensor:  # fmt: skip
    checked = checked_csr("sparse_linear", csr.CSRParts(crow, col, val), weight.shape[0])
    return sparse_linear_reference(csr.CSRParts(*checked[:3]), weight, bias)


def _sparse_linear_setup(ctx, inputs, output):
    crow, col, val, perm, ucol, uptr, rows, weight, _bias, sparse_grad, backend = inputs
    ctx.save_for_backward(crow, col, val, perm, ucol, uptr, rows)
    ctx.weight_shape = tuple(weight.shape)
    ctx.sparse_grad, ctx.backend = sparse_grad, backend


def _sparse_linear_backward(ctx, grad):
    if grad is None:
        return (None,) * 11
    crow, col, val, perm, ucol, uptr, rows = ctx.saved_tensors
    d_weight = d_bias = None
    if ctx.needs_input_grad[7]:
        d_weight, _ = COL_ACCUMULATE(
            perm, ucol, uptr, rows, crow, col, val, grad.contiguous(), ctx.weight_shape[0],
            False, None, ctx.sparse_grad, ctx.backend,
        )  # fmt: skip
        if ctx.sparse_grad:
            d_weight = _as_sparse_rows(ucol.unsqueeze(0), d_weight, ctx.weight_shape)
    if ctx.needs_input_grad[8]:
        d_bias = grad.sum(0)
    return None, None, None, None, None, None, None, d_weight, d_bias, None, None


SPARSE_LINEAR = Op(
    "sparse_linear",
    _check_sparse_linear,
    _sparse_linear_run,
    fake=lambda crow, col, val, perm, ucol, uptr, rows, weight, bias, sparse_grad, backend: (
        weight.new_empty(crow.shape[0] - 1, weight.shape[1])
    ),
    family="sparse_layers",
    reference=_sparse_linear_reference,
    setup=_sparse_linear_setup,
    backward=_sparse_linear_backward,
    lead=7,
    autocast=in_float32,
)


# ------------------------------------------------------------------ sparse_output_mse
def _check_sparse_output_mse(h, weight, bias, crow, col, val, perm, ucol, uptr, rows,
                             sparse_grad, backend) -> None:  # fmt: skip
    check_weight(weight, bias, 0)
    check_rows_input(h, "h", weight)
    check_batch(weight, crow, col, val, h.shape[0], (perm, ucol, uptr, rows), rows_from="h")
    backends.check(backend)


def _sparse_output_mse_run(
    kernels: DeviceKernels,
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    crow: torch.Tensor,
    col: torch.Tensor,
    val: torch.Tensor,
    perm: torch.Tensor,
    ucol: torch.Tensor,
    uptr: torch.Tensor,
    rows: torch.Tensor,
    sparse_grad: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked MSE of h @ weight^T + bias at the stored entries, their residuals; a refused
    entry's residual is 0)."""
    if backend == "torch":
        return sparse_torch.residuals("sparse_output_mse", h, weight, bias, crow, col, val)
    resid = torch.empty(col.numel(), dtype=h.dtype, device=h.device)
    loss = h.new_empty(())
    kernels.launch("sparse_layers.sddmm_residual", h.device, op="sparse_output_mse",
                   dtype=h.dtype, **batch_args(crow, col), val=val, h=h, W=weight, bias=bias,
                   resid=resid, loss=loss, B=h.shape[0], N=weight.shape[0],
                   H=weight.shape[1])  # fmt: skip
    return loss, resid


def _sparse_output_mse_reference(h, weight, bias, crow, col, val, perm, ucol, uptr, rows,
                                 sparse_grad, backend):  # fmt: skip
    checked = checked_csr("sparse_output_mse", csr.CSRParts(crow, col, val), weight.shape[0])
    loss = sparse_output_mse_reference(h, weight, bias, csr.CSRParts(*checked[:3]))
    return torch.where(checked.ok, loss, 0), None  # a refused batch (deferred): nothing


def _sparse_output_setup(ctx, inputs, output):
    h, weight, bias, crow, col, _val, perm, ucol, uptr, rows, sparse_grad, backend = inputs
    ctx.save_for_backward(h, weight, crow, col, perm, ucol, uptr, rows, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # no zero gradient written for the residuals
    ctx.sparse_grad, ctx.backend, ctx.with_bias = sparse_grad, backend, bias is not None


def _sparse_output_backward(ctx, grad_loss, _grad_resid):
    if grad_loss is None:  # no gradient came for the loss (only the residuals were used)
        return (None,) * 12
    h, weight, crow, col, perm, ucol, uptr, rows, resid = ctx.saved_tensors
    nnz = col.numel()
    # G = 2 (p - r) / nnz * grad_loss, folded into one scale so the kernels read it in place.
    scale = as_scalar(torch.mul(grad_loss, 2.0 / max(nnz, 1)), h.dtype)
    d_h = d_weight = d_bias = None
    if ctx.needs_input_grad[0]:
        d_h = SPMM_ROWS(crow, col, resid, weight, scale, ctx.backend)
    with_bias = ctx.with_bias and ctx.needs_input_grad[2]
    if ctx.needs_input_grad[1] or with_bias:
        d_weight, d_bias = COL_ACCUMULATE(
            perm, ucol, uptr, rows, crow, col, resid, h, weight.shape[0], with_bias, scale,
            ctx.sparse_grad, ctx.backend,
        )  # fmt: skip
        rows_index = ucol.unsqueeze(0)
        if ctx.sparse_grad:
            d_weight = _as_sparse_rows(rows_index, d_weight, tuple(weight.shape))
        if not with_bias:
            d_bias = None
        elif ctx.sparse_grad:
            d_bias = _as_sparse_rows(rows_index, d_bias, (weight.shape[0],))
    return d_h, d_weight, d_bias, None, None, None, None, None, None, None, None, None


SPARSE_OUTPUT_MSE = Op(
    "sparse_output_mse",
    _check_sparse_output_mse,
    _sparse_output_mse_run,
    fake=lambda h, weight, bias, crow, col, val, perm, ucol, uptr, rows, sparse_grad, backend: (
        h.new_empty(()),
        h.new_empty(col.shape[0]),
    ),
    family="sparse_layers",
    reference=_sparse_output_mse_reference,
    setup=_sparse_output_setup,
    backward=_sparse_output_backward,
    lead=1,
    autocast=in_float32,
)


# ------------------------------------------------------------------ backward building blocks
def _check_spmm_rows(crow, col, val, weight, scale, backend) -> None:
    check_weight(weight, None, 0)
    check_batch(weight, crow, col, val, crow.numel() - 1)
    check_scale(scale, weight)
    backends.check(backend)


def _spmm_rows_run(
    kernels: DeviceKernels,
    crow: torch.Tensor,
    col: torch.Tensor,
    val: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor | None,
    backend: str,
) -> torch.Tensor:
    """scale * CSR @ weight (no bias): the output layer's dh."""
    return _spmm(kernels, crow, col, val, weight, None, scale, backend,
                 "sparse_output_mse backward")  # fmt: skip


SPMM_ROWS = Op(
    "spmm_rows",
    _check_spmm_rows,
    _spmm_rows_run,
    fake=lambda crow, col, val, weight, scale, backend: weight.new_empty(
        crow.shape[0] - 1, weight.shape[1]
    ),
    family="sparse_layers",
    lead=3,
    autocast=in_float32,
)


def _check_col_accumulate(perm, ucol, uptr, rows, crow, col, coef, A, n_cols, with_bias,
                          scale, compact, backend) -> None:  # fmt: skip
    csr.check_tensor(A, "A", dim=2)
    if not A.is_floating_point():
        raise TypeError(f"A must be floating point, got {A.dtype}")
    csr.check_structure(crow, col, coef, A.shape[0], "batch", rows_from="A")
    csr.check_tensor(coef, "coef", dim=1, dtypes=(A.dtype,), device=A.device)
    csr.check_tensor(crow, "crow", dim=1, device=A.device)
    if n_cols < 0:
        raise ValueError(f"n_cols must be >= 0, got {n_cols}")
    csr.check_index_structure(ColumnIndex(perm, ucol, uptr, rows), coef.numel(), A.device)
    check_scale(scale, A)
    backends.check(backend)


def _col_accumulate_run(
    kernels: DeviceKernels,
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
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column sums of scale * coef * A[row] over the column index of the batch (crow,
    col) whose rows A holds: dense (n_cols x H) or compact (U x H) rows, and the same of
    scale * coef (empty unless with_bias)."""
    index = ColumnIndex(perm, ucol, uptr, rows)
    op = "sparse_output_mse backward" if with_bias else "sparse_linear backward"
    if backend == "torch":
        d_w, d_b = sparse_torch.column_sums(op, index, crow, col, coef, A, n_cols, with_bias,
                                            scale, compact)  # fmt: skip
        return d_w, (d_b if d_b is not None else A.new_empty(0))
    B, H = A.shape
    rows_out = ucol.numel() if compact else n_cols
    d_w = recycle.empty(rows_out, H, A.dtype, A.device)
    d_b = torch.empty(rows_out, dtype=A.dtype, device=A.device) if with_bias else None
    kernels.launch("sparse_layers.col_accumulate", A.device, op=op, dtype=A.dtype,
                   **index._asdict(), **batch_args(crow, col), coef=coef, A=A, dW=d_w, db=d_b,
                   U=ucol.numel(), N=n_cols, B=B, H=H, scale=scale, compact=compact)  # fmt: skip
    return d_w, (d_b if d_b is not None else A.new_empty(0))


def _col_accumulate_fake(perm, ucol, uptr, rows, crow, col, coef, A, n_cols, with_bias, scale,
                         compact, backend):  # fmt: skip
    rows_out = ucol.shape[0] if compact else n_cols
    return A.new_empty(rows_out, A.shape[1]), A.new_empty(rows_out if with_bias else 0)


COL_ACCUMULATE = Op(
    "col_accumulate",
    _check_col_accumulate,
    _col_accumulate_run,
    fake=_col_accumulate_fake,
    family="sparse_layers",
    lead=7,
    autocast=in_float32,
)


# ------------------------------------------------------------------ column_index
def _column_index_run(
    kernels: DeviceKernels, crow: torch.Tensor, col: torch.Tensor, n_unique: int
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
    "column_index",
    csr.check_index_inputs,
    _column_index_run,
    fake=_column_index_fake,
    family="sparse_layers",
)
