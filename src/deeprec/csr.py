"""CSR batches and their column index: unpacking, and the checks every native op runs.

Native kernels trust the addresses and sizes they are given, so everything they read
is checked here first: structure (tensor kind, rank, dtype, device, contiguity,
lengths) without touching values, then the values (offsets, column bounds,
canonical order, and a column index's consistency with its batch) on the host.
Each registered op runs these checks itself, so a raw ``torch.ops.deeprec.*`` call
is as safe as the public wrappers.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import numpy as np
import torch

INDEX_DTYPES = (torch.int32, torch.int64)


class CSRParts(NamedTuple):
    """Plain contiguous components of a (B x N) CSR batch; crow is always int64."""

    crow: torch.Tensor
    col: torch.Tensor
    val: torch.Tensor


class ColumnIndex(NamedTuple):
    """A CSR batch's entries grouped by column (the transposed structure).

    perm: entry ids sorted by (column, row); ucol: the distinct columns, ascending;
    uptr: offsets of each distinct column's entries in perm; rows: each entry's row.
    All int64, contiguous, on the batch's device. Exactly one index describes a
    batch: the one ``column_index`` builds.
    """

    perm: torch.Tensor
    ucol: torch.Tensor
    uptr: torch.Tensor
    rows: torch.Tensor


# ------------------------------------------------------------------ unpacking
def unpack(target: object, shape: tuple[int, int], name: str = "target") -> CSRParts:
    """Split a torch sparse CSR tensor or a (crow, col, val) triple into checked parts.

    ``shape`` is the dense (B, N) shape the batch must have. crow is converted to
    int64 and every part made contiguous (copies only where needed). Raises
    TypeError or ValueError naming ``name`` and what is wrong.
    """
    if isinstance(target, torch.Tensor):
        if target.layout != torch.sparse_csr:
            raise TypeError(
                f"{name} must be a torch sparse CSR tensor or a (crow, col, val) triple, "
                f"got a tensor with layout {target.layout}"
            )
        if tuple(target.shape) != tuple(shape):
            raise ValueError(
                f"{name} has shape {tuple(target.shape)} but output has shape {tuple(shape)}"
            )
        crow, col, val = target.crow_indices(), target.col_indices(), target.values()
    elif isinstance(target, (tuple, list)) and len(target) == 3:
        crow, col, val = target
    else:
        raise TypeError(
            f"{name} must be a torch sparse CSR tensor or a (crow, col, val) triple, "
            f"got {type(target).__name__}"
        )
    check_structure(crow, col, val, shape[0], name, need_contiguous=False)
    return CSRParts(crow.to(torch.int64).contiguous(), col.contiguous(), val.contiguous())


# ------------------------------------------------------------------ structure checks
def check_tensor(
    t: object,
    name: str,
    *,
    dim: int | None = None,
    dtypes: tuple[torch.dtype, ...] | None = None,
    device: torch.device | None = None,
    contiguous: bool = True,
) -> None:
    """One argument of a native op: a dense tensor of the right rank, dtype and device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = " or ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} must be {allowed}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous())")


