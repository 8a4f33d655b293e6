"""A binary cache of validated ratings, so a large set is parsed once.

The first load of a large ratings source (32 MiB or more of files; ``DEEPREC_PARSE_CACHE=1``
caches every source, ``=0`` none) writes the validated columns as .npy files, with the
item titles and rating scale, under the user cache (``<cache>/parsed/``). Later loads
memory-map them: a 100M-rating set is back in about a second instead of a minute.

The cache is keyed by the source: every file's name, size and content (XXH3-128 of the
whole file, memory-mapped: an edit that keeps the size and restores the modification time,
as rsync -t, cp -p or a tar extraction make, is still seen), the scale asked for, and this
format's version. XXH3 is a fingerprint at memory speed, not a security check. A cache
whose key differs (stale) or whose columns fail their CRC-32 (corrupt, truncated) is never
used: it is rebuilt, with a one-line notice.
Writes go to a private temporary folder renamed into place, so readers never see half a
cache and two processes writing at once both end with a whole one.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import sys
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deeprec.data.sources import replace_folder

FORMAT = 1  # bump when the cached layout or the validation rules change
MIN_BYTES = 32 << 20


@dataclass
class Parsed:
    """What a load produces: the validated ratings, the titles and the scale (if known)."""

    ratings: pd.DataFrame
    titles: dict[int, str]
    scale: tuple[float, float] | None


def wanted(files: list[Path]) -> bool:
    """Cache this source? By size, unless DEEPREC_PARSE_CACHE says 0 or 1."""
    setting = os.environ.get("DEEPREC_PARSE_CACHE", "").strip()
    if setting in ("0", "1"):
        return setting == "1"
    return sum(f.stat().st_size for f in files) >= MIN_BYTES


def key(path: Path, files: list[Path], scale: tuple[float, float] | None) -> dict:
    """What identifies a parse: the source files as they are now, and how we read them."""
    base = path.parent if path.is_file() else path  # a single-file source: its siblings too
    return {
        "format": FORMAT,
        "source": str(path.resolve()),
        "scale": list(scale) if scale is not None else None,
        "files": [[str(f.relative_to(base)), f.stat().st_size, fingerprint(f)] for f in files],
    }


def fingerprint(path: Path) -> str:
    """XXH3-128 of the file's whole content."""
    import xxhash  # deferred: only a cached (large) source needs it

    if path.stat().st_size == 0:
        return xxhash.xxh3_128(b"").hexdigest()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
        return xxhash.xxh3_128(view).hexdigest()


def folder_for(root: Path, path: Path) -> Path:
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    return root / "parsed" / f"{path.name}-{digest}"


def load(folder: Path, source_key: dict, parse: Callable[[], Parsed]) -> Parsed:
    """The cached parse in ``folder`` if it is whole and current, else ``parse()``, cached."""
    problem = "not cached yet"
    if (folder / "meta.json").exists():
        hit, problem = _read(folder, source_key)
        if hit is not None:
            return hit
        print(f"deeprec: {folder}: {problem}; parsing the source again", file=sys.stderr)
    parsed = parse()
    try:
        _write(folder, source_key, parsed)
    except OSError as exc:  # a read-only or full cache costs speed, not the run
        print(f"deeprec: could not cache the parse in {folder} ({exc.strerror})", file=sys.stderr)
    return parsed


def _read(folder: Path, source_key: dict) -> tuple[Parsed | None, str]:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None, "unreadable cache index"
    if not isinstance(meta, dict) or meta.get("key") != source_key:
        return None, "the source changed since it was cached (stale cache)"
    try:
        if not isinstance(meta.get("columns"), dict) or not isinstance(meta.get("rows"), int):
            return None, "cache index of the wrong shape (corrupt cache)"
        columns = {}
        for name, want in meta["columns"].items():
            array = np.load(folder / f"{name}.npy", mmap_mode="r")
            if array.ndim != 1 or len(array) != meta["rows"] or str(array.dtype) != want["dtype"]:
                return None, f"cached column {name} has the wrong shape or type (corrupt cache)"
            if zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B")) != want["crc32"]:
                return None, f"cached column {name} fails its checksum (corrupt cache)"
            columns[name] = array.view(np.ndarray)  # still mapped, as a plain array
        titles = json.loads((folder / "titles.json").read_text())
        if not isinstance(titles, dict) or not all(isinstance(v, str) for v in titles.values()):
            return None, "cached titles of the wrong shape (corrupt cache)"
        titles = {int(k): v for k, v in titles.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, f"unreadable cache ({type(exc).__name__})"
    scale = tuple(meta["scale"]) if meta["scale"] is not None else None
    return Parsed(pd.DataFrame(columns, copy=False), titles, scale), ""


def _write(folder: Path, source_key: dict, parsed: Parsed) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        columns = {}
        for name in parsed.ratings.columns:
            array = np.ascontiguousarray(parsed.ratings[name].to_numpy())
            np.save(tmp / f"{name}.npy", array)
            columns[name] = {
                "dtype": str(array.dtype),
                "crc32": zlib.crc32(memoryview(array).cast("B")),
            }
        (tmp / "titles.json").write_text(json.dumps({str(k): v for k, v in parsed.titles.items()}))
        meta = {
            "key": source_key,
            "rows": len(parsed.ratings),
            "columns": columns,
            "scale": list(parsed.scale) if parsed.scale is not None else None,
        }
        (tmp / "meta.json").write_text(json.dumps(meta))  # written last: marks it whole
        replace_folder(tmp, folder)  # a stale or corrupt cache is replaced
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
