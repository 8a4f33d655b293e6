"""The kernels' index checks as torch ops, for the paths that read indices with torch ops.

torch's sparse ops (cuSPARSE on a GPU) and its indexing check no index, or stop the process
on a bad one (a device-side assert), so the torch-op backend of the sparse layers, the
torch-op epilogue of the multinomial loss and the pure-PyTorch reference ops check a batch
(and its column index) here first, on its device and with no host sync, and use the
result in two ways:

- the first refusal, in the error word's form (check, position, value, bound: the same
  checks, codes and messages as csrc/checks.h), is reported (ops/errors.py): raised at
  once on the CPU, read at the next loss read on a GPU;
- the batch handed on is the caller's when it is sound, else a well-formed stand-in with
  no values (every entry a zero at column 0 of row 0), so nothing reads outside a tensor
  and a refused batch contributes nothing (``ok`` says which, for outputs that must be
  zeroed too).

Metadata (shapes, dtypes, devices) is Op.check's, before any of this.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from deeprec.csr import ColumnIndex, CSRParts, entry_rows
from deeprec.ops import errors


class Problems:
    """Candidate refusals, each the first failing position of one check, in check order."""

    def __init__(self, like: torch.Tensor) -> None:
        self.like = like
        self.rows: list[torch.Tensor] = []
        self.hits: list[torch.Tensor] = []

    def add(self, check: str, bad: torch.Tensor, value: torch.Tensor,
            bound: torch.Tensor | int, offset: int = 0) -> None:  # fmt: skip
        """The check fails at the positions ``bad`` marks; value (and a tensor bound) are
        shaped as bad; the position reported is offset + the first marked one."""
        if bad.numel() == 0:
            return
        at = bad.to(torch.int8).argmax().reshape(1)  # a 1-element index: no host read
        bound = bound.gather(0, at) if isinstance(bound, torch.Tensor) else self._one(bound)
        self.rows.append(torch.cat([self._one(errors.CHECKS[check]), at + offset,
                                    value.gather(0, at), bound]))  # fmt: skip
        self.hits.append(bad.any().reshape(1))

    def first(self) -> torch.Tensor:
        """(check, position, value, bound) of the first failing check; zeros if none."""
        if not self.rows:
            return self.like.new_zeros(4)
        stacked, found = torch.stack(self.rows), torch.cat(self.hits)
        pick = found.to(torch.int8).argmax().reshape(1, 1).expand(1, 4)
        return torch.where(found.any(), stacked.gather(0, pick).reshape(4), 0)

    def _one(self, value: int) -> torch.Tensor:
        return self.like.new_full((1,), value)


def _offset_checks(p: Problems, offsets: torch.Tensor, nnz: int, start: str, order: str,
                   end: str) -> None:  # fmt: skip
    """Row offsets (crow, or a column index's uptr) start at 0, stay in [0, nnz] without
    falling and end at nnz; each failure under its own check."""
    last = offsets.numel() - 1
    p.add(start, offsets[:1] != 0, offsets[:1], 0)
    after = offsets[1:]
    falls = (after < offsets[:-1]) | (after < 0) | (after > nnz)
    p.add(order, falls, after, nnz, offset=1)
    p.add(end, offsets[-1:] != nnz, offsets[-1:], nnz, offset=last)


def _crow_checks(p: Problems, crow: torch.Tensor, nnz: int) -> None:
    _offset_checks(p, crow, nnz, "crow_start", "crow_order", "crow_end")


def grad_rows_problem(ids: torch.Tensor, n_rows: int, *, ordered: bool) -> torch.Tensor:
    """The first row id of a row-sparse gradient the row Adam kernel would refuse: outside
    [0, n_rows), or (``ordered``) not strictly rising."""
    p = Problems(ids)
    p.add("grad_row_range", (ids < 0) | (ids >= n_rows), ids, n_rows)
    if ordered:
        p.add("grad_row_order", ids[1:] <= ids[:-1], ids[1:], ids[:-1], offset=1)
    return p.first()


def csr_problem(crow: torch.Tensor, col: torch.Tensor, n_cols: int) -> torch.Tensor:
    """The first index of a CSR batch the kernels would refuse (int64 check, position,
    value, bound; all zero for a sound batch): crow as _crow_checks, columns inside
    [0, n_cols) and strictly rising in each row."""
    nnz, c, j = col.numel(), crow.to(torch.int64), col.to(torch.int64)
    p = Problems(c)
    _crow_checks(p, c, nnz)
    p.add("col_range", (j < 0) | (j >= n_cols), j, n_cols)
    if nnz > 1:
        rows = entry_rows(c, nnz)
        p.add("col_order", (rows[1:] == rows[:-1]) & (j[1:] <= j[:-1]), j[1:], j[:-1], offset=1)
    return p.first()


def index_problem(crow: torch.Tensor, col: torch.Tensor, index: ColumnIndex,
                  n_cols: int) -> torch.Tensor:  # fmt: skip
    """The first problem of a column index checked against its batch, as the kernels check
    it (csrc/checks.h: column_group, group_entry): the batch's offsets; uptr rising from 0
    to nnz; ucol strictly rising inside [0, n_cols); each group's entries inside [0, nnz),
    rising, all of its column; each entry's row inside [0, B) and holding that entry."""
    perm, ucol, uptr, rows = index
    nnz, U, B = col.numel(), ucol.numel(), crow.numel() - 1
    c, j = crow.to(torch.int64), col.to(torch.int64)
    p = Problems(c)
    _crow_checks(p, c, nnz)
    if U == 0:  # no groups, yet entries to group: the index covers none of them
        if nnz:
            p.add("uptr_order", torch.ones(1, dtype=torch.bool, device=c.device), uptr[:1], nnz)
    else:
        _offset_checks(p, uptr, nnz, "uptr_order", "uptr_order", "uptr_order")
        p.add("ucol_range", (ucol < 0) | (ucol >= n_cols), ucol, n_cols)
        p.add("ucol_order", ucol[1:] <= ucol[:-1], ucol[1:], ucol[:-1], offset=1)
    if nnz:
        p.add("perm_range", (perm < 0) | (perm >= nnz), perm, nnz)
        group = entry_rows(uptr, nnz).clamp(0, max(U - 1, 0))  # each position's group
        p.add("perm_order", (group[1:] == group[:-1]) & (perm[1:] <= perm[:-1]), perm[1:],
              perm[:-1], offset=1)  # fmt: skip
        column = ucol.gather(0, group) if U else torch.full_like(perm, -1)
        p.add("perm_column", j.gather(0, perm.clamp(0, nnz - 1)) != column, perm, column)
        p.add("rows_range", (rows < 0) | (rows >= B), rows, B)
        r = rows.clamp(0, max(B - 1, 0))
        start, end = c.gather(0, r), c.gather(0, r + 1)
        k = torch.arange(nnz, device=col.device)
        p.add("rows_match", (k < start) | (k >= end), rows, start)
    return p.first()


# ------------------------------------------------------------------ checked, or stand-ins
class Checked(NamedTuple):
    """A batch as the torch ops may read it: the caller's if sound, else a stand-in."""

    crow: torch.Tensor
    col: torch.Tensor
    val: torch.Tensor | None
    ok: torch.Tensor  # 0-dim bool: the caller's batch was sound


def checked_csr(op: str, parts: CSRParts, n_cols: int) -> Checked:
    """Report the batch's first problem for ``op`` and return what torch ops may read
    (col as int64: torch's CSR tensors need crow and col of one dtype)."""
    crow, col, val = parts
    ok = errors.report(crow.device, op, csr_problem(crow, col, n_cols))
    nnz = col.numel()
    if n_cols == 0 and nnz:  # no column can hold an entry: none is handed on
        return Checked(torch.zeros_like(crow), col[:0].long(), None if val is None else val[:0],
                       ok)  # fmt: skip
    col = torch.where(ok, col.long(), 0)
    return Checked(torch.where(ok, crow, _all_in_first(crow, nnz)), col,
                   None if val is None else torch.where(ok, val, 0), ok)  # fmt: skip


def checked_index(op: str, crow: torch.Tensor, col: torch.Tensor, index: ColumnIndex,
                  n_cols: int) -> tuple[ColumnIndex | None, torch.Tensor]:  # fmt: skip
    """Report the first problem of a column index against its batch for ``op``; return the
    index torch ops may read and ``ok``. The stand-in for a refused index: every entry in
    its first group, over row 0, in the order stored. None where no index of this size can
    be sound (more groups than columns, or entries but no group): the caller reads none."""
    ok = errors.report(crow.device, op, index_problem(crow, col, index, n_cols))
    perm, ucol, uptr, rows = index
    nnz, U = col.numel(), ucol.numel()
    if n_cols < U or (U == 0 and nnz):
        return None, ok
    arange = torch.arange(max(nnz, U), device=col.device)
    return ColumnIndex(
        torch.where(ok, perm, arange[:nnz]),
        torch.where(ok, ucol, arange[:U]),
        torch.where(ok, uptr, _all_in_first(uptr, nnz)),
        torch.where(ok, rows, 0),
    ), ok


def _all_in_first(offsets: torch.Tensor, nnz: int) -> torch.Tensor:
    """Offsets like ``offsets`` that put all nnz entries in the first row (or group)."""
    out = torch.full_like(offsets, nnz)
    out[:1] = 0
    return out
