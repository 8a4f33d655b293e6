"""Readers, validation, splits and RatingMatrix on generated files and the real ml-latest-small."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import (
    synthetic_ratings,
    write_ml1m,
    write_ml100k,
    write_movielens_csv,
    write_netflix,
)

from deeprec.data import DataError, RatingMatrix, load, sources, split


# ---------------------------------------------------------------- readers
@pytest.mark.parametrize(
    "writer,scale,title",
    [
        (write_movielens_csv, (0.5, 5.0), "Movie 7, The (1997)"),
        (write_ml100k, (1.0, 5.0), "Caf\u00e9 7 (1995)"),
        (write_ml1m, (1.0, 5.0), "Film 7 (1999)"),
        (write_netflix, (1.0, 5.0), "Show 7, Part 7 (2001)"),
        (lambda d: write_netflix(d, combined=True), (1.0, 5.0), "Show 7, Part 7 (2001)"),
    ],
    ids=["movielens-csv", "ml-100k", "ml-1m", "netflix-training-set", "netflix-combined"],
)
def test_every_layout_reads_the_same_ratings(tmp_path, writer, scale, title):
    rows = synthetic_ratings()
    folder = tmp_path / ("ml-1m" if writer is write_ml1m else "data")
    writer(folder)
    ds = load(str(folder))
    assert ds.scale == scale
    assert len(ds.ratings) == len(rows)
    got = ds.ratings.sort_values(["user", "item"]).reset_index(drop=True)
    want = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]).sort_values(
        ["user", "item"]
    )
    assert got["user"].tolist() == want["user"].tolist()
    assert got["item"].tolist() == want["item"].tolist()
    if writer is write_movielens_csv:
        assert got["rating"].tolist() == want["rating"].tolist()
        assert got["timestamp"].tolist() == want["timestamp"].tolist()
    else:
        assert got["rating"].between(1, 5).all()
    assert ds.titles[7] == title


def test_generic_csv_with_other_column_names(tmp_path):
    f = tmp_path / "mine.csv"
    f.write_text("item_id,user_id,score\n10,1,4\n11,1,3.5\n10,2,2\n")
    ds = load(str(f))
    assert ds.ratings[["user", "item", "rating"]].values.tolist() == [
        [1, 10, 4.0],
        [1, 11, 3.5],
        [2, 10, 2.0],
    ]
    assert "timestamp" not in ds.ratings


# ---------------------------------------------------------------- bad rows
BAD_FILES = {
    "non-numeric rating": ("1,1,abc,5\n", r"ratings.csv:3: rating 'abc' is not a number"),
    "NaN rating": ("1,1,nan,5\n", r"ratings.csv:3: rating 'nan' is not a number"),
    "inf rating": ("1,1,inf,5\n", r"ratings.csv:3: rating inf is not finite"),
    "out of scale": ("1,1,7,5\n", r"ratings.csv:3: rating 7 is outside the scale \[0.5, 5\]"),
    "negative id": ("-4,1,3,5\n", r"ratings.csv:3: user id -4 is negative"),
    "fractional id": ("1,1.5,3,5\n", r"ratings.csv:3: item id 1.5 is not an integer"),
    "missing rating": ("1,1,,5\n", r"ratings.csv:3: missing rating"),
    "duplicate pair": (
        "2,2,3,5\n",
        r"ratings.csv:3: duplicate rating of item 2 by user 2 \(also on line 2\)",
    ),
    "too many fields": ("1,1,3,5,9,9\n", r"ratings.csv: .*"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_rows_name_file_and_line(tmp_path, case):
    bad, message = BAD_FILES[case]
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n2,2,4,1\n" + bad)
    (folder / "movies.csv").write_text("movieId,title,genres\n1,A (1990),x\n2,B (1991),y\n")
    with pytest.raises(DataError, match=message):
        load(str(folder))


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "file is empty"),
        (b"userId,movieId,rating,timestamp\n", "only a header"),
        (b"a,b,c\n1,2,3\n", "has no user column"),
        (b"userId,movieId,rating\n1,2,\xff\xfe\n", "not readable as utf-8"),
    ],
    ids=["empty", "header-only", "wrong-columns", "bad-encoding"],
)
def test_unusable_files(tmp_path, content, message):
    f = tmp_path / "r.csv"
    f.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load(str(f))


def test_unknown_dataset_name_and_missing_path():
    with pytest.raises(DataError, match="not a known dataset") as info:
        load("ml-999k")
    assert "synth-netflix" in str(info.value) and "synth:USERSxITEMSxRATINGS" in str(info.value)


@pytest.mark.parametrize(
    "typo, meant",
    [("ml-lates-small", "ml-latest-small"), ("ML-1M", "ml-1m"), ("synth-netflx", "synth-netflix")],
)
def test_a_mistyped_dataset_name_gets_a_did_you_mean(typo, meant):
    with pytest.raises(DataError, match=f"did you mean '{meant}'"):
        load(typo)


def test_missing_known_dataset_offline_says_where_to_put_it(tmp_path, monkeypatch):
    import pooch

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(pooch, "retrieve", offline)
    monkeypatch.setenv("DEEPREC_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(sources, "cache_dir", lambda: tmp_path / "cache")
    with pytest.raises(DataError, match=r"could not download ml-100k .*put the files in .*ml-100k"):
        load("ml-100k", data_dir=tmp_path / "dd")


def test_names_resolve_in_order_data_dir_then_env(tmp_path, monkeypatch):
    write_ml100k(tmp_path / "a" / "ml-100k")
    write_ml100k(tmp_path / "b" / "ml-100k")
    monkeypatch.setenv("DEEPREC_DATA", str(tmp_path / "b"))
    assert load("ml-100k", data_dir=tmp_path / "a").path == tmp_path / "a" / "ml-100k"
    assert load("ml-100k").path == tmp_path / "b" / "ml-100k"


def test_corrupt_download_is_moved_aside(tmp_path, monkeypatch):
    import pooch

    def fake_retrieve(url, known_hash, path, fname, processor, progressbar):
        write_movielens_csv(Path(path) / "ml-latest-small")
        return []

    monkeypatch.setattr(pooch, "retrieve", fake_retrieve)
    monkeypatch.setattr(sources, "BUNDLED", ())  # as for a set that is not shipped
    monkeypatch.delenv("DEEPREC_DATA", raising=False)
    with pytest.raises(DataError, match="sha256 does not match"):
        load("ml-latest-small", data_dir=tmp_path)
    assert not (tmp_path / "ml-latest-small" / "ratings.csv").exists()


# ---------------------------------------------------------------- splits
def crafted() -> pd.DataFrame:
    # user 1: items 1..5 at t=1..5; user 2: items 1,2,6 at t=10,11,12; user 3: item 7 at t=6
    rows = [(1, i, 4.0, i) for i in range(1, 6)] + [
        (2, 1, 3.0, 10),
        (2, 2, 2.0, 11),
        (2, 6, 5.0, 12),
        (3, 7, 1.0, 6),
    ]
    return pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])


def test_global_time_split_known_answer():
    # timestamps 1,2,3,4,5,6,10,11,12: quantile(0.8) linear = 10 + 0.4 * (11 - 10) = 10.4
    train, val = split(crafted(), "global-time", quantile=0.8)
    assert sorted(train["timestamp"]) == [1, 2, 3, 4, 5, 6, 10]
    # validation candidates (2,2,t=11) and (2,6,t=12): item 6 never in train -> dropped
    assert val[["user", "item"]].values.tolist() == [[2, 2]]


def test_user_time_split_known_answer():
    train, val = split(crafted(), "user-time", val_frac=0.4)
    # user 1: floor(0.6*5)=3 train (items 1,2,3), val 4,5 (both items in train? no -> dropped)
    # user 2: floor(0.6*3)=1 train (item 1), val items 2 (in train via user 1) and 6 (dropped)
    # user 3: floor(0.6*1)=0 train, val item 7 (not in train -> dropped)
    assert sorted(map(tuple, train[["user", "item"]].values.tolist())) == [
        (1, 1),
        (1, 2),
        (1, 3),
        (2, 1),
    ]
    assert val[["user", "item"]].values.tolist() == [[2, 2]]


def test_user_time_breaks_timestamp_ties_by_item():
    df = pd.DataFrame(
        [(1, 9, 3.0, 5), (1, 2, 3.0, 5), (1, 4, 3.0, 5), (2, 9, 1.0, 1), (2, 2, 1.0, 1)],
        columns=["user", "item", "rating", "timestamp"],
    )
    train, _ = split(df, "user-time", val_frac=0.3)  # user 1: floor(0.7 * 3) = 2 in train
    assert sorted(train[train.user == 1]["item"]) == [2, 4]


def test_random_split_is_seeded_and_cleaned():
    df = pd.DataFrame(synthetic_ratings(), columns=["user", "item", "rating", "timestamp"])
    a_train, a_val = split(df, "random", val_frac=0.1, seed=3)
    b_train, b_val = split(df, "random", val_frac=0.1, seed=3)
    assert a_train.equals(b_train) and a_val.equals(b_val)
    assert 0.05 * len(df) < len(a_val) <= 0.15 * len(df)
    assert a_val["user"].isin(a_train["user"]).all() and a_val["item"].isin(a_train["item"]).all()
    c_train, _ = split(df, "random", val_frac=0.1, seed=4)
    assert not c_train.equals(a_train)


def test_split_without_timestamps_is_refused():
    with pytest.raises(DataError, match="needs timestamps"):
        split(crafted().drop(columns="timestamp"), "global-time")


def test_real_ml_latest_small_seed_split(monkeypatch):
    """The copy shipped in the package (never skipped): GroupLens's counts and the seed split."""
    monkeypatch.delenv("DEEPREC_DATA", raising=False)
    ds = load("ml-latest-small")
    assert len(ds.ratings) == 100_836
    train, val = split(ds.ratings)
    m = RatingMatrix.from_split(train, val, "user", ds.scale)
    assert (m.n_rows, m.n_cols, m.train.nnz, len(m.val_ratings)) == (595, 9559, 98_819, 188)
    assert ds.titles[1] == "Toy Story (1995)"
    assert (
        sources.sha256(ds.path / "ratings.csv") == sources.SOURCES["ml-latest-small"].ratings_sha256
    )


