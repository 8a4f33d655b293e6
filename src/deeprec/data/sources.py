"""Where datasets come from: names, local folders, the cache and GroupLens downloads.

``--data NAME`` resolves under ``--data-dir``, then ``$DEEPREC_DATA``, then the user
cache; then ml-latest-small comes from the copy shipped inside the package (so the main
job runs offline), and other MovieLens sets are downloaded with pooch (imported only
then), checked, and cached. ``--data PATH`` reads a folder or file as is.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import shutil
import tempfile
import uuid
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from deeprec.data.errors import DataError
from deeprec.digest import file_sha256 as sha256


@dataclass(frozen=True)
class Source:
    """A named dataset: where GroupLens serves it and which file proves it is complete."""

    url: str | None
    ratings_file: str  # relative to the dataset folder
    ratings_sha256: str | None = None  # pinned where known (see README "Datasets")


GROUPLENS = "https://files.grouplens.org/datasets/movielens"
SOURCES: dict[str, Source] = {
    "ml-latest-small": Source(
        f"{GROUPLENS}/ml-latest-small.zip",
        "ratings.csv",
        "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
    ),
    "ml-latest": Source(f"{GROUPLENS}/ml-latest.zip", "ratings.csv"),
    "ml-100k": Source(f"{GROUPLENS}/ml-100k.zip", "u.data"),
    "ml-1m": Source(f"{GROUPLENS}/ml-1m.zip", "ratings.dat"),
    "ml-10m": Source(f"{GROUPLENS}/ml-10m.zip", "ratings.dat"),
    "ml-20m": Source(f"{GROUPLENS}/ml-20m.zip", "ratings.csv"),
    "ml-25m": Source(f"{GROUPLENS}/ml-25m.zip", "ratings.csv"),
    "ml-32m": Source(f"{GROUPLENS}/ml-32m.zip", "ratings.csv"),
    # The Netflix Prize data has no public download; place it by hand.
    "netflix": Source(None, "movie_titles.csv"),
}
# Folder names inside the GroupLens zips when they differ from the dataset name.
_ZIP_FOLDER = {"ml-10m": "ml-10M100K"}


def cache_dir() -> Path:
    """The user cache for downloads: the per-OS cache folder (platformdirs', the one pooch
    uses), or ~/.cache/deeprec. Read from platformdirs itself: importing pooch imports
    tqdm.auto, which warns in a notebook without ipywidgets."""
    try:
        import platformdirs

        return Path(platformdirs.user_cache_dir("deeprec"))
    except ImportError:
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "deeprec"


def search_dirs(data_dir: str | Path | None) -> list[Path]:
    dirs = []
    if data_dir:
        dirs.append(Path(data_dir).expanduser())
    if os.environ.get("DEEPREC_DATA"):
        dirs.append(Path(os.environ["DEEPREC_DATA"]).expanduser())
    dirs.append(cache_dir())
    return dirs


def _hint(data: str) -> str:
    """' (did you mean ...?)' and the known names, for a name that is none of them."""
    from deeprec.data.synthetic import SHAPES

    names = [*sorted(SOURCES), *SHAPES]
    close = difflib.get_close_matches(data.lower(), names, n=1, cutoff=0.6)
    guess = f"; did you mean {close[0]!r}?" if close else ""
    return f"{guess} (known: {', '.join(names)}, synth:USERSxITEMSxRATINGS)"


def resolve(data: str, data_dir: str | Path | None = None, download: bool = True) -> Path:
    """The folder or file holding dataset ``data`` (a known name or a path)."""
    path = Path(data).expanduser()
    if data not in SOURCES:
        if path.exists():
            return path
        raise DataError(
            f"--data {data!r}: no such file or folder, and not a known dataset{_hint(data)}"
        )
    source = SOURCES[data]
    for base in search_dirs(data_dir):
        for name in (data, _ZIP_FOLDER.get(data, data)):
            if (base / name / source.ratings_file).exists():
                return _verified(base / name, source, ours=base == cache_dir())
    if data in BUNDLED:
        return _unpack_bundled(data, source)
    if source.url is None or not download:
        where = search_dirs(data_dir)[0]
        raise DataError(
            f"dataset {data!r} not found: put its files in {where / data}/ "
            f"(e.g. {where / data / source.ratings_file}) or pass --data-dir DIR"
        )
    return _download(data, source, data_dir)


# Sets shipped inside the package (GroupLens licence: redistribution under the same
# conditions, with their README, which the archive holds).
BUNDLED = ("ml-latest-small",)


def _unpack_bundled(name: str, source: Source) -> Path:
    """The shipped copy of ``name``, unpacked once into the user cache (or, where that is
    not writable, a temporary folder) and checked against the pinned sha256 on every use;
    a damaged unpacked copy is replaced from the archive."""
    archive = resources.files("deeprec.bundled") / f"{name}.zip"
    for base in (cache_dir() / "bundled", Path(tempfile.gettempdir()) / "deeprec-bundled"):
        folder = base / name
        ratings = folder / source.ratings_file
        if ratings.exists() and sha256(ratings) == source.ratings_sha256:
            return folder
        try:
            base.mkdir(parents=True, exist_ok=True)
            tmp = base / f".{name}.{uuid.uuid4().hex[:8]}"
            with resources.as_file(archive) as path, zipfile.ZipFile(path) as z:
                z.extractall(tmp)
            replace_folder(tmp / name, folder)  # a damaged copy is replaced
            shutil.rmtree(tmp, ignore_errors=True)
            return _verified(folder, source, ours=True)
        except (OSError, zipfile.BadZipFile):
            continue
    raise DataError(f"cannot unpack the copy of {name} shipped with deeprec")


def replace_folder(ready: Path, folder: Path) -> None:
    """Put the complete folder ``ready`` in place of ``folder`` without readers ever seeing
    half of either: an existing ``folder`` is renamed aside (atomic) and dropped, then
    ``ready`` renamed in. If another process put a whole one there first, theirs stays."""
    if folder.exists():
        old = folder.parent / f".{folder.name}.old.{uuid.uuid4().hex[:8]}"
        with contextlib.suppress(OSError):  # another process moved it already
            folder.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(OSError):
        ready.rename(folder)


def _download(name: str, source: Source, data_dir: str | Path | None) -> Path:
    target = search_dirs(data_dir)[0]
    hint = (
        f"put the files in {target / name}/ (e.g. {target / name / source.ratings_file}), "
        "pass --data-dir DIR, or set DEEPREC_DATA"
    )
    try:
        import pooch
    except ImportError:
        raise DataError(f"dataset {name!r} not found and pooch is not installed: {hint}") from None
    target.mkdir(parents=True, exist_ok=True)
    try:
        # pooch downloads to a temporary file and moves it into place only when complete.
        members = pooch.retrieve(
            source.url,
            known_hash=None,
            path=target,
            fname=f"{name}.zip",
            processor=pooch.Unzip(extract_dir="."),
            progressbar=False,
        )
    except Exception as exc:  # requests/urllib errors differ by version; all mean "no data"
        raise DataError(
            f"could not download {name} from {source.url} ({type(exc).__name__}); {hint}"
        ) from None
    folder = target / _ZIP_FOLDER.get(name, name)
    ratings = folder / source.ratings_file
    if not ratings.exists():
        raise DataError(
            f"download of {name} did not contain {source.ratings_file} ({len(members)} files)"
        )
    return _verified(folder, source, ours=True)


def _verified(folder: Path, source: Source, ours: bool) -> Path:
    """A copy of a dataset with a pinned checksum is checked every time it is used (cheap at
    these sizes) and after every download. A bad copy of ours (cached or just
    downloaded) is moved aside, so the next run downloads it again; a bad copy the user
    pointed at is refused, never read, and kept."""
    ratings = folder / source.ratings_file
    if source.ratings_sha256 is None or sha256(ratings) == source.ratings_sha256:
        return folder
    if ours:
        aside = ratings.with_suffix(ratings.suffix + ".corrupt")
        ratings.replace(aside)
        raise DataError(
            f"{ratings}: sha256 does not match the pinned value; the copy was moved to "
            f"{aside.name} and is downloaded again on the next run"
        )
    raise DataError(
        f"{ratings}: sha256 does not match the pinned value for {folder.name} "
        f"({source.ratings_sha256[:12]}...): not the GroupLens release; use the original file "
        "or pass the folder as a path (--data PATH) to train on it as your own data"
    )
