"""RatingMatrix: the training ratings as canonical CSR plus id maps, and its batches.

Rows are users (``by="user"``, the seed's U-AutoRec orientation) or items
(``by="item"``, I-AutoRec). Validation ratings are kept in the same index space,
so a prediction for (row, col) comes from the row's training vector.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from deeprec.csr import Batch
from deeprec.data.errors import DataError
from deeprec.data.ids import codes_of, ids_and_codes


def distinct_count(indices: np.ndarray, n: int) -> int:
    """How many distinct values in [0, n) ``indices`` holds (a batch's distinct columns)."""
    if indices.size * 8 < n:
        return int(np.unique(indices).size)
    seen = np.zeros(n, dtype=bool)
    seen[indices] = True
    return int(np.count_nonzero(seen))


@dataclass
class RatingMatrix:
    """Training CSR (rows x cols, float32, sorted), raw ids of rows and cols, validation triples."""

    train: sp.csr_matrix
    row_ids: np.ndarray
    col_ids: np.ndarray
    by: str
    val_rows: np.ndarray
    val_cols: np.ndarray
    val_ratings: np.ndarray
    scale: tuple[float, float]

    @classmethod
    def from_split(
        cls,
        train: pd.DataFrame,
        val: pd.DataFrame,
        by: str = "user",
        scale: tuple[float, float] | None = None,
    ) -> RatingMatrix:
        if by not in ("user", "item"):
            raise DataError(f"--by must be 'user' or 'item', got {by!r}")
        if train.empty:
            raise DataError("the training split is empty")
        row_key, col_key = ("user", "item") if by == "user" else ("item", "user")
        row_ids, rows = ids_and_codes(train[row_key].to_numpy())
        col_ids, cols = ids_and_codes(train[col_key].to_numpy())
        mat = _csr(rows, cols, train["rating"].to_numpy(np.float32), (len(row_ids), len(col_ids)))
        del rows, cols
        # A validation rating is only predictable when its row and its column both have
        # training data (a user whose every rating fell in validation has no input vector).
        vr = codes_of(row_ids, val[row_key].to_numpy())
        vc = codes_of(col_ids, val[col_key].to_numpy())
        known = (vr >= 0) & (vc >= 0)
        vr, vc, val = vr[known], vc[known], val[known]
        if scale is None:
            scale = (float(train["rating"].min()), float(train["rating"].max()))
        return cls(
            mat,
            row_ids,
            col_ids,
            by,
            vr.astype(np.int64),
            vc.astype(np.int64),
            val["rating"].to_numpy(np.float32),
            scale,
        )

    @property
    def rows_are_users(self) -> bool:
        """The orientation, decided once (--by): rows are users (U-AutoRec) or items."""
        return self.by == "user"

    def by_user(self) -> sp.csr_matrix:
        """The training ratings with users as rows, whatever the orientation."""
        return self.train if self.rows_are_users else self.train.T.tocsr()

    def user_view(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validation as (user index, item index, rating), whatever the orientation."""
        if self.rows_are_users:
            return self.val_rows, self.val_cols, self.val_ratings
        return self.val_cols, self.val_rows, self.val_ratings

    @property
    def n_rows(self) -> int:
        return self.train.shape[0]

    @property
    def n_cols(self) -> int:
        return self.train.shape[1]

    @property
    def n_users(self) -> int:
        return self.n_rows if self.rows_are_users else self.n_cols

    @property
    def n_items(self) -> int:
        return self.n_cols if self.rows_are_users else self.n_rows

    def user_ids(self) -> np.ndarray:
        return self.row_ids if self.rows_are_users else self.col_ids

    def item_ids(self) -> np.ndarray:
        return self.col_ids if self.rows_are_users else self.row_ids

    def fingerprint(self) -> str:
        """sha256 over the training matrix and id maps: identifies the data a model saw."""
        h = hashlib.sha256()
        for a in (self.row_ids, self.col_ids):  # ids hashed as int64 whatever their width
            h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        for a in (self.train.indptr, self.train.indices, self.train.data):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(self.by.encode())
        return h.hexdigest()

    def minus(self, offsets) -> RatingMatrix:
        """The same matrix with offsets.at(row, col) subtracted from every training rating."""
        coo = self.train.tocoo()
        data = (coo.data - offsets.at(coo.row, coo.col)).astype(np.float32)
        shifted = sp.csr_matrix(
            (data, self.train.indices, self.train.indptr), shape=self.train.shape
        )
        return RatingMatrix(
            shifted,
            self.row_ids,
            self.col_ids,
            self.by,
            self.val_rows,
            self.val_cols,
            self.val_ratings,
            self.scale,
        )

    def at_least(self, threshold: float) -> RatingMatrix:
        """The same matrix keeping only the training ratings >= ``threshold`` (every row and
        column stays, an emptied one too; the validation ratings are unchanged)."""
        keep = self.train.copy()
        keep.data[keep.data < threshold] = 0
        keep.eliminate_zeros()
        return RatingMatrix(keep, self.row_ids, self.col_ids, self.by, self.val_rows,
                            self.val_cols, self.val_ratings, self.scale)  # fmt: skip

    def batch(self, rows: np.ndarray, device: torch.device | str = "cpu") -> Batch:
        """Training rows ``rows`` as a CSR batch on ``device`` (canonical: the matrix is)."""
        sub = self.train[rows]
        indices = sub.indices.astype(np.int64)
        return Batch(
            torch.from_numpy(sub.indptr.astype(np.int64)).to(device),
            torch.from_numpy(indices).to(device),
            torch.from_numpy(sub.data.astype(np.float32)).to(device),
            self.n_cols,
            distinct_count(indices, self.n_cols),
            torch.as_tensor(np.asarray(rows), dtype=torch.int64).to(device),
        )

    def batch_sizes(self, rows: np.ndarray) -> tuple[int, int]:
        """(stored ratings, distinct columns) of training rows ``rows``, from the host copy:
        what sizes a batch built elsewhere (ResidentMatrix) without reading the device."""
        sub = self.train[rows]
        return int(sub.nnz), distinct_count(sub.indices, self.n_cols)

    def batches(
        self,
        batch_size: int,
        device: torch.device | str = "cpu",
        *,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        rows: np.ndarray | None = None,
        max_batches: int = 0,
        part: tuple[int, int] = (0, 1),
    ) -> Iterator[Batch]:
        """Batches over ``rows`` (default: all rows), shuffled with ``generator``.

        max_batches: stop after this many (0: all). part (rank, size): yield only this
        rank's contiguous share of each global batch of ``batch_size`` rows.
        """
        for chunk in batch_rows(
            self.n_rows, batch_size, shuffle, generator, rows, max_batches, part
        ):
            yield self.batch(chunk, device)


def _csr(rows: np.ndarray, cols: np.ndarray, data: np.ndarray, shape) -> sp.csr_matrix:
    """The CSR matrix of distinct (row, col) entries, columns sorted within each row.

    Entries already in (row, col) order (MovieLens files, the synthetic sets) are used as
    they are: one bincount, no copy of the entries; others go through scipy's O(nnz)
    counting sort and a per-row sort, with int32 indices.
    """
    if rows.size > 1:
        step_row = rows[1:] > rows[:-1]
        ordered = bool((step_row | ((rows[1:] == rows[:-1]) & (cols[1:] > cols[:-1]))).all())
        del step_row
    else:
        ordered = True
    if ordered:
        indptr = np.zeros(shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
        index = np.int32 if rows.size < 2**31 else np.int64
        return sp.csr_matrix(
            (data, cols.astype(index, copy=False), indptr.astype(index, copy=False)), shape=shape
        )
    mat = sp.csr_matrix((data, (rows, cols)), shape=shape)
    mat.sort_indices()
    return mat


def batch_rows(
    n_rows: int,
    batch_size: int,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
    rows: np.ndarray | None = None,
    max_batches: int = 0,
    part: tuple[int, int] = (0, 1),
) -> Iterator[np.ndarray]:
    """The row ids of each batch of an epoch (see RatingMatrix.batches): one shuffle per
    epoch from ``generator``, so host and device-resident batches come in the same order."""
    rows = np.arange(n_rows) if rows is None else np.asarray(rows)
    if shuffle:
        rows = rows[torch.randperm(len(rows), generator=generator).numpy()]
    rank, size = part
    for i, start in enumerate(range(0, len(rows), batch_size)):
        if max_batches and i >= max_batches:
            return
        chunk = rows[start : start + batch_size]
        if size > 1:
            n = len(chunk)
            chunk = chunk[n * rank // size : n * (rank + 1) // size]
        yield chunk