# ---------------------------------------------------------------- RatingMatrix
def test_validation_ratings_without_training_row_or_column_are_dropped():
    # users 1 and 2 rate items 1-4 in opposite orders, so each one's last item is in the
    # other's training part; user 3 has a single rating, which user-time puts in validation,
    # so user 3 has no training row.
    rows = [(1, i, 4.0, i) for i in (1, 2, 3, 4)] + [(2, i, 3.0, 5 - i) for i in (1, 2, 3, 4)]
    df = pd.DataFrame([*rows, (3, 1, 4.0, 9)], columns=["user", "item", "rating", "timestamp"])
    train, val = split(df, "user-time", val_frac=0.25)
    assert 3 in set(val["user"]) and 3 not in set(train["user"])
    for by in ("user", "item"):
        m = RatingMatrix.from_split(train, val, by)
        users = m.row_ids[m.val_rows] if by == "user" else m.col_ids[m.val_cols]
        assert sorted(users.tolist()) == [1, 2]  # user 3's rating is dropped, the others kept
        assert m.val_rows.max() < m.n_rows and m.val_cols.max() < m.n_cols


def test_rating_matrix_orientations_and_batches():
    df = crafted()
    train, val = split(df, "global-time", quantile=0.8)
    by_user = RatingMatrix.from_split(train, val, "user")
    by_item = RatingMatrix.from_split(train, val, "item")
    assert (by_user.n_users, by_user.n_items) == (by_item.n_users, by_item.n_items) == (3, 6)
    np.testing.assert_array_equal(by_user.train.toarray(), by_item.train.toarray().T)
    assert by_user.fingerprint() != by_item.fingerprint()
    # validation (user 2, item 2) in index space
    assert (by_user.row_ids[by_user.val_rows[0]], by_user.col_ids[by_user.val_cols[0]]) == (2, 2)
    assert (by_item.row_ids[by_item.val_rows[0]], by_item.col_ids[by_item.val_cols[0]]) == (2, 2)
    seen = []
    for b in by_user.batches(2, generator=torch.Generator().manual_seed(0)):
        np.testing.assert_array_equal(b.dense().numpy(), by_user.train[b.rows.numpy()].toarray())
        seen += b.rows.tolist()
    assert sorted(seen) == [0, 1, 2]


