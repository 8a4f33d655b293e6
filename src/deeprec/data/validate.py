"""Vectorised checks of parsed ratings; every error names the file and line of the first bad row.

Turns the reader's columns (text from the lenient parser, numbers from the typed one) into
compact typed ones: user and item ids int32 (int64 when an id needs it), ratings float32
(checked in float64 first: finite, on the dataset's scale when it has one), timestamps
int64 (float64 when a file has fractional ones). Duplicate (user, item) pairs are refused:
which rating to keep is the data owner's call, not ours.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from deeprec.data.errors import DataError
from deeprec.data.readers import Ratings


def _fail(ratings: Ratings, mask: np.ndarray, what: str) -> None:
    row = int(np.flatnonzero(mask)[0])
    raise DataError(f"{ratings.where(row)}: {what}")


def _refuse_widening(ratings: Ratings, rating: np.ndarray) -> None:
    """A DataError naming the first rating that alone stretches a scale the file does not
    state: a highest (or lowest) value held by at most 0.1% of the ratings and farther from
    the next value than twice the usual step between rating values (a 7.5 among 0.5-5 stars:
    a typo, or a scale to state with --scale)."""
    values, counts = np.unique(rating, return_counts=True)
    if len(values) < 3:
        return
    steps = np.diff(values)
    usual, few = float(np.median(steps)), max(1, len(rating) // 1000)
    for end, gap, rest in ((-1, steps[-1], values[-2]), (0, steps[0], values[1])):
        if counts[end] <= few and gap > 2 * usual:
            lo, hi = (values[0], rest) if end == -1 else (rest, values[-1])
            wide = (values[0], values[-1])
            _fail(
                ratings,
                rating == values[end],
                f"rating {values[end]:g} lies far outside the others ({lo:g} to {hi:g}) and "
                f"would widen the scale this file does not state; if it belongs, pass --scale "
                f"{wide[0]:g},{wide[1]:g}",
            )


def _numbers(ratings: Ratings, column: str) -> np.ndarray:
    """The column as float64 (text parsed here, with the first unparsable value named)."""
    raw = ratings.frame[column]
    if pd.api.types.is_numeric_dtype(raw.dtype):
        return raw.to_numpy(np.float64)
    text = raw.astype("string").str.strip()
    missing = (text.isna() | (text == "")).to_numpy()
    if missing.any():
        _fail(ratings, missing, f"missing {column}")
    values = pd.to_numeric(text, errors="coerce")
    bad = values.isna().to_numpy()
    if bad.any():
        _fail(ratings, bad, f"{column} {text[bad].iloc[0]!r} is not a number")
    return values.to_numpy(np.float64)


def _ids(ratings: Ratings, column: str) -> np.ndarray:
    raw = ratings.frame[column]
    if pd.api.types.is_integer_dtype(raw.dtype):
        values = raw.to_numpy()
        negative = values < 0
        if negative.any():
            _fail(ratings, negative, f"{column} id {int(values[negative][0])} is negative")
    else:
        numbers = _numbers(ratings, column)
        fractional = numbers != np.floor(numbers)
        if fractional.any():
            _fail(ratings, fractional, f"{column} id {numbers[fractional][0]} is not an integer")
        negative = numbers < 0
        if negative.any():
            _fail(ratings, negative, f"{column} id {int(numbers[negative][0])} is negative")
        too_large = numbers > 2**62
        if too_large.any():
            _fail(ratings, too_large, f"{column} id is too large")
        values = numbers.astype(np.int64)
    small = len(values) == 0 or int(values.max()) < 2**31
    return values.astype(np.int32 if small else np.int64, copy=False)


def check(ratings: Ratings, scale: tuple[float, float] | None = None) -> pd.DataFrame:
    """Validated, typed ratings (user, item, rating[, timestamp][, validation]) or a
    DataError."""
    frame = ratings.frame
    scale = scale or ratings.scale
    columns: dict[str, np.ndarray] = {"user": _ids(ratings, "user"), "item": _ids(ratings, "item")}
    rating = _numbers(ratings, "rating")
    nan = np.isnan(rating)
    if nan.any():
        _fail(ratings, nan, "rating 'nan' is not a number")
    infinite = ~np.isfinite(rating)
    if infinite.any():
        _fail(ratings, infinite, f"rating {rating[infinite][0]} is not finite")
    if scale is None:  # a file that does not state its scale: it is the ratings' range
        _refuse_widening(ratings, rating)
    else:
        lo, hi = scale
        outside = (rating < lo) | (rating > hi)
        if outside.any():
            _fail(
                ratings,
                outside,
                f"rating {rating[outside][0]:g} is outside the scale [{lo:g}, {hi:g}]",
            )
    columns["rating"] = rating.astype(np.float32)
    del rating
    if "timestamp" in frame.columns:
        raw = frame["timestamp"]
        if pd.api.types.is_integer_dtype(raw.dtype):
            columns["timestamp"] = raw.to_numpy(np.int64)
        else:
            ts = _numbers(ratings, "timestamp")
            if not np.isfinite(ts).all():
                _fail(ratings, ~np.isfinite(ts), "timestamp is not finite")
            whole = (ts == np.floor(ts)).all() and np.abs(ts).max(initial=0) < 2**62
            columns["timestamp"] = ts.astype(np.int64) if whole else ts
    if "validation" in frame.columns:
        flag = _numbers(ratings, "validation")
        bad = (flag != 0) & (flag != 1)
        if bad.any():
            _fail(ratings, bad, f"validation {flag[bad][0]:g} is not 0 or 1")
        columns["validation"] = flag.astype(bool)
    _no_duplicates(ratings, columns["user"], columns["item"])
    return pd.DataFrame(columns, copy=False)


def _no_duplicates(ratings: Ratings, user: np.ndarray, item: np.ndarray) -> None:
    """Refuse a second rating of the same (user, item), naming both lines.

    One sort of a 64-bit key per pair; the slower search for the
    first duplicate's lines runs only when there is one.
    """
    if len(user) < 2:
        return
    if int(user.max()) < 2**31 and int(item.max()) < 2**31:
        key = user.astype(np.int64) << 31 | item.astype(np.int64)
        key.sort()
        if not (key[1:] == key[:-1]).any():
            return
    pairs = pd.DataFrame({"user": user, "item": item}, copy=False)
    dup = pairs.duplicated(keep="first").to_numpy()
    if not dup.any():
        return
    row = int(np.flatnonzero(dup)[0])
    u, i = user[row], item[row]
    first = int(np.flatnonzero((user == u) & (item == i))[0])
    here, there = ratings.where(row), ratings.where(first)
    same_file = here.rsplit(":", 1)[0] == there.rsplit(":", 1)[0]
    also = f"line {there.rsplit(':', 1)[1]}" if same_file else there
    raise DataError(f"{here}: duplicate rating of item {int(i)} by user {int(u)} (also on {also})")
