"""The typed (pyarrow) and lenient (pandas) parsers, the Netflix reader and the parse cache."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from datasets import synthetic_ratings, write_ml1m, write_ml100k, write_movielens_csv, write_netflix
from hypothesis import given, settings
from hypothesis import strategies as st

from deeprec.data import DataError, load, readers, sources, store, validate


def frame_of(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])


# ---------------------------------------------------------------- typed vs lenient
@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2**40),
            st.integers(0, 3000),
            st.sampled_from([0.5, 1.0, 2.5, 3.0, 4.5, 5.0]),
            st.integers(0, 2**33),
        ),
        min_size=1,
        max_size=60,
        unique_by=lambda r: (r[0], r[1]),
    ),
    st.sampled_from([",", "\t"]),
)
def test_typed_and_lenient_parses_agree(tmp_path_factory, rows, sep):
    folder = tmp_path_factory.mktemp("agree")
    body = "".join(f"{u}{sep}{i}{sep}{r:g}{sep}{t}\n" for u, i, r, t in rows)
    head = sep.join(["userId", "movieId", "rating", "timestamp"]) + "\n"
    clean, bom = folder / "clean.csv", folder / "bom.csv"
    clean.write_text(head + body)
    bom.write_bytes(b"\xef\xbb\xbf" + (head + body).encode())  # a BOM takes the lenient path
    typed, lenient = readers.read_csv_ratings(clean), readers.read_csv_ratings(bom)
    assert pd.api.types.is_integer_dtype(typed.frame["user"])  # really the typed path
    assert not pd.api.types.is_numeric_dtype(lenient.frame["user"])  # text, parsed later
    a, b = validate.check(typed), validate.check(lenient)
    for column in a.columns:
        np.testing.assert_array_equal(a[column].to_numpy(), b[column].to_numpy())
    want = frame_of(rows)
    np.testing.assert_array_equal(a["user"].to_numpy(), want["user"].to_numpy())
    np.testing.assert_array_equal(a["rating"].to_numpy(), want["rating"].to_numpy(np.float32))
    assert a["user"].dtype == (np.int32 if max(r[0] for r in rows) < 2**31 else np.int64)
    assert a["item"].dtype == np.int32 and a["rating"].dtype == np.float32


BAD_ROWS = {
    "non-numeric rating": ("1{s}1{s}abc{s}5", "rating 'abc' is not a number"),
    "nan rating": ("1{s}1{s}nan{s}5", "rating 'nan' is not a number"),
    "out of scale": ("1{s}1{s}9{s}5", r"rating 9 is outside the scale"),
    "fractional id": ("1{s}1.5{s}3{s}5", "item id 1.5 is not an integer"),
    "missing timestamp": ("1{s}1{s}3{s}", "missing timestamp"),
    "duplicate": ("2{s}2{s}3{s}5", r"duplicate rating of item 2 by user 2 \(also on line 1\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
@pytest.mark.parametrize("layout", ["ml-100k", "ml-1m"])
def test_bad_rows_in_headerless_layouts_name_file_and_line(tmp_path, case, layout):
    row, message = BAD_ROWS[case]
    sep = "\t" if layout == "ml-100k" else "::"
    name = "u.data" if layout == "ml-100k" else "ratings.dat"
    folder = tmp_path / layout
    folder.mkdir()
    good = [sep.join(map(str, (2, 2, 4, 1))), sep.join(map(str, (3, 2, 4, 1)))]
    (folder / name).write_text("\n".join([*good, row.format(s=sep)]) + "\n")
    with pytest.raises(DataError, match=rf"{name}:3: {message}"):
        load(str(folder))


def test_clean_headerless_files_take_the_typed_path(tmp_path):
    for writer, folder in ((write_ml100k, "ml-100k"), (write_ml1m, "ml-1m")):
        path = writer(tmp_path / folder)
        raw = readers.detect_and_read(path)
        assert pd.api.types.is_integer_dtype(raw.frame["user"]), folder
        assert raw.lines is None and raw.first_line == 1


# ---------------------------------------------------------------- Netflix
NETFLIX_BAD = {
    "orphan rating": ("5,3,2005-01-01\n1:\n", 1, "rating line before any 'MovieID:' line"),
    "two fields": ("1:\n5,3\n", 2, "expected CustomerID,Rating,Date, found '5,3'"),
    "bad date": ("1:\n5,3,2005-13-45\n", 2, "date '2005-13-45' is not YYYY-MM-DD"),
    "bad customer": ("1:\nx5,3,2005-01-01\n", 2, "CustomerID 'x5' is not an integer id"),
    "bad rating": ("1:\n5,three,2005-01-01\n", 2, "rating 'three' is not a number"),
    "bad movie": ("m1:\n5,3,2005-01-01\n", 1, "MovieID 'm1' is not an integer id"),
    "out of scale": ("1:\n5,3,2005-01-01\n\n6,7,2005-01-01\n", 4, "rating 7 is outside"),
    "duplicate": ("1:\n5,3,2005-01-01\n5,4,2005-01-02\n", 3, r"duplicate .*also on line 2"),
    "lone CR line ends": ("1:\r5,3,2005-01-01\r", 1, r"a line ends with a lone carriage return"),
    "CRLF is fine": ("1:\r\n5,3,2005-01-01\r\n5,9,2005-01-01\r\n", 3, r"rating 9 is outside"),
}


@pytest.mark.parametrize("case", sorted(NETFLIX_BAD))
@pytest.mark.parametrize("combined", [False, True])
def test_netflix_errors_name_the_file_and_line(tmp_path, case, combined):
    text, line, message = NETFLIX_BAD[case]
    good = "9:\n1,4,2004-02-02\n2,5,2004-02-03\n"
    if combined:
        (tmp_path / "combined_data_1.txt").write_text(good)
        (tmp_path / "combined_data_2.txt").write_text(text)
        bad = "combined_data_2.txt"
    else:
        (tmp_path / "training_set").mkdir()
        (tmp_path / "training_set" / "mv_0000009.txt").write_text(good)
        (tmp_path / "training_set" / "mv_0000010.txt").write_text(text)
        bad = "mv_0000010.txt"
    with pytest.raises(DataError, match=rf"{bad}:{line}: {message}"):
        load(str(tmp_path))


def test_netflix_files_without_ratings_are_refused(tmp_path):
    (tmp_path / "training_set").mkdir()
    (tmp_path / "training_set" / "mv_0000001.txt").write_text("")
    (tmp_path / "training_set" / "mv_0000002.txt").write_text("2:\n")
    with pytest.raises(DataError, match="no ratings"):
        load(str(tmp_path))


def test_a_duplicate_across_netflix_files_names_both_files(tmp_path):
    (tmp_path / "combined_data_1.txt").write_text("1:\n5,3,2005-01-01\n")
    (tmp_path / "combined_data_2.txt").write_text("2:\n6,3,2005-01-01\n1:\n5,4,2005-01-02\n")
    with pytest.raises(
        DataError, match=r"combined_data_2.txt:4: duplicate .* \(also on .*combined_data_1.txt:2\)"
    ):
        load(str(tmp_path))


def test_netflix_groups_and_lines_survive_chunking(tmp_path, monkeypatch):
    rows = synthetic_ratings(n_users=30, n_items=25, per_user=6)
    write_netflix(tmp_path, rows)
    whole = load(str(tmp_path)).ratings
    monkeypatch.setattr(readers, "_NETFLIX_CHUNK", 1)  # one file per parse
    chunked = readers.detect_and_read(tmp_path)
    assert len(chunked.files) == 25
    pd.testing.assert_frame_equal(validate.check(chunked), whole)
    # every row's recorded file and line really hold that row
    for k in range(0, len(whole), 17):
        path, line = chunked.where(k).rsplit(":", 1)
        text = Path(path).read_text().splitlines()[int(line) - 1]
        assert text.split(",")[0] == str(whole["user"][k])


# ---------------------------------------------------------------- the parse cache
@pytest.fixture
def cached(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPREC_PARSE_CACHE", "1")
    monkeypatch.setattr(sources, "cache_dir", lambda: tmp_path / "cache")
    folder = write_movielens_csv(tmp_path / "mine")
    return folder


def test_second_load_comes_from_the_cache_and_equals_the_parse(cached, monkeypatch):
    first = load(str(cached))
    assert list((cached.parent / "cache" / "parsed").iterdir())
    monkeypatch.setattr(readers, "detect_and_read", lambda p: pytest.fail("parsed again"))
    second = load(str(cached))
    pd.testing.assert_frame_equal(first.ratings, second.ratings)
    assert first.titles == second.titles and first.scale == second.scale


def test_a_changed_source_is_parsed_again_with_a_notice(cached, capsys):
    load(str(cached))
    ratings = cached / "ratings.csv"
    ratings.write_text(ratings.read_text().replace("userId", "userId", 1) + "999,1,5,7\n")
    again = load(str(cached))
    assert 999 in set(again.ratings["user"])
    assert "stale cache" in capsys.readouterr().err


def test_an_edit_that_keeps_size_and_mtime_is_parsed_again(cached, capsys, monkeypatch):
    """rsync -t, cp -p and tar extraction restore the modification time; a same-size edit
    must still be seen, in a source of any size (a cache that hashed only small sources,
    below HASH_BELOW bytes, is made to treat this one as large)."""
    monkeypatch.setattr(store, "HASH_BELOW", 0, raising=False)
    load(str(cached))
    ratings = cached / "ratings.csv"
    before = ratings.stat()
    data = ratings.read_bytes()  # bytes: the file's own line ends stay as they are
    # a line whose rating is one character, changed to another one-character rating
    line = next(x for x in data.decode().splitlines()[1:] if len(x.split(",")[2]) == 1)
    user, item, rating, stamp = line.split(",")
    new = "4" if rating != "4" else "2"
    edited = ",".join([user, item, new, stamp])
    ratings.write_bytes(data.replace(line.encode(), edited.encode(), 1))
    os.utime(ratings, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert ratings.stat().st_size == before.st_size
    again = load(str(cached)).ratings
    first = again[(again["user"] == int(user)) & (again["item"] == int(item))]
    assert float(first["rating"].iloc[0]) == float(new)
    assert "stale cache" in capsys.readouterr().err


@pytest.mark.parametrize(
    "damage", ["columns is a list", "titles is a list", "rows is text", "a column is a list"]
)
def test_a_cache_file_of_the_wrong_json_type_is_rebuilt(cached, capsys, damage):
    want = load(str(cached)).ratings
    folder = next((cached.parent / "cache" / "parsed").iterdir())
    meta = json.loads((folder / "meta.json").read_text())
    if damage == "titles is a list":
        (folder / "titles.json").write_text(json.dumps(["Toy Story"]))
    else:
        if damage == "columns is a list":
            meta["columns"] = list(meta["columns"])
        elif damage == "rows is text":
            meta["rows"] = "many"
        else:
            meta["columns"]["rating"] = [1, 2]
        (folder / "meta.json").write_text(json.dumps(meta))
    pd.testing.assert_frame_equal(load(str(cached)).ratings, want)
    err = capsys.readouterr().err
    assert "parsing the source again" in err and "Traceback" not in err
    pd.testing.assert_frame_equal(load(str(cached)).ratings, want)  # and it was rebuilt


@pytest.mark.parametrize("damage", ["flip", "truncate", "index"])
def test_a_corrupt_cache_is_never_trusted(cached, capsys, damage):
    want = load(str(cached)).ratings
    folder = next((cached.parent / "cache" / "parsed").iterdir())
    target = folder / ("meta.json" if damage == "index" else "rating.npy")
    data = bytearray(target.read_bytes())
    if damage == "flip":
        data[-3] ^= 0x40
    else:
        data = data[: len(data) // 2]
    target.write_bytes(bytes(data))
    got = load(str(cached)).ratings
    pd.testing.assert_frame_equal(got, want)
    assert "parsing the source again" in capsys.readouterr().err
    pd.testing.assert_frame_equal(load(str(cached)).ratings, want)  # and it was rebuilt


def test_concurrent_first_loads_all_succeed(cached):
    results, errors = [], []

    def one():
        try:
            results.append(load(str(cached)).ratings)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results[1:]:
        pd.testing.assert_frame_equal(r, results[0])
    parsed = cached.parent / "cache" / "parsed"
    assert [p.name for p in parsed.iterdir() if p.name.startswith(".")] == []


def test_small_sources_are_not_cached_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("DEEPREC_PARSE_CACHE", raising=False)
    monkeypatch.setattr(sources, "cache_dir", lambda: tmp_path / "cache")
    load(str(write_movielens_csv(tmp_path / "mine")))
    assert not (tmp_path / "cache").exists()
    assert os.path.getsize(tmp_path / "mine" / "ratings.csv") < store.MIN_BYTES


def test_a_single_file_source_with_titles_beside_it_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPREC_PARSE_CACHE", "1")
    monkeypatch.setattr(sources, "cache_dir", lambda: tmp_path / "cache")
    folder = write_movielens_csv(tmp_path / "ml")
    first = load(str(folder / "ratings.csv"))  # the file itself; movies.csv sits beside it
    monkeypatch.setattr(readers, "detect_and_read", lambda p: pytest.fail("parsed again"))
    second = load(str(folder / "ratings.csv"))
    pd.testing.assert_frame_equal(first.ratings, second.ratings)
    assert second.titles == first.titles and second.titles


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 10_000),
    st.sampled_from(["", "x", "-", ".", ",", "\n", "\r\n", '"', " ", "nan", "1e400", "\x00"]),
    st.integers(0, 3),
)
def test_damaged_files_give_a_data_error_or_the_same_ratings_on_both_parsers(
    tmp_path_factory, seed, junk, copies
):
    """Any damage to a clean file: the typed parse and the lenient parse (forced by a BOM)
    either both refuse it with a DataError or both read the same ratings."""
    rng = np.random.default_rng(seed)
    rows = synthetic_ratings(n_users=6, n_items=9, per_user=4, seed=seed % 7)
    text = "userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{i},{r:g},{t}\n" for u, i, r, t in rows
    )
    for _ in range(copies):
        at = int(rng.integers(len("userId,movieId,rating,timestamp\n"), len(text) + 1))
        text = text[:at] + junk + text[at:]
    folder = tmp_path_factory.mktemp("damaged")
    plain, bom = folder / "plain.csv", folder / "bom.csv"
    plain.write_bytes(text.encode())
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode())
    outcomes = []
    for path in (plain, bom):
        try:
            outcomes.append(validate.check(readers.read_csv_ratings(path)))
        except DataError:
            outcomes.append(None)
    a, b = outcomes
    if a is None or b is None:
        assert a is None and b is None, "one parser accepted what the other refused"
    else:
        for column in a.columns:
            np.testing.assert_array_equal(a[column].to_numpy(), b[column].to_numpy())


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 10_000),
    st.sampled_from(["", "x", ":", ",", "\n", "\r", " ", "-", "9:", "2005-13-01", "\xff", ",,"]),
    st.integers(1, 3),
    st.booleans(),
)
def test_damaged_netflix_files_give_a_data_error_or_valid_ratings(
    tmp_path_factory, seed, junk, copies, combined
):
    """The Netflix reader has one parser; any damage ends in a DataError naming a file
    and line, or in ratings that pass validation: never another exception."""
    rng = np.random.default_rng(seed)
    folder = tmp_path_factory.mktemp("nf")
    write_netflix(folder, synthetic_ratings(n_users=5, n_items=4, per_user=3, seed=seed % 5),
                  combined=combined)  # fmt: skip
    files = sorted(folder.rglob("*.txt"))
    for _ in range(copies):
        f = files[int(rng.integers(len(files)))]
        text = f.read_text(encoding="latin-1")
        at = int(rng.integers(0, len(text) + 1))
        f.write_text(text[:at] + junk + text[at:], encoding="latin-1")
    try:
        ds = load(str(folder))
    except DataError as exc:
        assert ".txt:" in str(exc) or "Netflix" in str(exc) or "no ratings" in str(exc), exc
    else:
        assert ds.ratings["rating"].between(1, 5).all() and len(ds.ratings) > 0