def check_structure(
    crow: object,
    col: object,
    val: object,
    n_rows: int,
    name: str = "target",
    *,
    need_contiguous: bool = True,
) -> None:
    """Ranks, dtypes, devices, lengths (and contiguity) of a CSR triple of ``n_rows`` rows.

    Native ops need crow int64 and contiguous parts; the wrappers convert, so they
    pass ``need_contiguous=False`` and accept int32 offsets.
    """
    for part, what in ((crow, "crow"), (col, "col"), (val, "val")):
        if not isinstance(part, torch.Tensor):
            raise TypeError(f"{name}: {what} must be a torch.Tensor, got {type(part).__name__}")
        if part.layout != torch.strided:
            raise TypeError(f"{name}: {what} must be a dense (strided) tensor")
    if crow.dim() != 1 or col.dim() != 1 or val.dim() != 1:
        raise ValueError(
            f"{name}: crow, col and val must be 1-D, got shapes "
            f"{tuple(crow.shape)}, {tuple(col.shape)}, {tuple(val.shape)}"
        )
    crow_dtypes = INDEX_DTYPES if not need_contiguous else (torch.int64,)
    if crow.dtype not in crow_dtypes or col.dtype not in INDEX_DTYPES:
        want = "int64" if need_contiguous else "int32 or int64"
        raise TypeError(
            f"{name}: crow must be {want} and col int32 or int64, got {crow.dtype} and {col.dtype}"
        )
    if not val.is_floating_point():
        raise TypeError(f"{name}: val must be floating point, got {val.dtype}")
    if crow.numel() == 0:
        raise ValueError(f"{name}: crow is empty; a batch of B rows needs B + 1 offsets")
    if crow.numel() != n_rows + 1:
        raise ValueError(
            f"{name}: crow has {crow.numel()} entries but the batch has {n_rows} rows "
            f"(expected {n_rows + 1})"
        )
    if col.numel() != val.numel():
        raise ValueError(f"{name}: col has {col.numel()} entries but val has {val.numel()}")
    if not (crow.device == col.device == val.device):
        raise ValueError(
            f"{name}: crow, col and val are on different devices "
            f"({crow.device}, {col.device}, {val.device})"
        )
    if need_contiguous:
        for part, what in ((crow, "crow"), (col, "col"), (val, "val")):
            if not part.is_contiguous():
                raise ValueError(f"{name}: {what} must be contiguous")


def check_index_structure(index: ColumnIndex, nnz: int, device: torch.device) -> None:
    """Every ColumnIndex component: int64, 1-D, contiguous, on ``device``, right length."""
    if not isinstance(index, (tuple, list)) or len(index) != 4:
        raise TypeError("index must be a ColumnIndex (perm, ucol, uptr, rows)")
    for t, what in zip(index, ColumnIndex._fields, strict=True):
        check_tensor(t, f"index.{what}", dim=1, dtypes=(torch.int64,), device=device)
    perm, ucol, uptr, rows = index
    if perm.numel() != nnz or rows.numel() != nnz:
        raise ValueError(
            f"index: perm and rows must have one entry per stored rating ({nnz}), got "
            f"{perm.numel()} and {rows.numel()}"
        )
    if uptr.numel() != ucol.numel() + 1:
        raise ValueError(
            f"index: uptr must have len(ucol) + 1 = {ucol.numel() + 1} entries, got {uptr.numel()}"
        )


# ------------------------------------------------------------------ value checks
# Our own batches (RatingMatrix / ResidentMatrix build them, check them once and pass
# remember=True), keyed by their crow tensor: col (weakly), both tensors' version counters
# and addresses, and the width. An in-place change through torch bumps a version counter,
# and a new batch is a new key, so the ops validate each of our batches once instead of at
# every call (#14). Tensors from anyone else are checked at every call, as before.
# (Tensors compare element-wise, so the key is id(crow), held with weak references that
# drop the entry when crow dies, before its id can be reused.)
_checked: dict[int, tuple] = {}


def _stamp(parts: CSRParts, n_cols: int) -> tuple:
    c, k = parts.crow, parts.col
    return (c._version, k._version, c.data_ptr(), k.data_ptr(), k.numel(), n_cols)


def _known(parts: CSRParts, n_cols: int) -> bool:
    entry = _checked.get(id(parts.crow))
    return (
        entry is not None
        and entry[0]() is parts.crow
        and entry[1]() is parts.col
        and entry[2] == _stamp(parts, n_cols)
    )


def _remember(parts: CSRParts, n_cols: int) -> None:
    key = id(parts.crow)
    crow_ref = weakref.ref(parts.crow, lambda _, key=key: _checked.pop(key, None))
    _checked[key] = (crow_ref, weakref.ref(parts.col), _stamp(parts, n_cols))


