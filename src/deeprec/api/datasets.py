"""Datasets as DataFrames, read, validated and cached exactly as the commands read them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from deeprec.data import load


def load_ratings(
    name: str | Path = "ml-latest-small",
    *,
    data_dir: str | Path | None = None,
    scale: tuple[float, float] | None = None,
) -> tuple[pd.DataFrame, dict[int, str]]:
    """(ratings: user, item, rating[, timestamp]; titles: {item id: title}) of a dataset
    name (ml-latest-small ships inside the package; the others download once or are found
    under ``data_dir``/$DEEPREC_DATA) or a ratings file or folder. The frame is the caller's
    own copy."""
    dataset = load(str(name), data_dir, scale)
    return dataset.ratings.copy(deep=True), dict(dataset.titles)
