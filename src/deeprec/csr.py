"""CSR batches and their column index: the batch type, unpacking, and the metadata checks.

The native kernels check every index value they read (csrc/checks.h), and the paths that
read indices with torch ops check them on the device first (deeprec.ops.device_checks), so
the ops check only metadata here: tensor kind, rank, dtype, device, contiguity and lengths,
never values, which on a GPU would cost a host sync per check. Values are checked on the
host only where data enters (``Batch.from_csr``, the file readers: ``check_values``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    batch: the one ``column_index`` builds; the kernels that read an index check it
    against its batch (a stale or foreign index is refused, never trusted).
    """

    perm: torch.Tensor
    ucol: torch.Tensor
    uptr: torch.Tensor
    rows: torch.Tensor


# ------------------------------------------------------------------ unpacking
def unpack(
    target: object,
    shape: tuple[int | None, int | None],
    name: str = "target",
    rows_from: str = "the batch",
) -> CSRParts:
    """Split a Batch, a torch sparse CSR tensor or a (crow, col, val) triple into parts
    whose metadata is checked (values are the kernels' to check).

    ``shape`` is the dense (B, N) shape the batch must have (None: a dimension the caller
    could not tell, which the op's own check then refuses). crow is converted to int64 and
    every part made contiguous (copies only where needed). Raises TypeError or ValueError
    naming ``name`` and what is wrong.
    """
    rows, cols = shape
    if isinstance(target, Batch):
        if cols is not None and target.n_cols != cols:
            raise ValueError(f"{name} has {target.n_cols} columns but the op has {cols}")
        crow, col, val = target.csr
    elif isinstance(target, torch.Tensor):
        if target.layout != torch.sparse_csr:
            raise TypeError(
                f"{name} must be a torch sparse CSR tensor or a (crow, col, val) triple, "
                f"got a tensor with layout {target.layout}"
            )
        want = tuple(target.shape[k] if d is None else d for k, d in enumerate(shape))
        if tuple(target.shape) != want:
            raise ValueError(f"{name} has shape {tuple(target.shape)} but the op has {want}")
        crow, col, val = _copied_parts(target)
    elif isinstance(target, (tuple, list)) and len(target) == 3:
        crow, col, val = target
        if val is None:
            raise TypeError(f"{name}: val must be a torch.Tensor, got NoneType")
    else:
        raise TypeError(
            f"{name} must be a Batch, a torch sparse CSR tensor or a (crow, col, val) triple, "
            f"got {type(target).__name__}"
        )
    check_structure(crow, col, val, rows, name, need_contiguous=False, rows_from=rows_from)
    return CSRParts(crow.to(torch.int64).contiguous(), col.contiguous(), val.contiguous())


def dim(t: object, k: int, rank: int = 2) -> int | None:
    """Size ``k`` of a tensor of rank ``rank``, else None (for ``unpack``'s shape, before the
    op's check has seen the tensor, which then says what is wrong with it)."""
    return t.shape[k] if isinstance(t, torch.Tensor) and t.dim() == rank else None


def contiguous(t: object) -> object:
    """A tensor as a contiguous one (a copy only where it is not); anything else as it is,
    for the op's check to refuse."""
    return t.contiguous() if isinstance(t, torch.Tensor) and t.layout == torch.strided else t


