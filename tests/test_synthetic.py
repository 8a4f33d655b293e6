"""Synthetic twins of the large sets: exact shape, determinism, learnable, cached."""

from __future__ import annotations

import numpy as np
import pytest

from deeprec.data import DataError, RatingMatrix, load, split
from deeprec.data import synthetic as synth
from deeprec.scoring import baseline

SMALL = "synth:3000x400x60000"


def test_generated_table_has_the_exact_shape_and_distinct_pairs():
    cols = synth.generate(synth.shape_of(SMALL), seed=3)
    user, item, rating = cols["user"], cols["item"], cols["rating"]
    assert len(user) == 60000 and user.max() < 3000 and item.max() < 400
    keys = user.astype(np.int64) * 400 + item
    assert np.all(np.diff(keys) > 0)  # sorted by (user, item), no repeated pair
    # synth:UxIxN rates on the MovieLens scale (0.5..5 by 0.5): only its steps, and most of them
    values = set(np.unique(rating).tolist())
    assert values <= {k / 2 for k in range(1, 11)} and len(values) >= 8, values
    per_item = np.bincount(item, minlength=400)
    assert per_item.max() > 5 * np.median(per_item)  # long-tailed popularity
    again = synth.generate(synth.shape_of(SMALL), seed=3)
    assert all(np.array_equal(cols[k], again[k]) for k in cols)
    other = synth.generate(synth.shape_of(SMALL), seed=4)
    assert not np.array_equal(cols["item"], other["item"])


def test_real_shapes_are_the_published_counts():
    assert (synth.SHAPES["synth-netflix"].users, synth.SHAPES["synth-netflix"].ratings) == (
        480_189,
        100_480_507,
    )
    assert synth.SHAPES["synth-ml32m"].items == 87_585
    assert synth.SHAPES["synth-ml20m"].ratings == 20_000_263


def test_loads_through_the_cache_and_the_bias_model_beats_the_global_mean(tmp_path):
    first = load(SMALL, tmp_path)
    files = sorted(p.name for p in first.path.iterdir())
    assert files == ["item.npy", "rating.npy", "timestamp.npy", "user.npy"]
    second = load(SMALL, tmp_path)  # memory-mapped from the cache
    assert second.ratings.equals(first.ratings)
    train, val = split(second.ratings, "user-time")
    m = RatingMatrix.from_split(train, val, "user", second.scale)
    fit = baseline.fit(m.train, m.by)
    bias = np.sqrt(np.mean((fit.at(m.val_rows, m.val_cols) - m.val_ratings) ** 2))
    mean = np.sqrt(np.mean((m.train.data.mean() - m.val_ratings) ** 2))
    assert bias < 0.95 * mean


def test_a_damaged_cache_is_rebuilt_with_a_notice_and_bad_names_are_clear_errors(tmp_path, capsys):
    ds = load(SMALL, tmp_path)
    want = ds.ratings.copy()
    for damage in (b"not a numpy file", None):
        if damage is None:  # a whole but short column
            np.save(ds.path / "rating.npy", np.zeros(10, dtype=np.float32))
        else:
            (ds.path / "rating.npy").write_bytes(damage)
        again = load(SMALL, tmp_path)
        assert "rebuilding it" in capsys.readouterr().err
        assert again.ratings.equals(want)
    with pytest.raises(DataError, match="unknown synthetic dataset"):
        synth.shape_of("synth-netflx")
    with pytest.raises(DataError, match="ratings <= users"):
        synth.shape_of("synth:10x10x90")