def check_values(
    parts: CSRParts, n_cols: int, name: str = "target", *, remember: bool = False
) -> None:
    """Check offsets, column bounds and canonical order (strictly increasing columns per row).

    remember: the caller built this batch and keeps it unchanged (deeprec's batches); once
    checked, later checks of the same unmodified tensors for the same width return at once.

    Runs on numpy views of the index arrays: a dozen small numpy calls cost ~20 us
    where the same torch ops cost ~75 us on the CPU. CUDA indices are copied to the
    host first (one sync, as any check of device values needs).
    """
    if _known(parts, n_cols):
        return
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
    if remember:
        _remember(parts, n_cols)


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


def check_grouping(perm, ucol, uptr, rows, n_rows: int, n_cols: int) -> None:
    """Internal consistency of a column index, on host arrays; raises ValueError.

    perm is a permutation of the entries, ucol strictly increasing inside [0, n_cols),
    every distinct column has at least one entry (uptr strictly increasing from 0 to
    nnz), and rows lie in [0, n_rows).
    What kernels rely on: every address stays inside its array, and no two column
    groups (CUDA blocks, CPU threads) write the same output row.
    """
    perm, ucol, uptr, rows = (np.asarray(a) for a in (perm, ucol, uptr, rows))
    nnz = perm.size
    if uptr[0] != 0 or uptr[-1] != nnz or bool((uptr[1:] <= uptr[:-1]).any()):
        raise ValueError(
            "index: uptr must rise strictly from 0 to nnz (every distinct column has entries)"
        )
    if ucol.size and (ucol[0] < 0 or ucol[-1] >= n_cols or bool((ucol[1:] <= ucol[:-1]).any())):
        raise ValueError(f"index: ucol must be strictly increasing inside [0, {n_cols})")
    if nnz == 0:
        return
    if perm.min() < 0 or perm.max() >= nnz:
        raise ValueError(f"index: perm holds ids outside [0, {nnz})")
    seen = np.zeros(nnz, dtype=bool)
    seen[perm] = True
    if not seen.all():
        raise ValueError("index: perm repeats an entry (it must be a permutation of the entries)")
    if rows.min() < 0 or rows.max() >= n_rows:
        raise ValueError(f"index: rows holds rows outside [0, {n_rows})")


def _index_stamp(index: ColumnIndex, parts: CSRParts, n_cols: int) -> tuple:
    return (*(t._version for t in index), *(t.data_ptr() for t in index), _stamp(parts, n_cols))


def _index_known(index: ColumnIndex, parts: CSRParts, n_cols: int) -> bool:
    entry = _checked.get(id(index[0]))
    return (
        entry is not None
        and all(r() is t for r, t in zip(entry[0], (*index, parts.crow, parts.col), strict=True))
        and entry[1] == _index_stamp(index, parts, n_cols)
    )


def remember_index(index: ColumnIndex, parts: CSRParts, n_cols: int) -> None:
    """Check our batch's column index once (check_index) and let later checks of the same
    unmodified tensors return at once, as check_values(remember=True) does for the batch."""
    check_index(index, parts, n_cols)
    key = id(index[0])
    refs = tuple(weakref.ref(t) for t in (*index, parts.crow, parts.col))
    weakref.finalize(index[0], _checked.pop, key, None)
    _checked[key] = (refs, _index_stamp(index, parts, n_cols))


