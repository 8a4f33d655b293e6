"""Ratings data: readers -> validation -> splits -> RatingMatrix -> batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from deeprec.data import readers, sources, store, synthetic, validate
from deeprec.data.errors import DataError
from deeprec.data.matrix import Batch, RatingMatrix
from deeprec.data.splits import SPLITS, split

__all__ = ["SPLITS", "Batch", "DataError", "Dataset", "RatingMatrix", "load", "split"]


@dataclass
class Dataset:
    """A validated ratings table with its item titles and rating scale."""

    name: str
    path: Path
    ratings: pd.DataFrame  # user, item, rating[, timestamp]
    titles: dict[int, str] = field(default_factory=dict)
    scale: tuple[float, float] = (0.5, 5.0)
    scale_inferred: bool = False  # the file states none: the range its ratings span


def load(
    data: str = "ml-latest-small",
    data_dir: str | Path | None = None,
    scale: tuple[float, float] | None = None,
    download: bool = True,
) -> Dataset:
    """Resolve, read and validate a dataset (a known name or a path); DataError if unusable.

    synth-* names are generated (deeprec.data.synthetic) and cached under ``data_dir``
    (default: the user cache); they need no validation. Large real sources are parsed
    once and then memory-mapped from a binary cache (deeprec.data.store).
    """
    if synthetic.is_synthetic(data):
        root = Path(data_dir) if data_dir is not None else sources.cache_dir()
        frame, folder = synthetic.load(data, root)
        return Dataset(data, folder, frame, {}, scale or synthetic.shape_of(data).scale)
    path = sources.resolve(data, data_dir, download=download)
    files = readers.source_files(path)

    def parse() -> store.Parsed:
        with tqdm(total=2, desc=f"reading {path.name}", delay=3, leave=False) as bar:
            raw = readers.detect_and_read(path)
            bar.update()
            frame = validate.check(raw, scale)
            bar.update()
        return store.Parsed(frame, raw.titles, raw.scale)

    if files and store.wanted(files):
        folder = store.folder_for(sources.cache_dir(), path)
        parsed = store.load(folder, store.key(path, files, scale), parse)
    else:
        parsed = parse()
    frame = parsed.ratings
    inferred = scale is None and parsed.scale is None
    if scale is None:
        scale = parsed.scale or (float(frame["rating"].min()), float(frame["rating"].max()))
    return Dataset(data, path, frame, parsed.titles, scale, inferred)
