"""Readers for the rating-file layouts deeprec understands.

Each reader returns a ``Ratings``: a DataFrame with columns user, item, rating and
(when the layout has one) timestamp, plus ``line`` (the 1-based line in the file,
for error messages), and the titles of the items when the layout ships them.
Values are parsed leniently here; ``validate.check`` decides what is acceptable.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from deeprec.data.errors import DataError


@dataclass
class Ratings:
    """Ratings as read from disk, before validation."""

    frame: pd.DataFrame  # user, item, rating[, timestamp], line
    path: Path
    titles: dict[int, str] = field(default_factory=dict)
    scale: tuple[float, float] | None = None  # the dataset's rating scale, if known


_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def _read_text(path: Path, encoding: str = "utf-8") -> str:
    """The file's text. A byte-order mark (spreadsheets save UTF-8 CSV with one, and
    "Unicode text" exports as UTF-16) picks the encoding and is dropped."""
    try:
        raw = path.read_bytes()
        for bom, codec in _BOMS:
            if raw.startswith(bom):
                encoding = codec
                break
        return raw.decode(encoding)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not readable as {encoding} (byte {exc.start}: {exc.reason})"
        ) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None


def _frame(text: str, path: Path, sep: str, names: list[str], header: bool) -> pd.DataFrame:
    """Parse delimited text into string columns with pandas' C parser.

    Blank lines are kept while parsing so that ``line`` is the true 1-based line
    number of each row, then dropped. Missing trailing fields become "".
    """
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    if len(sep) > 1:  # '::' layouts: map the separator to one unused character
        text, sep = text.replace(sep, "\x1f"), "\x1f"
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            sep=sep,
            header=None,
            skiprows=1 if header else 0,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
            index_col=False,
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: no ratings (only a header line)") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: {str(exc).strip().splitlines()[-1]}") from None
    frame["line"] = np.arange(1 + int(header), len(frame) + 1 + int(header))
    data = frame.drop(columns="line")
    frame = frame[(data != "").any(axis=1)]
    if frame.empty:
        raise DataError(f"{path}: no ratings (only a header line)")
    if data.shape[1] < len(names):
        raise DataError(
            f"{path}:{frame['line'].iloc[0]}: expected {len(names)} fields "
            f"({', '.join(names)}), found {data.shape[1]}"
        )
    out = frame.iloc[:, : len(names)].copy()
    out.columns = names
    out["line"] = frame["line"].to_numpy()
    return out.reset_index(drop=True)


_USER_COLS = ("user", "userid", "user_id", "customer", "customerid", "customer_id")
_ITEM_COLS = ("item", "itemid", "item_id", "movie", "movieid", "movie_id")
_RATING_COLS = ("rating", "score", "stars")
_TIME_COLS = ("timestamp", "time", "date", "ts")


def _header(line: str) -> tuple[list[str], str]:
    """(lower-cased column names, delimiter) of a header line.

    Spreadsheets write ',' or, in locales with a decimal comma, ';'; tab-separated
    exports are common too. Names may be quoted and padded.
    """
    best: tuple[list[str], str] = ([], ",")
    for sep in (",", ";", "\t"):
        names = [
            h.strip().strip('"').strip().lower() for h in next(csv.reader([line], delimiter=sep))
        ]
        if len(names) > len(best[0]):
            best = (names, sep)
    return best


def read_csv_ratings(path: Path, titles_path: Path | None = None) -> Ratings:
    """Any CSV with a header naming user, item, rating[, timestamp] (MovieLens names accepted).

    Also what spreadsheets save: a UTF-8 byte-order mark or UTF-16, CRLF or CR line
    ends, quoted fields, ';' or tab delimiters, and with ';' a decimal comma (4,5).
    """
    text = _read_text(path).replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    header, sep = _header(text.split("\n", 1)[0])

    def pick(options: tuple[str, ...], what: str, required: bool = True) -> int | None:
        for i, h in enumerate(header):
            if h in options:
                return i
        if required:
            raise DataError(
                f"{path}:1: header {','.join(header)!r} has no {what} column "
                f"(expected one of {', '.join(options)})"
            )
        return None

    cols = [pick(_USER_COLS, "user"), pick(_ITEM_COLS, "item"), pick(_RATING_COLS, "rating")]
    t = pick(_TIME_COLS, "timestamp", required=False)
    names = ["user", "item", "rating"] + (["timestamp"] if t is not None else [])
    order = cols + ([t] if t is not None else [])
    raw = _frame(text, path, sep, [f"c{i}" for i in range(max(order) + 1)], header=True)
    frame = pd.DataFrame({n: raw[f"c{i}"] for n, i in zip(names, order, strict=True)})
    if sep == ";":  # a decimal-comma locale writes 4,5 for 4.5
        frame["rating"] = frame["rating"].str.replace(",", ".", regex=False)
    frame["line"] = raw["line"]
    titles = read_movielens_titles(titles_path) if titles_path is not None else {}
    return Ratings(frame, path, titles)


def read_movielens_titles(path: Path) -> dict[int, str]:
    """movies.csv (movieId,title,genres; titles may be quoted and hold commas)."""
    try:
        movies = pd.read_csv(path, usecols=[0, 1], dtype={0: "int64", 1: "string"})
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable titles file ({str(exc).splitlines()[0]})") from None
    return dict(zip(movies.iloc[:, 0].tolist(), movies.iloc[:, 1].fillna("").tolist(), strict=True))


def read_movielens_csv(folder: Path) -> Ratings:
    """ml-latest(-small), ml-20m, ml-25m, ml-32m: ratings.csv + movies.csv."""
    movies = folder / "movies.csv"
    r = read_csv_ratings(folder / "ratings.csv", movies if movies.exists() else None)
    r.scale = (0.5, 5.0)
    return r


def _id_titles(text: str, sep: str) -> dict[int, str]:
    """{id: title} from lines "id<sep>title<sep>..." (ml-100k u.item, ml-1m/10m movies.dat)."""
    titles = {}
    for line in text.splitlines():
        parts = line.split(sep)
        if len(parts) > 1 and parts[0].strip().isdigit():
            titles[int(parts[0])] = parts[1]
    return titles


def read_ml100k(folder: Path) -> Ratings:
    """ml-100k: u.data (tab-separated user item rating timestamp), u.item (Latin-1, '|')."""
    path = folder / "u.data"
    frame = _frame(_read_text(path), path, "\t", ["user", "item", "rating", "timestamp"], False)
    item_file = folder / "u.item"
    titles = _id_titles(_read_text(item_file, "latin-1"), "|") if item_file.exists() else {}
    return Ratings(frame, path, titles, (1.0, 5.0))


def read_ml_dat(folder: Path) -> Ratings:
    """ml-1m / ml-10m: ratings.dat and movies.dat with '::' separators."""
    path = folder / "ratings.dat"
    frame = _frame(_read_text(path), path, "::", ["user", "item", "rating", "timestamp"], False)
    titles = {}
    movies = folder / "movies.dat"
    if movies.exists():
        raw = movies.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # ml-1m's movies.dat is Latin-1
            text = raw.decode("latin-1")
        titles = _id_titles(text, "::")
    scale = (1.0, 5.0) if folder.name.lower().startswith("ml-1m") else (0.5, 5.0)
    return Ratings(frame, path, titles, scale)


_MOVIE_LINE = re.compile(r"^\s*(\d+)\s*:\s*$")


def read_netflix(folder: Path) -> Ratings:
    """Netflix Prize: training_set/mv_*.txt or combined_data_*.txt, plus movie_titles.csv.

    Each block starts with "MovieID:" and holds "CustomerID,Rating,Date" lines.
    """
    files = sorted((folder / "training_set").glob("mv_*.txt")) or sorted(
        folder.glob("combined_data_*.txt")
    )
    if not files:
        raise DataError(
            f"{folder}: no Netflix ratings (expected training_set/mv_*.txt or combined_data_*.txt)"
        )
    frames = []
    for path in files:
        text = _read_text(path, "latin-1")
        users, items, ratings, dates, lines = [], [], [], [], []
        movie = None
        for lineno, line in enumerate(io.StringIO(text), start=1):
            line = line.strip()
            if not line:
                continue
            m = _MOVIE_LINE.match(line)
            if m:
                movie = int(m.group(1))
                continue
            if movie is None:
                raise DataError(f"{path}:{lineno}: rating line before any 'MovieID:' line")
            parts = line.split(",")
            if len(parts) != 3:
                raise DataError(
                    f"{path}:{lineno}: expected CustomerID,Rating,Date, found {line[:60]!r}"
                )
            users.append(parts[0])
            items.append(movie)
            ratings.append(parts[1])
            dates.append(parts[2])
            lines.append(lineno)
        frame = pd.DataFrame(
            {"user": users, "item": items, "rating": ratings, "date": dates, "line": lines}
        )
        frame["source"] = str(path)
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    stamps = pd.to_datetime(frame.pop("date"), format="%Y-%m-%d", errors="coerce")
    frame["timestamp"] = (stamps - pd.Timestamp("1970-01-01")) // pd.Timedelta(seconds=1)
    bad = frame["timestamp"].isna()
    if bad.any():
        row = frame[bad].iloc[0]
        raise DataError(f"{row['source']}:{row['line']}: date is not YYYY-MM-DD")
    titles = {}
    title_file = folder / "movie_titles.csv"
    if title_file.exists():
        for line in _read_text(title_file, "latin-1").splitlines():
            parts = line.split(",", 2)
            if len(parts) == 3 and parts[0].strip().isdigit():
                year = parts[1].strip()
                titles[int(parts[0])] = (
                    f"{parts[2].strip()} ({year})" if year.isdigit() else parts[2]
                )
    return Ratings(frame, files[0] if len(files) == 1 else folder, titles, (1.0, 5.0))


def detect_and_read(path: Path) -> Ratings:
    """Read a dataset folder (any layout above) or a single ratings CSV."""
    if path.is_file():
        if path.name == "u.data":
            return read_ml100k(path.parent)
        if path.name == "ratings.dat":
            return read_ml_dat(path.parent)
        if path.name == "ratings.csv" and (path.parent / "movies.csv").exists():
            return read_movielens_csv(path.parent)
        return read_csv_ratings(path)
    if (path / "ratings.csv").exists():
        return read_movielens_csv(path)
    if (path / "u.data").exists():
        return read_ml100k(path)
    if (path / "ratings.dat").exists():
        return read_ml_dat(path)
    if (path / "training_set").is_dir() or list(path.glob("combined_data_*.txt")):
        return read_netflix(path)
    raise DataError(
        f"{path}: no ratings found (expected ratings.csv, u.data, ratings.dat, "
        "training_set/ or combined_data_*.txt)"
    )
