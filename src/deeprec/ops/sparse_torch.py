"""The sparse layers' "torch" backend: the same results as their kernels, from torch's own
sparse ops (cuSPARSE on a GPU, where they were measured faster: ops/backends.py).

- x @ W + b and the output layer's dh: a CSR tensor of the batch times a dense matrix.
- The output layer at the stored ratings: ``sampled_addmm`` of h and W^T on the batch's
  pattern, whose values start as bias[col] - rating, so it returns the residuals.
- dW and db: the column index is the transposed batch's CSR structure (uptr its row
  offsets, the entries' rows in perm order its columns), so dW's touched rows are one CSR
  product and db a segment sum over uptr.

None of these ops checks an index, so every batch and index is checked first on its
device (ops/device_checks.py); a refused one is replaced by a stand-in that contributes
nothing. The loss is summed in double, as the kernels do.
"""

from __future__ import annotations

import threading
import warnings

import torch

from deeprec.csr import ColumnIndex, CSRParts
from deeprec.ops.device_checks import checked_csr, checked_index

_quiet = threading.Event()


def _csr(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor,
         shape: tuple[int, int]) -> torch.Tensor:  # fmt: skip
    """A sparse CSR tensor over checked parts (torch's own invariant check, a host read,
    declined). torch says once per process that CSR tensors are in beta: that once is
    spent here, quietly, on the first one."""
    if _quiet.is_set():
        return torch.sparse_csr_tensor(crow, col, val, shape, check_invariants=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        out = torch.sparse_csr_tensor(crow, col, val, shape, check_invariants=False)
    _quiet.set()
    return out


def product(op: str, crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor,
            weight: torch.Tensor, bias: torch.Tensor | None,
            scale: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """bias + scale * CSR @ weight for a batch (B rows over weight's N rows)."""
    B, N = crow.numel() - 1, weight.shape[0]
    c = checked_csr(op, CSRParts(crow, col, val), N)
    values = c.val if scale is None else c.val * scale
    x = _csr(c.crow, c.col, values, (B, N))
    return torch.sparse.mm(x, weight) if bias is None else torch.addmm(bias, x, weight)


def residuals(op: str, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              crow: torch.Tensor, col: torch.Tensor,
              val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(mean of the squared residuals, the residuals h[i] . W[j] + b[j] - r at the stored
    entries), the mean summed in double; 0 residuals for a refused batch."""
    B, N, nnz = h.shape[0], weight.shape[0], col.numel()
    c = checked_csr(op, CSRParts(crow, col, val), N)
    if c.col.numel() != nnz:  # a stand-in without entries
        resid = torch.zeros_like(val)
    else:
        start = -c.val if bias is None else bias.index_select(0, c.col) - c.val
        pattern = _csr(c.crow, c.col, start, (B, N))
        fitted = torch.sparse.sampled_addmm(pattern, h, weight.t()).values()
        resid = torch.where(c.ok, fitted, 0)
    loss = (resid.double().square().sum() / max(nnz, 1)).to(h.dtype)
    return loss, resid


def column_sums(op: str, index: ColumnIndex, crow: torch.Tensor, col: torch.Tensor,
                coef: torch.Tensor, A: torch.Tensor, n_cols: int, with_bias: bool,
                scale: torch.Tensor | None,
                compact: bool) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """Per-column sums of scale * coef * A[row] over the batch's column index: (dW, db or
    None), dense (n_cols rows, zero where untouched) or compact (the U touched columns,
    in ucol order)."""
    U, B, H = index.ucol.numel(), A.shape[0], A.shape[1]
    index, ok = checked_index(op, crow, col, index, n_cols)
    if index is None:  # refused, and nothing of it can be read: no contribution
        zeros_b = A.new_zeros(U if compact else n_cols) if with_bias else None
        return A.new_zeros(U if compact else n_cols, H), zeros_b
    perm, ucol, uptr, rows = index
    c = coef.index_select(0, perm)
    if scale is not None:
        c = c * scale
    c = torch.where(ok, c, 0)
    transposed = _csr(uptr, rows.index_select(0, perm), c, (U, B))
    d_w = torch.sparse.mm(transposed, A)
    d_b = torch.segment_reduce(c, "sum", offsets=uptr, unsafe=True) if with_bias else None
    if compact:
        return d_w, d_b
    dense_w = A.new_zeros(n_cols, H).index_copy_(0, ucol, d_w)
    dense_b = None if d_b is None else A.new_zeros(n_cols).index_copy_(0, ucol, d_b)
    return dense_w, dense_b
