"""CSR batch unpacking and validation shared by every op that takes rating rows.

Everything is checked here, in Python, before an address reaches native code:
structure (ranks, lengths, dtypes, devices) without touching values, then the
values (offsets, column bounds, canonical order) on the host.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

_INDEX_DTYPES = (torch.int32, torch.int64)


class CSRParts(NamedTuple):
    """Plain contiguous components of a (B x N) CSR batch; crow is always int64."""

    crow: torch.Tensor
    col: torch.Tensor
    val: torch.Tensor


def unpack(target: object, shape: tuple[int, int], name: str = "target") -> CSRParts:
    """Split a torch sparse CSR tensor or a (crow, col, val) triple into checked parts.

    ``shape`` is the dense (B, N) shape the batch must have. Raises TypeError or
    ValueError naming ``name`` and what is wrong.
    """
    if isinstance(target, torch.Tensor):
        if target.layout != torch.sparse_csr:
            raise TypeError(
                f"{name} must be a torch sparse CSR tensor or a (crow, col, val) triple, "
                f"got a tensor with layout {target.layout}"
            )
        if target.dim() != 2:
            raise ValueError(f"{name} must be a 2-D CSR tensor, got shape {tuple(target.shape)}")
        if tuple(target.shape) != tuple(shape):
            raise ValueError(
                f"{name} has shape {tuple(target.shape)} but output has shape {tuple(shape)}"
            )
        crow, col, val = target.crow_indices(), target.col_indices(), target.values()
    elif isinstance(target, (tuple, list)) and len(target) == 3:
        crow, col, val = target
        for part, what in ((crow, "crow"), (col, "col"), (val, "val")):
            if not isinstance(part, torch.Tensor):
                raise TypeError(f"{name}: {what} must be a torch.Tensor, got {type(part).__name__}")
            if part.layout != torch.strided:
                raise TypeError(f"{name}: {what} must be a dense (strided) tensor")
    else:
        raise TypeError(
            f"{name} must be a torch sparse CSR tensor or a (crow, col, val) triple, "
            f"got {type(target).__name__}"
        )
    rows, _ = shape
    if crow.dim() != 1 or col.dim() != 1 or val.dim() != 1:
        raise ValueError(
            f"{name}: crow, col and val must be 1-D, got shapes "
            f"{tuple(crow.shape)}, {tuple(col.shape)}, {tuple(val.shape)}"
        )
    if crow.dtype not in _INDEX_DTYPES or col.dtype not in _INDEX_DTYPES:
        raise TypeError(
            f"{name}: crow and col must be int32 or int64, got {crow.dtype} and {col.dtype}"
        )
    if crow.numel() == 0:
        raise ValueError(f"{name}: crow is empty; a batch of B rows needs B + 1 offsets")
    if crow.numel() != rows + 1:
        raise ValueError(
            f"{name}: crow has {crow.numel()} entries but the batch has {rows} rows "
            f"(expected {rows + 1})"
        )
    if col.numel() != val.numel():
        raise ValueError(f"{name}: col has {col.numel()} entries but val has {val.numel()}")
    if not (crow.device == col.device == val.device):
        raise ValueError(
            f"{name}: crow, col and val are on different devices "
            f"({crow.device}, {col.device}, {val.device})"
        )
    return CSRParts(crow.to(torch.int64).contiguous(), col.contiguous(), val.contiguous())


def check_values(parts: CSRParts, n_cols: int, name: str = "target") -> None:
    """Check offsets, column bounds and canonical order (strictly increasing columns per row).

    Runs on numpy views of the index arrays: a dozen small numpy calls cost ~20 us
    where the same torch ops cost ~75 us on the CPU. CUDA indices are copied to the
    host first (one sync, as any check of device values needs).
    """
    crow = parts.crow.detach().cpu().numpy()
    col = parts.col.detach().cpu().numpy()
    nnz = col.size
    bad = crow[0] != 0 or crow[-1] != nnz or bool((crow[1:] < crow[:-1]).any())
    if nnz and not bad:
        bad = col.min() < 0 or col.max() >= n_cols
        if nnz > 1 and not bad:
            # A non-increasing step col[k] -> col[k+1] is allowed only where row k+1 begins.
            ok = col[1:] > col[:-1]
            starts = crow[1:-1]
            ok[starts[(starts > 0) & (starts < nnz)] - 1] = True
            bad = not ok.all()
    if bad:
        raise ValueError(_describe(crow, col, n_cols, name))


def _describe(crow: np.ndarray, col: np.ndarray, n_cols: int, name: str) -> str:
    """The first problem in a batch that check_values rejected, as one line."""
    nnz = col.size
    if crow[0] != 0:
        return f"{name}: crow[0] must be 0, got {crow[0]}"
    drops = np.flatnonzero(crow[1:] < crow[:-1])
    if drops.size:
        i = int(drops[0])
        return (
            f"{name}: crow must be non-decreasing, but crow[{i}] = {crow[i]} > "
            f"crow[{i + 1}] = {crow[i + 1]}"
        )
    if crow[-1] != nnz:
        return f"{name}: crow[-1] = {crow[-1]} must equal nnz = {nnz} (the length of col and val)"
    out = np.flatnonzero((col < 0) | (col >= n_cols))
    if out.size:
        k = int(out[0])
        row = int(np.searchsorted(crow, k, side="right")) - 1
        return f"{name}: column index {col[k]} at position {k} (row {row}) is outside [0, {n_cols})"
    for row in range(crow.size - 1):
        seg = col[crow[row] : crow[row + 1]]
        if seg.size > 1 and not (seg[1:] > seg[:-1]).all():
            return (
                f"{name}: columns of row {row} are not strictly increasing (CSR must be sorted "
                "and free of duplicates; use scipy's sum_duplicates()/sort_indices() or "
                "torch's coalesce())"
            )
    return f"{name}: malformed CSR batch"