# ---------------------------------------------------------------- spreadsheet CSVs
SPREADSHEET_ROWS = [(1, 10, 4.5, 100), (1, 11, 3.0, 101), (2, 10, 5.0, 102), (2, 12, 2.5, 103)]


@pytest.mark.parametrize(
    "encoding,sep,decimal,quote,newline",
    [
        ("utf-8-sig", ",", ".", "", "\r\n"),  # Excel "CSV UTF-8": a byte-order mark
        ("utf-8-sig", ";", ",", "", "\r\n"),  # a decimal-comma locale: ';' and 4,5
        ("utf-16", "\t", ".", "", "\r\n"),  # "Unicode text": UTF-16 with a BOM, tabs
        ("utf-8", ",", ".", '"', "\r"),  # quoted fields, old Mac line ends
    ],
)
def test_spreadsheet_saved_csvs_are_read(tmp_path, encoding, sep, decimal, quote, newline):
    q = quote
    head = sep.join(f"{q}{h}{q}" for h in ("UserId", "MovieId", "Rating", "Timestamp"))
    lines = [head] + [
        sep.join(f"{q}{v}{q}" for v in (u, i, str(r).replace(".", decimal), t))
        for u, i, r, t in SPREADSHEET_ROWS
    ]
    path = tmp_path / "mine.csv"
    path.write_bytes((newline.join(lines) + newline).encode(encoding))
    ds = load(str(path))
    got = ds.ratings[["user", "item", "rating", "timestamp"]].to_numpy().tolist()
    assert got == [list(map(float, row)) for row in SPREADSHEET_ROWS]


def test_a_bad_row_in_a_bom_file_still_names_its_line(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_bytes("\ufeffuser,item,rating\n1,2,4\n1,3,x\n".encode())
    with pytest.raises(DataError, match=r"mine.csv:3: rating 'x' is not a number"):
        load(str(path))


def test_a_found_copy_of_a_pinned_dataset_is_checked_every_time(tmp_path, monkeypatch):
    write_movielens_csv(tmp_path / "mine" / "ml-latest-small")  # not the GroupLens file
    monkeypatch.delenv("DEEPREC_DATA", raising=False)
    with pytest.raises(DataError, match="sha256 does not match the pinned value"):
        load("ml-latest-small", data_dir=tmp_path / "mine", download=False)
    assert (tmp_path / "mine" / "ml-latest-small" / "ratings.csv").exists()  # user's: kept
    # the same bad copy in the cache is moved aside, so the next run downloads it again
    cache = tmp_path / "cache"
    write_movielens_csv(cache / "ml-latest-small")
    monkeypatch.setattr(sources, "cache_dir", lambda: cache)
    with pytest.raises(DataError, match=r"moved to ratings\.csv\.corrupt"):
        load("ml-latest-small", download=False)
    assert not (cache / "ml-latest-small" / "ratings.csv").exists()