def check_index(index: ColumnIndex, parts: CSRParts, n_cols: int) -> None:
    """A ColumnIndex must be exactly column_index(crow, col) of *this* batch.

    One remembered with remember_index and unmodified since (with its batch) passes at once.

    Checked in linear time (no sort): the grouping is consistent (check_grouping),
    rows are each entry's row under crow, col[perm] runs through ucol group by group,
    and inside each group perm ascends (the stable order column_index produces).
    Call after check_values(parts, n_cols).
    """
    if _index_known(index, parts, n_cols):
        return
    check_index_structure(index, parts.col.numel(), parts.col.device)
    crow = parts.crow.detach().cpu().numpy()
    col = parts.col.detach().cpu().numpy()
    perm, ucol, uptr, rows = (t.detach().cpu().numpy() for t in index)
    n_rows = crow.size - 1
    check_grouping(perm, ucol, uptr, rows, n_rows, n_cols)
    if perm.size == 0:
        return
    counts = np.diff(crow)
    if not np.array_equal(rows, np.repeat(np.arange(n_rows, dtype=np.int64), counts)):
        raise ValueError("index: rows do not match this batch's crow (an index of another batch?)")
    if not np.array_equal(col[perm], np.repeat(ucol, np.diff(uptr))):
        raise ValueError("index: ucol/uptr/perm do not group this batch's columns")
    rising = perm[1:] > perm[:-1]
    rising[uptr[1:-1] - 1] = True  # a new column group may start anywhere
    if not rising.all():
        raise ValueError("index: entries of a column must be listed in row order")


# ------------------------------------------------------------------ the column index
def column_index_numpy(indptr: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, ...]:
    """(perm, ucol, uptr, rows) as int64 numpy arrays for a canonical CSR structure.

    The caller vouches for the structure (RatingMatrix batches are ours and canonical);
    ``column_index`` checks it first.
    """
    counts = np.diff(indptr)
    rows = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    perm = np.argsort(indices, kind="stable").astype(np.int64)
    ucol, per_col = np.unique(indices[perm], return_counts=True)
    uptr = np.zeros(len(ucol) + 1, dtype=np.int64)
    np.cumsum(per_col, out=uptr[1:])
    return perm, ucol.astype(np.int64), uptr, rows


def column_index(
    crow: torch.Tensor, col: torch.Tensor, n_cols: int | None = None, name: str = "batch"
) -> ColumnIndex:
    """The column index of a CSR batch, built on the host after the batch is validated.

    n_cols: the batch's width, if known (else only the offsets and order are checked).
    """
    check_tensor(crow, f"{name}: crow", dim=1, dtypes=INDEX_DTYPES, contiguous=False)
    check_tensor(col, f"{name}: col", dim=1, dtypes=INDEX_DTYPES, device=crow.device,
                 contiguous=False)  # fmt: skip
    if crow.numel() == 0:
        raise ValueError(f"{name}: crow is empty; a batch of B rows needs B + 1 offsets")
    parts = CSRParts(crow.to(torch.int64), col, col)
    check_values(parts, n_cols if n_cols is not None else np.iinfo(np.int64).max, name)
    arrays = column_index_numpy(parts.crow.cpu().numpy(), col.cpu().numpy())
    return ColumnIndex(*(torch.from_numpy(a).to(col.device) for a in arrays))


def entry_rows(crow: torch.Tensor, nnz: int) -> torch.Tensor:
    """The row of every stored entry, for the pure-PyTorch references.

    torch.repeat_interleave trusts ``output_size`` and writes past its buffer when crow
    disagrees with it, so it is given only under torch.compile (where it avoids a host
    sync and a data-dependent shape). Eagerly the offsets are checked first (crow[0] == 0,
    non-decreasing, crow[-1] == nnz), so a bad crow is a ValueError, not a wild write or
    an allocation of crow[-1] entries.
    """
    rows = torch.arange(crow.numel() - 1, device=crow.device)
    if torch.compiler.is_compiling():
        return torch.repeat_interleave(rows, crow.diff(), output_size=nnz)
    if crow.numel() == 0:
        raise ValueError("crow is empty; a batch of B rows needs B + 1 offsets")
    first, last = int(crow[0]), int(crow[-1])
    if first != 0 or last != nnz or bool((crow.diff() < 0).any()):
        raise ValueError(
            f"crow must rise from 0 to nnz = {nnz} without decreasing, got {first}..{last}"
        )
    return torch.repeat_interleave(rows, crow.diff(), output_size=nnz)