def unpack_structure(
    target: object,
    shape: tuple[int | None, int | None],
    name: str = "target",
    rows_from: str = "the batch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(crow int64, col) of a batch whose values no op reads: what ``unpack`` takes, or a
    (crow, col) pair; metadata checked, both contiguous."""
    if isinstance(target, (tuple, list)) and (
        len(target) == 2 or (len(target) == 3 and target[2] is None)
    ):  # (crow, col) or (crow, col, None): the values are not read
        crow, col = target[:2]
        check_structure(crow, col, None, shape[0], name, need_contiguous=False,
                        rows_from=rows_from)  # fmt: skip
        return crow.to(torch.int64).contiguous(), col.contiguous()
    parts = unpack(target, shape, name, rows_from)
    return parts.crow, parts.col


@torch.compiler.disable
def _copied_parts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A sparse CSR tensor's parts, as copies made outside any compiled graph: torch.compile
    fails (IndexError) on a frame whose inputs are views of a sparse tensor's parts, which
    crow_indices() returns, and every function we hand them to would be such a frame. The
    copies cost one pass over the indices."""
    return x.crow_indices().clone(), x.col_indices().clone(), x.values().clone()


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
    n_rows: int | None,
    name: str = "target",
    *,
    need_contiguous: bool = True,
    rows_from: str = "the batch",
) -> None:
    """Ranks, dtypes, devices, lengths (and contiguity) of a CSR triple of ``n_rows`` rows;
    val None: the structure alone (who rated what, for an op that reads no values).

    Native ops need crow int64 and contiguous parts; the wrappers convert, so they
    pass ``need_contiguous=False`` and accept int32 offsets.
    """
    parts = [(crow, "crow"), (col, "col")] + ([(val, "val")] if val is not None else [])
    for part, what in parts:
        if not isinstance(part, torch.Tensor):
            raise TypeError(f"{name}: {what} must be a torch.Tensor, got {type(part).__name__}")
        if part.layout != torch.strided:
            raise TypeError(f"{name}: {what} must be a dense (strided) tensor")
    if any(part.dim() != 1 for part, _ in parts):
        shapes = ", ".join(str(tuple(part.shape)) for part, _ in parts)
        names = ", ".join(w for _, w in parts)
        raise ValueError(f"{name}: {names} must be 1-D, got shapes {shapes}")
    crow_dtypes = INDEX_DTYPES if not need_contiguous else (torch.int64,)
    if crow.dtype not in crow_dtypes or col.dtype not in INDEX_DTYPES:
        want = "int64" if need_contiguous else "int32 or int64"
        raise TypeError(
            f"{name}: crow must be {want} and col int32 or int64, got {crow.dtype} and {col.dtype}"
        )
    if val is not None and not val.is_floating_point():
        raise TypeError(f"{name}: val must be floating point, got {val.dtype}")
    if crow.numel() == 0:
        raise ValueError(f"{name}: crow is empty; a batch of B rows needs B + 1 offsets")
    if n_rows is not None and crow.numel() != n_rows + 1:
        raise ValueError(
            f"{name}: crow has {crow.numel()} entries but {rows_from} has {n_rows} rows "
            f"(expected {n_rows + 1})"
        )
    if val is not None and col.numel() != val.numel():
        raise ValueError(f"{name}: col has {col.numel()} entries but val has {val.numel()}")
    if crow.numel() == 1 and col.numel() != 0:
        raise ValueError(f"{name}: a batch of 0 rows stores no entries, got {col.numel()}")
    if len({part.device for part, _ in parts}) != 1:
        devices = ", ".join(str(part.device) for part, _ in parts)
        names = ", ".join(w for _, w in parts)
        raise ValueError(f"{name}: {names} are on different devices ({devices})")
    if need_contiguous:
        for part, what in parts:
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


# ------------------------------------------------------------------ value checks (host)
def check_values(parts: CSRParts, n_cols: int, name: str = "target") -> None:
    """Check offsets, column bounds and canonical order (strictly increasing columns per row)
    on host copies: where data enters, and on the reference path (the native kernels check
    these themselves as they read them). A copy of device indices is a host sync."""
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


# ------------------------------------------------------------------ the column index
def entry_rows(crow: torch.Tensor, nnz: int) -> torch.Tensor:
    """The row of every stored entry (int64, on crow's device), with no host sync.

    Each row start crow[1..B-1] marks the entry where the next row begins; a running
    count of the marks is each entry's row. Safe for any crow: offsets are clamped into
    [0, nnz], so a damaged crow gives wrong rows (which the kernels refuse against crow),
    never a write outside the buffer (``torch.repeat_interleave`` with ``output_size``
    trusts crow and writes past its buffer when they disagree).
    """
    marks = torch.zeros(nnz + 1, dtype=torch.int64, device=crow.device)
    starts = crow[1:-1].to(torch.int64).clamp(0, nnz)
    marks.index_add_(0, starts, torch.ones_like(starts))
    return marks[:nnz].cumsum(0)


def column_index(crow: torch.Tensor, col: torch.Tensor, n_unique: int | None = None) -> ColumnIndex:
    """The column index of a CSR batch, built where the batch lives with torch ops.

    n_unique: the number of distinct columns, when the caller knows it (deeprec's batches
    count them on the host, where their rows come from); without it they are counted here,
    which on a GPU is one host sync. Nothing is read back otherwise: every size comes from
    metadata, and the kernels check the index against its batch when they use it. Under
    torch.compile it is the registered op deeprec::column_index, whose fake declares the
    number of distinct columns a data-dependent size, so a whole step stays one graph.
    """
    count = -1 if n_unique is None else n_unique
    check_index_inputs(crow, col, count)
    if torch.compiler.is_compiling():  # registered in deeprec/ops/sparse_layers.py
        return ColumnIndex(*torch.ops.deeprec.column_index(crow, col, count))
    return ColumnIndex(*build_index(crow, col, count))


