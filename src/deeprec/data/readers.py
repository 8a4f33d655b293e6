"""Readers for the rating-file layouts deeprec understands.

Each reader returns a ``Ratings``: a DataFrame with columns user, item, rating and (when
the layout has one) timestamp, where every row knows its file and 1-based line (for error
messages), and the titles of the items when the layout ships them. ``validate.check``
decides what is acceptable.

Two parsers, one contract. Clean files (the GroupLens and Netflix releases, anything a
program wrote) go through pyarrow's multi-threaded CSV reader straight into typed columns:
no Python per-row loop and no Python string per field, so a 32M-row file parses in seconds
in a few hundred MiB. A file pyarrow cannot type (a stray word, a decimal comma, a byte-order
mark, blank lines) is read again by the lenient pandas parser, which keeps every field as
text so that validation can quote the first bad one with its line.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
from tqdm import tqdm

from deeprec.data.errors import DataError
from deeprec.errors import read_bytes


@dataclass
class Ratings:
    """Ratings as read from disk, before validation.

    Row i is on line ``lines[i]`` (or ``first_line + i`` when ``lines`` is None: a file
    parsed without skipping anything) of ``files[file_of[i]]`` (or of ``path``).
    """

    frame: pd.DataFrame  # user, item, rating[, timestamp]: text or numbers
    path: Path
    titles: dict[int, str] = field(default_factory=dict)
    scale: tuple[float, float] | None = None  # the dataset's rating scale, if known
    lines: np.ndarray | None = None
    first_line: int = 1
    files: list[Path] = field(default_factory=list)
    file_of: np.ndarray | None = None

    def where(self, row: int) -> str:
        """'file:line' of row ``row`` (a position in ``frame``)."""
        line = int(self.lines[row]) if self.lines is not None else self.first_line + row
        path = self.files[int(self.file_of[row])] if self.file_of is not None else self.path
        return f"{path}:{line}"


_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def _read_text(path: Path, encoding: str = "utf-8") -> str:
    """The file's text. A byte-order mark (spreadsheets save UTF-8 CSV with one, and
    "Unicode text" exports as UTF-16) picks the encoding and is dropped."""
    raw = read_bytes(path, DataError, str(path))
    for bom, codec in _BOMS:
        if raw.startswith(bom):
            encoding = codec
            break
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not readable as {encoding} (byte {exc.start}: {exc.reason})"
        ) from None


def _head(path: Path, size: int = 4096) -> bytes:
    """The first bytes of a file (enough for its header line), or a DataError."""
    return read_bytes(path, DataError, str(path), size)


def _frame(
    text: str, path: Path, sep: str, names: list[str], header: bool
) -> tuple[pd.DataFrame, np.ndarray]:
    """(string columns ``names``, 1-based line of each row) with pandas' C parser.

    Blank lines are kept while parsing so that the line numbers are true, then dropped.
    Missing trailing fields become "".
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
    lines = np.arange(1 + int(header), len(frame) + 1 + int(header))
    keep = (frame != "").any(axis=1).to_numpy()
    frame, lines = frame[keep], lines[keep]
    if frame.empty:
        raise DataError(f"{path}: no ratings (only a header line)")
    if frame.shape[1] < len(names):
        raise DataError(
            f"{path}:{lines[0]}: expected {len(names)} fields ({', '.join(names)}), "
            f"found {frame.shape[1]}"
        )
    out = frame.iloc[:, : len(names)].copy()
    out.columns = names
    return out.reset_index(drop=True), lines


# Column types of the typed (pyarrow) parse. Integer ids and timestamps that do not parse
# as int64 (1.0, 1.5e9) fall back to the lenient parser, which accepts what it can.
_TYPES = {
    "user": pa.int64(),
    "item": pa.int64(),
    "rating": pa.float64(),
    "timestamp": pa.int64(),
    "validation": pa.int64(),
}


