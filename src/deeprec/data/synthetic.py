"""Synthetic twins of the large rating sets: the real shapes, without the licensed files.

``--data synth-netflix | synth-ml32m | synth-ml20m`` (or ``synth:USERSxITEMSxRATINGS`` for
any size) generates, once, a ratings table with the real set's numbers of users, items and
ratings, and caches it as .npy columns in the user cache; later loads memory-map the cache.
Everything is deterministic given the seed (0).

The shape, and where its parameters come from (public statistics of the real sets,
approximate):
- item popularity: Zipf-Mandelbrot, weight of the r-th most popular item (r + q)^-1, with q
  chosen so the top item holds about the real top item's share of all ratings (Netflix
  ~0.23%, ML-20M and ML-32M ~0.3%); item ids are a random permutation of popularity ranks;
- user activity: log-normal with sigma 1.25 (the real sets' mean/median ratings per user,
  about 2.2), scaled to the exact total; every user has at least 1 (Netflix) or 20
  (MovieLens, as GroupLens filtered) ratings and at most a quarter of the catalog;
- ratings: mu + b_user + b_item + p_user . q_item (rank 8) + noise, rounded to the scale's
  step and clipped (Netflix 1..5, MovieLens 0.5..5 by 0.5; mean ~3.6), so there is
  something to learn: the bias model beats the global mean, and a low-rank model beats that;
- timestamps: each user starts at a random time in a 6-year window and rates over an
  exponential span (mean 200 days), so every split works.

No number from these sets says anything about the real data's accuracy; the README marks
every figure that comes from one.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from deeprec.data.errors import DataError

VERSION = 1  # bump when the generator changes; it is part of the cache key


@dataclass(frozen=True)
class Shape:
    users: int
    items: int
    ratings: int
    scale: tuple[float, float] = (0.5, 5.0)
    step: float = 0.5
    min_per_user: int = 20
    q: float = 45.0  # Zipf-Mandelbrot offset: sets the top item's share


SHAPES = {
    "synth-netflix": Shape(480_189, 17_770, 100_480_507, (1.0, 5.0), 1.0, 1, 80.0),
    "synth-ml32m": Shape(200_948, 87_585, 32_000_204, q=40.0),
    "synth-ml20m": Shape(138_493, 26_744, 20_000_263, q=45.0),
}
CUSTOM = re.compile(r"^synth:(\d+)x(\d+)x(\d+)$")
COLUMNS = ("user", "item", "rating", "timestamp")


def is_synthetic(name: str) -> bool:
    return name in SHAPES or bool(CUSTOM.match(name))


def shape_of(name: str) -> Shape:
    if name in SHAPES:
        return SHAPES[name]
    m = CUSTOM.match(name)
    if not m:
        raise DataError(
            f"unknown synthetic dataset {name!r} (choose from {', '.join(SHAPES)} or "
            "synth:USERSxITEMSxRATINGS)"
        )
    users, items, ratings = (int(g) for g in m.groups())
    if min(users, items, ratings) < 1 or ratings > users * items // 4:
        raise DataError(f"{name}: need users, items, ratings >= 1 and ratings <= users * items / 4")
    # The real sets' offsets are ~0.3% of their catalogs; the same proportion here.
    return Shape(users, items, ratings, min_per_user=1, q=max(1.0, 0.003 * items))


def load(name: str, cache: Path, seed: int = 0) -> tuple[pd.DataFrame, Path]:
    """(ratings table, cache folder): generated on first use, memory-mapped afterwards.

    A cache that is unreadable or of the wrong length is never trusted: it is rebuilt,
    with a one-line notice on stderr.
    """
    shape = shape_of(name)
    folder = cache / "synthetic" / f"{name.replace(':', '-')}-seed{seed}-v{VERSION}"
    if all((folder / f"{c}.npy").exists() for c in COLUMNS):
        columns, problem = _read(folder, shape)
        if columns is not None:
            return _frame(columns), folder
        print(f"deeprec: {folder}: {problem}; rebuilding it", file=sys.stderr)
    _save(folder, generate(shape, seed))
    columns, problem = _read(folder, shape)
    if columns is None:
        raise DataError(f"{folder}: cannot read the synthetic cache just written ({problem})")
    return _frame(columns), folder


def _read(folder: Path, shape: Shape) -> tuple[dict[str, np.ndarray] | None, str]:
    try:
        columns = {c: np.load(folder / f"{c}.npy", mmap_mode="r") for c in COLUMNS}
    except (OSError, ValueError) as exc:
        return None, f"unreadable synthetic cache ({type(exc).__name__})"
    if any(len(a) != shape.ratings or a.ndim != 1 for a in columns.values()):
        return None, "synthetic cache has the wrong length"
    return columns, ""


def _frame(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    return pd.DataFrame({c: np.asarray(columns[c]) for c in COLUMNS}, copy=False)


def _save(folder: Path, columns: dict[str, np.ndarray]) -> None:
    """Each column to a temp file, then renamed: a crash never leaves a half-written cache
    that looks complete, and two processes writing at once both end with whole files."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in columns.items():
        tmp = folder / f".{name}.{np.random.default_rng().integers(1 << 62)}.npy"
        np.save(tmp, array)
        tmp.replace(folder / f"{name}.npy")


