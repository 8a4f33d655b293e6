"""Row-by-row checks of parsed ratings; every error names the file and line.

Turns the reader's string columns into typed ones: user and item int64 (non-negative
integers), rating float64 (finite, on the dataset's scale when it has one),
timestamp float64 when present. Duplicate (user, item) pairs are refused: which
rating to keep is the data owner's call, not ours.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from deeprec.data.errors import DataError
from deeprec.data.readers import Ratings


def _where(frame: pd.DataFrame, mask: np.ndarray, default_path: object) -> tuple[str, int]:
    row = frame.loc[mask].iloc[0]
    return str(row.get("source", default_path)), int(row["line"])


def _fail(frame, mask, path, what: str) -> None:
    where, line = _where(frame, mask, path)
    raise DataError(f"{where}:{line}: {what}")


def _numbers(frame: pd.DataFrame, column: str, path) -> pd.Series:
    raw = frame[column]
    text = raw.astype("string").str.strip()
    missing = text.isna() | (text == "")
    if missing.any():
        _fail(frame, missing.to_numpy(), path, f"missing {column}")
    values = pd.to_numeric(text, errors="coerce")
    bad = values.isna().to_numpy()
    if bad.any():
        value = text[bad].iloc[0]
        _fail(frame, bad, path, f"{column} {value!r} is not a number")
    return values.astype("float64")


def check(ratings: Ratings, scale: tuple[float, float] | None = None) -> pd.DataFrame:
    """Validated, typed ratings (user, item, rating[, timestamp]) or a DataError."""
    frame, path = ratings.frame, ratings.path
    scale = scale or ratings.scale
    out = pd.DataFrame(index=frame.index)
    for column in ("user", "item"):
        values = _numbers(frame, column, path)
        fractional = (values != np.floor(values)).to_numpy()
        if fractional.any():
            _fail(
                frame,
                fractional,
                path,
                f"{column} id {values[fractional].iloc[0]} is not an integer",
            )
        negative = (values < 0).to_numpy()
        if negative.any():
            _fail(frame, negative, path, f"{column} id {int(values[negative].iloc[0])} is negative")
        if (values > 2**62).any():
            _fail(frame, (values > 2**62).to_numpy(), path, f"{column} id is too large")
        out[column] = values.astype("int64")
    rating = _numbers(frame, "rating", path)
    bad = ~np.isfinite(rating.to_numpy())
    if bad.any():
        _fail(frame, bad, path, f"rating {rating[bad].iloc[0]} is not finite")
    if scale is not None:
        lo, hi = scale
        outside = ((rating < lo) | (rating > hi)).to_numpy()
        if outside.any():
            _fail(
                frame,
                outside,
                path,
                f"rating {rating[outside].iloc[0]:g} is outside the scale [{lo:g}, {hi:g}]",
            )
    out["rating"] = rating
    if "timestamp" in frame.columns:
        ts = _numbers(frame, "timestamp", path)
        if not np.isfinite(ts.to_numpy()).all():
            _fail(frame, ~np.isfinite(ts.to_numpy()), path, "timestamp is not finite")
        out["timestamp"] = ts
    dup = out.duplicated(["user", "item"], keep="first").to_numpy()
    if dup.any():
        first = out.loc[dup].iloc[0]
        same = ((out["user"] == first["user"]) & (out["item"] == first["item"])).to_numpy()
        lines = frame.loc[same, "line"].tolist()
        where, line = _where(frame, dup, path)
        raise DataError(
            f"{where}:{line}: duplicate rating of item {int(first['item'])} by user "
            f"{int(first['user'])} (also on line {lines[0]})"
        )
    return out.reset_index(drop=True)
