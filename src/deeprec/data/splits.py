"""Train/validation splits. These definitions are the contract (the team design notes repeat them).

- global-time: threshold = pandas quantile(q) (linear) of all timestamps; train is
  t <= threshold, validation t > threshold; validation keeps rows whose user and
  item both occur in train.
- user-time: per user, sort by (timestamp, item); the first floor((1 - f) n) go to
  train, the rest to validation; validation drops rows whose item is not in train.
- random: seeded split with a fraction f to validation, cleaned like global-time.
- given: the ratings' own ``validation`` column (1: held out) says which is which; cleaned
  like global-time (the split of a model fitted with ``Recommender.fit(validation=...)``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from deeprec.choices import SPLITS
from deeprec.data.errors import DataError
from deeprec.data.ids import contained


def split(
    ratings: pd.DataFrame,
    how: str = "global-time",
    *,
    quantile: float = 0.98,
    val_frac: float = 0.2,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, validation) frames; see the module docstring for each rule."""
    if how == "global-time":
        _need_time(ratings, how)
        if not 0.0 < quantile < 1.0:
            raise DataError(f"--quantile must be in (0, 1), got {quantile}")
        stamps = ratings["timestamp"].to_numpy()
        threshold = np.quantile(stamps, quantile)  # linear, as pandas' Series.quantile
        early = stamps <= threshold
        train = rows_where(ratings, early)
        return train, known_users_items(rows_where(ratings, ~early), train)
    if how == "user-time":
        _need_time(ratings, how)
        if not 0.0 < val_frac < 1.0:
            raise DataError(f"--val-frac must be in (0, 1), got {val_frac}")
        ordered = ratings.sort_values(["user", "timestamp", "item"], kind="stable")
        rank = ordered.groupby("user").cumcount().to_numpy()
        size = ordered.groupby("user")["user"].transform("size").to_numpy()
        in_train = rank < np.floor((1.0 - val_frac) * size)
        train, val = ordered[in_train], ordered[~in_train]
        val = val[contained(val["item"].to_numpy(), train["item"].to_numpy())]
        return train.reset_index(drop=True), val.reset_index(drop=True)
    if how == "random":
        if not 0.0 < val_frac < 1.0:
            raise DataError(f"--val-frac must be in (0, 1), got {val_frac}")
        rng = np.random.default_rng(seed)
        to_val = rng.random(len(ratings)) < val_frac
        train = rows_where(ratings, ~to_val)
        return train, known_users_items(rows_where(ratings, to_val), train)
    if how == "given":
        if "validation" not in ratings.columns:
            raise DataError(
                "--split given needs a validation column (1: a held-out rating, 0: training), "
                "and these ratings have none"
            )
        held = ratings["validation"].to_numpy(bool)
        train = rows_where(ratings.drop(columns="validation"), ~held)
        val = rows_where(ratings.drop(columns="validation"), held)
        return train, known_users_items(val, train)
    raise DataError(f"--split must be one of {', '.join(SPLITS)}, got {how!r}")


def _need_time(ratings: pd.DataFrame, how: str) -> None:
    if "timestamp" not in ratings.columns:
        raise DataError(
            f"--split {how} needs timestamps, and these ratings have none; use --split random "
            "(split='random' in Python) or ratings with a timestamp column"
        )


def known_users_items(val: pd.DataFrame, train: pd.DataFrame) -> pd.DataFrame:
    """The ratings of ``val`` whose user and item both occur in ``train`` (what a model
    trained on ``train`` can score), renumbered."""
    keep = contained(val["user"].to_numpy(), train["user"].to_numpy()) & contained(
        val["item"].to_numpy(), train["item"].to_numpy()
    )
    return rows_where(val, keep)


def rows_where(frame: pd.DataFrame, mask: np.ndarray) -> pd.DataFrame:
    """The rows of ``frame`` where ``mask`` holds, renumbered; column by column in numpy,
    which is several times faster than pandas' boolean indexing at 100M rows."""
    return pd.DataFrame({c: frame[c].to_numpy()[mask] for c in frame.columns}, copy=False)