def generate(shape: Shape, seed: int = 0) -> dict[str, np.ndarray]:
    """The ratings of ``shape`` as columns sorted by (user, item): int32 user and item ids,
    float32 ratings, int64 Unix timestamps."""
    rng = np.random.default_rng(seed)
    n_u, n_i, total = shape.users, shape.items, shape.ratings
    bar = tqdm(total=5, desc=f"generating {n_u}x{n_i}, {total} ratings", leave=False)
    weights = 1.0 / (np.arange(1, n_i + 1) + shape.q)
    popularity = np.empty(n_i)
    popularity[rng.permutation(n_i)] = weights / weights.sum()
    counts = _user_counts(rng, shape)
    bar.update()
    keys = _distinct_pairs(rng, counts, popularity, n_i)
    bar.update()
    user = (keys // n_i).astype(np.int32)
    item = (keys % n_i).astype(np.int32)
    del keys
    bar.update()
    rating = _ratings(rng, user, item, shape)
    bar.update()
    start = rng.integers(1_000_000_000, 1_000_000_000 + 6 * 365 * 86400, n_u)
    timestamp = start[user] + rng.exponential(200 * 86400, total).astype(np.int64)
    bar.update()
    bar.close()
    return {"user": user, "item": item, "rating": rating, "timestamp": timestamp}


def _user_counts(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """Ratings per user: log-normal, floored at min_per_user, capped, summing to the total."""
    n_u, total = shape.users, shape.ratings
    low = min(shape.min_per_user, total // n_u)
    high = max(low, shape.items // 4)
    activity = rng.lognormal(0.0, 1.25, n_u)
    counts = np.full(n_u, low, dtype=np.int64)
    spare = total - low * n_u
    for _ in range(50):  # pour the spare ratings in proportion to activity, respecting the cap
        room = high - counts
        open_ = room > 0
        if spare <= 0 or not open_.any():
            break
        share = activity * open_
        exact = share / share.sum() * spare
        add = np.floor(exact).astype(np.int64)
        left = int(spare - add.sum())  # largest remainders get one more
        if left > 0:
            add[np.argsort(-(exact - add), kind="stable")[:left]] += 1
        counts += np.minimum(add, room)
        spare = total - counts.sum()
    if counts.sum() != total:
        raise DataError(f"cannot place {total} ratings on {n_u} users x {shape.items} items")
    return counts


def _distinct_pairs(
    rng: np.random.Generator, counts: np.ndarray, popularity: np.ndarray, n_i: int
) -> np.ndarray:
    """Sorted distinct keys user * n_i + item, counts[u] per user, items drawn by popularity.

    Draw with replacement, then redraw the repeats (uniformly after a few rounds, so heavy
    users finish) against the keys already kept: one full sort, then small merges.
    """
    users = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    cdf = np.cumsum(popularity)
    keys = users * n_i + np.minimum(np.searchsorted(cdf, rng.random(len(users))), n_i - 1)
    del users
    keys.sort()
    repeat = np.zeros(len(keys), dtype=bool)
    repeat[1:] = keys[1:] == keys[:-1]
    redo = keys[repeat] // n_i
    kept = keys[~repeat]
    del keys, repeat
    for round_ in range(1000):
        if redo.size == 0:
            return kept
        if round_ < 3:
            items = np.minimum(np.searchsorted(cdf, rng.random(redo.size)), n_i - 1)
        else:
            items = rng.integers(0, n_i, redo.size)
        new = redo * n_i + items
        pos = np.searchsorted(kept, new)
        taken = kept[np.minimum(pos, len(kept) - 1)] == new
        fresh, first = np.unique(new[~taken], return_index=True)
        accepted = np.zeros(redo.size, dtype=bool)
        accepted[np.flatnonzero(~taken)[first]] = True
        kept = np.insert(kept, np.searchsorted(kept, fresh), fresh)
        redo = redo[~accepted]
    raise DataError("synthetic generator did not converge (too many ratings per user)")


def _ratings(
    rng: np.random.Generator, user: np.ndarray, item: np.ndarray, shape: Shape
) -> np.ndarray:
    """mu + b_u + b_i + p_u . q_i + noise, on the scale's grid; in chunks to bound memory."""
    rank = 8
    b_u = rng.normal(0.0, 0.35, shape.users).astype(np.float32)
    b_i = rng.normal(0.0, 0.45, shape.items).astype(np.float32)
    p = rng.normal(0.0, 0.3, (shape.users, rank)).astype(np.float32)
    q = rng.normal(0.0, 0.3, (shape.items, rank)).astype(np.float32)
    lo, hi = shape.scale
    out = np.empty(len(user), dtype=np.float32)
    chunk = 5_000_000
    for s in range(0, len(user), chunk):
        u, i = user[s : s + chunk], item[s : s + chunk]
        x = 3.6 + b_u[u] + b_i[i] + np.einsum("ij,ij->i", p[u], q[i])
        x += rng.normal(0.0, 0.8, len(u)).astype(np.float32)
        out[s : s + chunk] = np.clip(np.round(x / shape.step) * shape.step, lo, hi)
    return out
