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
in ops/schema.py (what torch.compile and opcheck see, and the eager fast path). Python
checks metadata only; every kernel checks the batch's indices and its column index
(against the batch) as it reads them, in backward too.
"""

from __future__ import annotations

import torch

from deeprec import csr
from deeprec.csr import Batch, ColumnIndex, column_index
from deeprec.ops.launch import Impl, choose_impl
from deeprec.ops.reference import sparse_linear_reference, sparse_output_mse_reference
from deeprec.ops.schema import SPARSE_LINEAR, SPARSE_OUTPUT_MSE, check_same, check_weight

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
