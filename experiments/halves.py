"""Two halves of a rating set by user id (odd, even), written as MovieLens folders: stand-ins
for sets a recipe was never tuned on, to re-run a command on each.

    python experiments/halves.py [--data ml-latest-small] --out DIR
    python -m deeprec.blend --topk --data DIR/odd --split user-time --fused

Each half keeps its users' every rating and the titles of the items they rated.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from deeprec.data import load


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="ml-latest-small")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    ds = load(args.data)
    r = ds.ratings
    for name, keep in (("odd", r["user"] % 2 == 1), ("even", r["user"] % 2 == 0)):
        half = r[keep]
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        columns = {"userId": "user", "movieId": "item", "rating": "rating"}
        columns["timestamp"] = "timestamp"
        frame = pd.DataFrame({name: half[column] for name, column in columns.items()})
        frame.to_csv(folder / "ratings.csv", index=False)
        items = sorted(set(half["item"].tolist()))
        names = [ds.titles.get(i, f"item {i}") for i in items]
        titles = pd.DataFrame({"movieId": items, "title": names, "genres": "(no genres listed)"})
        titles.to_csv(folder / "movies.csv", index=False)
        print(f"{folder}: {len(half)} ratings, {half['user'].nunique()} users")


if __name__ == "__main__":
    main()