def _typed_csv(
    source, names: dict[str, int], n_fields: int, sep: str, skip: int
) -> pd.DataFrame | None:
    """Columns ``names`` (name -> field position) of a delimited file as typed numpy
    columns, or None when pyarrow cannot type every row (the caller then falls back to the
    lenient parser). Empty lines are not skipped, so a file that parses has row i on line
    skip + 1 + i. Only an empty field is missing."""
    fields = [f"c{i}" for i in range(n_fields)]
    try:
        table = pv.read_csv(
            source,
            read_options=pv.ReadOptions(column_names=fields, skip_rows=skip, block_size=1 << 24),
            parse_options=pv.ParseOptions(delimiter=sep, ignore_empty_lines=False),
            convert_options=pv.ConvertOptions(
                include_columns=[fields[i] for i in names.values()],
                column_types={fields[i]: _TYPES[n] for n, i in names.items()},
                null_values=[""],
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError):
        return None
    if table.num_rows == 0:
        return None
    columns = {}
    for name, i in names.items():
        column = table[fields[i]]
        if column.null_count:  # a missing field: the lenient parse names the line
            return None
        columns[name] = column.to_numpy()
        if columns[name].dtype.kind == "f" and np.isnan(columns[name]).any():
            return None  # refused either way; the lenient parse quotes the text as written
    return pd.DataFrame(columns, copy=False)


_USER_COLS = ("user", "userid", "user_id", "customer", "customerid", "customer_id")
_ITEM_COLS = ("item", "itemid", "item_id", "movie", "movieid", "movie_id")
_RATING_COLS = ("rating", "score", "stars")
_TIME_COLS = ("timestamp", "time", "date", "ts")
_VALIDATION_COLS = ("validation",)  # 1: a held-out rating (--split given), 0: training


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
    """Any CSV with a header naming user, item, rating[, timestamp][, validation] (MovieLens
    names accepted; validation 0/1 marks the held-out ratings of ``--split given``).

    Also what spreadsheets save: a UTF-8 byte-order mark or UTF-16, CRLF or CR line
    ends, quoted fields, ';' or tab delimiters, and with ';' a decimal comma (4,5).
    """
    head = _head(path)
    codec = next((c for b, c in _BOMS if head.startswith(b)), None)
    first = head.decode(codec or "utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    if not first.strip():
        raise DataError(f"{path}: file is empty")
    header, sep = _header(first.split("\n", 1)[0])

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

    cols = {"user": pick(_USER_COLS, "user"), "item": pick(_ITEM_COLS, "item")}
    cols["rating"] = pick(_RATING_COLS, "rating")
    t = pick(_TIME_COLS, "timestamp", required=False)
    if t is not None:
        cols["timestamp"] = t
    v = pick(_VALIDATION_COLS, "validation", required=False)
    if v is not None:
        cols["validation"] = v
    titles = read_movielens_titles(titles_path) if titles_path is not None else {}
    typed = None
    if codec is None and sep != ";" and b"\r" not in head.replace(b"\r\n", b""):
        typed = _typed_csv(str(path), cols, len(header), sep, skip=1)
    if typed is not None:
        return Ratings(typed, path, titles, first_line=2)
    text = _read_text(path).replace("\r\n", "\n").replace("\r", "\n")
    raw, lines = _frame(text, path, sep, [f"c{i}" for i in range(max(cols.values()) + 1)], True)
    frame = pd.DataFrame({n: raw[f"c{i}"] for n, i in cols.items()})
    if sep == ";":  # a decimal-comma locale writes 4,5 for 4.5
        frame["rating"] = frame["rating"].str.replace(",", ".", regex=False)
    return Ratings(frame, path, titles, lines=lines)


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


_FOUR = ["user", "item", "rating", "timestamp"]


def _read_delimited(path: Path, sep: str) -> Ratings:
    """A header-less user<sep>item<sep>rating<sep>timestamp file (ml-100k, ml-1m, ml-10m)."""
    head = _head(path)
    if not head.strip():
        raise DataError(f"{path}: file is empty")
    typed = None
    if len(sep) == 1 and not any(head.startswith(b) for b, _ in _BOMS):
        typed = _typed_csv(str(path), {n: i for i, n in enumerate(_FOUR)}, 4, sep, skip=0)
    elif len(sep) > 1 and not any(head.startswith(b) for b, _ in _BOMS):
        # '::' is two delimiters with an empty field between them to pyarrow.
        first = sep[0]
        n_fields = head.split(b"\n", 1)[0].decode("utf-8", "replace").count(first) + 1
        if n_fields == 7:
            typed = _typed_csv(str(path), {n: 2 * i for i, n in enumerate(_FOUR)}, 7, first, 0)
    if typed is not None:
        return Ratings(typed, path)
    frame, lines = _frame(_read_text(path), path, sep, _FOUR, False)
    return Ratings(frame, path, lines=lines)


def read_ml100k(folder: Path) -> Ratings:
    """ml-100k: u.data (tab-separated user item rating timestamp), u.item (Latin-1, '|')."""
    r = _read_delimited(folder / "u.data", "\t")
    item_file = folder / "u.item"
    r.titles = _id_titles(_read_text(item_file, "latin-1"), "|") if item_file.exists() else {}
    r.scale = (1.0, 5.0)
    return r


def read_ml_dat(folder: Path) -> Ratings:
    """ml-1m / ml-10m: ratings.dat and movies.dat with '::' separators."""
    r = _read_delimited(folder / "ratings.dat", "::")
    movies = folder / "movies.dat"
    if movies.exists():
        raw = movies.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # ml-1m's movies.dat is Latin-1
            text = raw.decode("latin-1")
        r.titles = _id_titles(text, "::")
    r.scale = (1.0, 5.0) if folder.name.lower().startswith("ml-1m") else (0.5, 5.0)
    return r


# ------------------------------------------------------------------------------ Netflix
_NETFLIX_CHUNK = 256 << 20  # bytes parsed together: bounds one parse's memory
_LONE_CR = re.compile(rb"\r(?!\n)")


def read_netflix(folder: Path) -> Ratings:
    """Netflix Prize: training_set/mv_*.txt or combined_data_*.txt, plus movie_titles.csv.

    Each block starts with "MovieID:" and holds "CustomerID,Rating,Date" lines. Files are
    parsed in groups of about 256 MiB (the 17,770 small mv_*.txt files together, each big
    combined file alone), every line as one Arrow string, then split and typed with Arrow
    compute kernels; a line that does not fit is named with its file and line.
    """
    files = sorted((folder / "training_set").glob("mv_*.txt")) or sorted(
        folder.glob("combined_data_*.txt")
    )
    if not files:
        raise DataError(
            f"{folder}: no Netflix ratings (expected training_set/mv_*.txt or combined_data_*.txt)"
        )
    sizes = [f.stat().st_size for f in files]
    parts = []
    with tqdm(
        total=sum(sizes), unit="B", unit_scale=True, desc="reading Netflix", delay=2, leave=False
    ) as bar:
        group: list[int] = []
        pending = 0
        for k, size in enumerate(sizes):
            group.append(k)
            pending += size
            if pending >= _NETFLIX_CHUNK or k == len(files) - 1:
                parts.append(_netflix_group(files, group))
                bar.update(pending)
                group, pending = [], 0
    frame = pd.concat([p[0] for p in parts], ignore_index=True)
    if frame.empty:
        raise DataError(f"{folder}: no ratings (the Netflix files hold no CustomerID lines)")
    lines = np.concatenate([p[1] for p in parts])
    file_of = np.concatenate([p[2] for p in parts])
    titles = {}
    title_file = folder / "movie_titles.csv"
    if title_file.exists():
        for line in _read_text(title_file, "latin-1").splitlines():
            fields = line.split(",", 2)
            if len(fields) == 3 and fields[0].strip().isdigit():
                year = fields[1].strip()
                titles[int(fields[0])] = (
                    f"{fields[2].strip()} ({year})" if year.isdigit() else fields[2]
                )
    path = files[0] if len(files) == 1 else folder
    return Ratings(frame, path, titles, (1.0, 5.0), lines, 1, files, file_of)


def _netflix_group(
    files: list[Path], group: list[int]
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(typed ratings, line of each, index into files of each) for files[group]."""
    chunks, counts = [], []
    for i in group:
        try:
            data = files[i].read_bytes()
        except OSError as exc:
            raise DataError(f"{files[i]}: cannot read ({exc.strerror})") from None
        lone = _LONE_CR.search(data)
        if lone is not None:  # pyarrow would end a line there; our line count would not
            line = data.count(b"\n", 0, lone.start()) + 1
            raise DataError(
                f"{files[i]}:{line}: a line ends with a lone carriage return (\\r); "
                "save the file with \\n or \\r\\n line ends"
            )
        if data and not data.endswith(b"\n"):
            data += b"\n"
        chunks.append(data)
        counts.append(data.count(b"\n"))
    starts = np.cumsum([0, *counts])  # first global line of each file
    where = _Where(files, group, starts)
    try:
        table = pv.read_csv(
            pa.BufferReader(b"".join(chunks)),
            read_options=pv.ReadOptions(column_names=["line"], encoding="latin-1"),
            parse_options=pv.ParseOptions(
                delimiter="\x1f", quote_char=False, ignore_empty_lines=False
            ),
            convert_options=pv.ConvertOptions(column_types={"line": pa.string()}),
        )
    except pa.ArrowInvalid as exc:
        raise DataError(f"{where.file(0)}: unreadable ({str(exc).splitlines()[0]})") from None
    del chunks
    text = pc.utf8_trim_whitespace(table["line"])
    del table
    n = len(text)
    if n != starts[-1]:  # a file that pyarrow split differently than newlines (\r alone)
        raise DataError(f"{where.file(0)}: unexpected line ends (expected \\n)")
    empty = pc.equal(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False)
    header = pc.ends_with(text, ":").to_numpy(zero_copy_only=False)
    # The item of each line: the id of the last "MovieID:" line above it, in its own file.
    last = np.maximum.accumulate(np.where(header, np.arange(n), -1))
    # a header in an earlier file does not count: the line's own file must have one above it
    file_start = np.repeat(starts[:-1], counts)
    rating_rows = np.flatnonzero(~header & ~empty)
    orphan = rating_rows[last[rating_rows] < file_start[rating_rows]]
    if orphan.size:
        raise DataError(f"{where.line(orphan[0])}: rating line before any 'MovieID:' line")
    heads = np.flatnonzero(header)
    movie_text = pc.utf8_trim_whitespace(
        pc.utf8_slice_codeunits(pc.take(text, pa.array(heads)), 0, -1)
    )
    movies = _ints(movie_text, lambda k: where.line(heads[k]), "MovieID")
    movie_of = np.zeros(n, dtype=np.int64)
    movie_of[heads] = movies
    items = movie_of[last[rating_rows]]
    fields = pc.split_pattern(pc.take(text, pa.array(rating_rows)), ",")
    del text
    wrong = np.flatnonzero(pc.list_value_length(fields).to_numpy(zero_copy_only=False) != 3)
    if wrong.size:
        bad = ",".join(fields[int(wrong[0])].as_py())
        raise DataError(
            f"{where.line(rating_rows[wrong[0]])}: expected CustomerID,Rating,Date, found "
            f"{bad[:60]!r}"
        )
    at = lambda k: where.line(rating_rows[k])  # noqa: E731
    users = _ints(pc.list_element(fields, 0), at, "CustomerID")
    ratings = _floats(pc.list_element(fields, 1), at, "rating")
    dates = pc.list_element(fields, 2)
    del fields
    stamps = pc.strptime(dates, format="%Y-%m-%d", unit="s", error_is_null=True)
    if stamps.null_count:
        k = int(np.flatnonzero(pc.is_null(stamps).to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{at(k)}: date {dates[k].as_py()!r} is not YYYY-MM-DD")
    frame = pd.DataFrame(
        {
            "user": users,
            "item": items,
            "rating": ratings,
            "timestamp": stamps.cast(pa.int64()).to_numpy(zero_copy_only=False),
        },
        copy=False,
    )
    file_index = np.searchsorted(starts, rating_rows, side="right") - 1
    lines = (rating_rows - starts[file_index] + 1).astype(np.int32)
    return frame, lines, np.asarray(group, dtype=np.int32)[file_index]


@dataclass
class _Where:
    """Global line positions of a group of concatenated files -> 'file:line'."""

    files: list[Path]
    group: list[int]
    starts: np.ndarray

    def file(self, k: int) -> Path:
        return self.files[self.group[k]]

    def line(self, row: int) -> str:
        k = int(np.searchsorted(self.starts, row, side="right") - 1)
        return f"{self.file(k)}:{row - self.starts[k] + 1}"


def _ints(strings, where, what: str) -> np.ndarray:
    """Arrow strings of non-negative integers -> int64, or a DataError naming the first bad one."""
    ok = pc.match_substring_regex(strings, r"^\s*\d{1,18}\s*$").to_numpy(zero_copy_only=False)
    if not ok.all():
        k = int(np.flatnonzero(~ok)[0])
        raise DataError(f"{where(k)}: {what} {strings[k].as_py()!r} is not an integer id")
    return pc.cast(pc.utf8_trim_whitespace(strings), pa.int64()).to_numpy(zero_copy_only=False)


def _floats(strings, where, what: str) -> np.ndarray:
    """Arrow strings of numbers -> float64, or a DataError naming the first bad one."""
    try:
        return pc.cast(pc.utf8_trim_whitespace(strings), pa.float64()).to_numpy(
            zero_copy_only=False
        )
    except pa.ArrowInvalid:
        values = pd.to_numeric(pd.Series(strings.to_numpy(zero_copy_only=False)), errors="coerce")
        k = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise DataError(f"{where(k)}: {what} {strings[k].as_py()!r} is not a number") from None


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


def source_files(path: Path) -> list[Path]:
    """The files a read of ``path`` (as detect_and_read sees it) depends on, for cache keys."""
    if path.is_file():
        extra = [path.parent / n for n in ("movies.csv", "u.item", "movies.dat")]
        return [path, *[p for p in extra if p.exists() and p.name != path.name]]
    names = (
        "ratings.csv",
        "movies.csv",
        "u.data",
        "u.item",
        "ratings.dat",
        "movies.dat",
        "movie_titles.csv",
    )
    found = [path / n for n in names if (path / n).exists()]
    found += sorted((path / "training_set").glob("mv_*.txt")) or sorted(
        path.glob("combined_data_*.txt")
    )
    return found
