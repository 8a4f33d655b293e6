"""Small generated rating files in every layout deeprec reads (for tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def synthetic_ratings(n_users: int = 40, n_items: int = 60, per_user: int = 15, seed: int = 0):
    """(user, item, rating, timestamp) rows with low-rank structure, ids starting at 1."""
    rng = np.random.default_rng(seed)
    u_f = rng.normal(size=(n_users, 3))
    i_f = rng.normal(size=(n_items, 3))
    rows = []
    t = 1_000_000_000
    for u in range(n_users):
        for i in rng.choice(n_items, size=per_user, replace=False):
            score = 3.0 + 0.8 * float(u_f[u] @ i_f[i])
            rating = float(np.clip(np.round(score * 2) / 2, 0.5, 5.0))
            t += int(rng.integers(1, 1000))
            rows.append((u + 1, int(i) + 1, rating, t))
    return rows


def write_movielens_csv(folder: Path, rows=None) -> Path:
    rows = rows if rows is not None else synthetic_ratings()
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["userId,movieId,rating,timestamp"] + [f"{u},{i},{r:g},{t}" for u, i, r, t in rows]
    (folder / "ratings.csv").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    items = sorted({i for _, i, _, _ in rows})
    movies = ["movieId,title,genres"] + [
        f'{i},"Movie {i}, The ({1990 + i % 30})",Drama' for i in items
    ]
    (folder / "movies.csv").write_bytes(("\r\n".join(movies) + "\r\n").encode())
    return folder


def write_ml100k(folder: Path, rows=None) -> Path:
    rows = rows if rows is not None else synthetic_ratings()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text(
        "".join(f"{u}\t{i}\t{int(max(r, 1))}\t{t}\n" for u, i, r, t in rows)
    )
    items = sorted({i for _, i, _, _ in rows})
    (folder / "u.item").write_bytes(
        "".join(f"{i}|Caf\u00e9 {i} (1995)|01-Jan-1995||http://x|0|1\n" for i in items).encode(
            "latin-1"
        )
    )
    return folder


def write_ml1m(folder: Path, rows=None) -> Path:
    rows = rows if rows is not None else synthetic_ratings()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text(
        "".join(f"{u}::{i}::{int(max(r, 1))}::{t}\n" for u, i, r, t in rows)
    )
    items = sorted({i for _, i, _, _ in rows})
    (folder / "movies.dat").write_bytes(
        "".join(f"{i}::Film {i} (1999)::Drama\n" for i in items).encode("latin-1")
    )
    return folder


def write_netflix(folder: Path, rows=None, combined: bool = False) -> Path:
    import datetime as dt

    rows = rows if rows is not None else synthetic_ratings()
    folder.mkdir(parents=True, exist_ok=True)
    by_item: dict[int, list] = {}
    for u, i, r, t in rows:
        by_item.setdefault(i, []).append(
            (u, int(max(r, 1)), dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d"))
        )
    blocks = {
        i: f"{i}:\n" + "".join(f"{u},{r},{d}\n" for u, r, d in v)
        for i, v in sorted(by_item.items())
    }
    if combined:
        (folder / "combined_data_1.txt").write_text("".join(blocks.values()))
    else:
        (folder / "training_set").mkdir(exist_ok=True)
        for i, text in blocks.items():
            (folder / "training_set" / f"mv_{i:07d}.txt").write_text(text)
    (folder / "movie_titles.csv").write_bytes(
        "".join(f"{i},2001,Show {i}, Part {i}\n" for i in blocks).encode("latin-1")
    )
    return folder
