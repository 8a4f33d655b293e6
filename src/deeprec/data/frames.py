"""Ratings handed over in memory (a pandas DataFrame or a scipy sparse matrix) as a
Dataset, checked exactly as a file's are (deeprec.data.validate); every error names the
argument and the row.

Column names follow the files': user/userId/user_id, item/movieId/item_id, rating,
optional timestamp (so MovieLens' own ratings.csv read with pandas works as is). A sparse
matrix is users x items, its stored entries the ratings (ids: row and column numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from deeprec.data.errors import DataError
from deeprec.data.readers import (
    _ITEM_COLS,
    _RATING_COLS,
    _TIME_COLS,
    _USER_COLS,
    _VALIDATION_COLS,
    Ratings,
)
from deeprec.data.validate import check

IN_MEMORY = Path("<in memory>")  # a Dataset's path when its ratings came from Python


@dataclass
class FrameRatings(Ratings):
    """Ratings from a DataFrame: a row is named by the argument and its index label."""

    label: str = "ratings"
    index: pd.Index | None = None

    def where(self, row: int) -> str:
        at = self.index[row] if self.index is not None else row
        return f"{self.label} row {at!r}"


def columns_of(frame: pd.DataFrame, label: str) -> dict[str, str]:
    """{our column: the frame's column} for user, item, rating[, timestamp][, validation]."""
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"{label}: expected a pandas DataFrame, got {type(frame).__name__}")
    by_lower = {str(c).strip().lower(): c for c in frame.columns}
    found: dict[str, str] = {}
    wanted = {"user": _USER_COLS, "item": _ITEM_COLS, "rating": _RATING_COLS}
    optional = {"timestamp": _TIME_COLS, "validation": _VALIDATION_COLS}
    for ours, names in {**wanted, **optional}.items():
        hit = next((by_lower[n] for n in names if n in by_lower), None)
        if hit is not None:
            found[ours] = hit
        elif ours in wanted:
            raise DataError(
                f"{label}: no {ours} column among {[str(c) for c in frame.columns]} "
                f"(expected one of {', '.join(names)})"
            )
    return found


def from_frame(
    frame: pd.DataFrame,
    *,
    titles: dict[int, str] | None = None,
    scale: tuple[float, float] | None = None,
    label: str = "ratings",
) -> pd.DataFrame:
    """The ratings validated as a file's are (on ``scale`` when given; else refused where a
    rare far value would widen the range they span)."""
    cols = columns_of(frame, label)
    if frame.empty:
        raise DataError(f"{label}: no ratings (the DataFrame is empty)")
    picked = pd.DataFrame({ours: frame[theirs].to_numpy() for ours, theirs in cols.items()})
    for ours in ("user", "item", "rating"):
        column = picked[ours]
        if column.dtype == object and column.isna().any():
            first = int(np.flatnonzero(column.isna().to_numpy())[0])
            raise DataError(f"{label} row {frame.index[first]!r}: missing {ours}")
    raw = FrameRatings(picked, IN_MEMORY, dict(titles or {}), scale, label=label, index=frame.index)
    return check(raw, scale)


def from_sparse(matrix: sp.spmatrix | sp.sparray, *, label: str = "ratings") -> pd.DataFrame:
    """A users x items sparse matrix's stored entries as a ratings frame (user = row
    number, item = column number)."""
    coo = sp.coo_matrix(matrix)
    if coo.nnz == 0:
        raise DataError(f"{label}: the sparse matrix stores no ratings")
    if not np.issubdtype(coo.data.dtype, np.number) or np.iscomplexobj(coo.data):
        raise DataError(f"{label}: the sparse matrix holds {coo.data.dtype}, not real ratings")
    return pd.DataFrame({"user": coo.row.astype(np.int64), "item": coo.col.astype(np.int64),
                         "rating": coo.data.astype(np.float64)})  # fmt: skip


def with_validation(train: pd.DataFrame, validation: pd.DataFrame) -> pd.DataFrame:
    """One frame of both, its validation column saying which rating is held out (the
    ratings of ``--split given``)."""
    both = pd.concat([train.assign(validation=False), validation.assign(validation=True)])
    return both.reset_index(drop=True)