def check_index_inputs(crow: torch.Tensor, col: torch.Tensor, n_unique: int) -> None:
    """What building a column index needs of the batch's metadata."""
    check_tensor(crow, "crow", dim=1, dtypes=INDEX_DTYPES, contiguous=False)
    check_tensor(col, "col", dim=1, dtypes=INDEX_DTYPES, device=crow.device, contiguous=False)
    if crow.numel() == 0:
        raise ValueError("crow is empty; a batch of B rows needs B + 1 offsets")


def build_index(crow: torch.Tensor, col: torch.Tensor, n_unique: int) -> tuple[torch.Tensor, ...]:
    """(perm, ucol, uptr, rows) with torch ops; n_unique < 0: count the distinct columns."""
    nnz = col.numel()
    perm = torch.sort(col, stable=True).indices
    grouped = col[perm].to(torch.int64)
    new = grouped[1:] != grouped[:-1]
    if n_unique < 0:
        n_unique = int(new.sum()) + 1 if nnz else 0
    if not 0 <= n_unique <= nnz or (nnz and n_unique == 0):
        raise ValueError(f"n_unique = {n_unique} is impossible for a batch of {nnz} entries")
    uptr = torch.empty(n_unique + 1, dtype=torch.int64, device=col.device)
    uptr[0] = 0
    uptr[-1] = nnz
    if n_unique > 1:
        starts = torch.nonzero_static(new, size=n_unique - 1).flatten()
        uptr[1:-1] = starts + 1
    ucol = grouped[uptr[:-1].clamp(max=max(nnz - 1, 0))] if nnz else grouped[:0]
    return perm, ucol.contiguous(), uptr, entry_rows(crow, nnz)


# ------------------------------------------------------------------ the batch
@dataclass(frozen=True)
class Batch:
    """A CSR batch of rating rows (B x n_cols) on one device, and its column index.

    RatingMatrix and ResidentMatrix build them; ``from_csr`` makes one of a caller's own
    CSR. Frozen: its fields cannot be rebound, and none aliases another (no host view of
    col); values edited in place by other means are refused by the kernels that read them.
    rows: the matrix rows the batch holds (int64), or None. n_unique: its distinct
    columns, counted where the batch was built, so the index needs no host sync.
    """

    crow: torch.Tensor  # int64 (B+1)
    col: torch.Tensor  # int64 (nnz)
    val: torch.Tensor  # float (nnz)
    n_cols: int
    n_unique: int
    rows: torch.Tensor | None = field(default=None, repr=False)

    @classmethod
    def from_csr(cls, crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor,
                 n_cols: int) -> Batch:  # fmt: skip
        """A caller's own canonical CSR rows as a Batch, checked once here (on a GPU:
        one host sync, to check the values and count the distinct columns)."""
        n_rows = crow.numel() - 1 if isinstance(crow, torch.Tensor) else 0
        parts = unpack((crow, col, val), (n_rows, n_cols), name="batch")
        check_values(parts, n_cols, "batch")
        n_unique = int(torch.unique(parts.col).numel())
        return cls(parts.crow, parts.col, parts.val, n_cols, n_unique)

    @property
    def index(self) -> ColumnIndex:
        """Its ColumnIndex, built on the batch's device on first use (the sparse path) and
        kept; inside a compiled graph it is built there instead (no side effect)."""
        index = self.__dict__.get("_index")
        if index is None:
            index = column_index(self.crow, self.col, self.n_unique)
            if not torch.compiler.is_compiling():
                object.__setattr__(self, "_index", index)
        return index

    @property
    def csr(self) -> CSRParts:
        return CSRParts(self.crow, self.col, self.val)

    @property
    def nnz(self) -> int:
        return self.col.numel()

    def dense(self) -> torch.Tensor:
        """The (B, n_cols) dense rating rows (0 where unrated), the dense model's input.

        Built with no host sync. A batch whose indices were damaged after it was built may
        scatter to the wrong places (never outside the tensor); the loss kernels refuse it.
        """
        B = self.crow.numel() - 1
        out = torch.zeros(B, self.n_cols, dtype=self.val.dtype, device=self.val.device)
        rows = entry_rows(self.crow, self.nnz)  # inside [0, B - 1] whatever crow holds
        out.index_put_((rows, self.col.clamp(0, self.n_cols - 1)), self.val)
        return out
