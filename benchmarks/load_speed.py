"""Parse rate per file layout, and the cached load, on generated files of ~10M ratings.

    python benchmarks/load_speed.py [--rows 10000000] [--out DIR]

Writes each layout deeprec reads (MovieLens CSV, ml-1m '::', ml-100k tab, Netflix
combined_data and training_set) from one synthetic ratings table, then times
- the first parse: read + validate (the parse cache off),
- the first load with the cache on: parse + writing the cache,
- a cached load: memory-map + CRC check,
and prints (and with --out writes load_speed.json/.md) rows per second and peak RSS.
The files are synthetic; their sizes are about the real files' per row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info

from deeprec.data import synthetic


def write_layouts(root: Path, rows: int) -> dict[str, Path]:
    items = 17_770
    users = max(rows // 200, 10)
    cols = synthetic.generate(synthetic.Shape(users, items, rows, (1.0, 5.0), 1.0, 1, 80.0))
    frame = pd.DataFrame(cols)
    frame["user"] += 1
    frame["item"] += 1
    out = {}
    folder = root / "movielens"
    folder.mkdir()
    frame.rename(columns={"user": "userId", "item": "movieId"}).to_csv(
        folder / "ratings.csv", index=False, float_format="%g"
    )
    out["MovieLens ratings.csv"] = folder
    for name, sep, file in (("ml-1m", "::", "ratings.dat"), ("ml-100k", "\t", "u.data")):
        folder = root / name
        folder.mkdir()
        text = (
            frame["user"].astype(str)
            + sep
            + frame["item"].astype(str)
            + sep
            + frame["rating"].astype(int).astype(str)
            + sep
            + frame["timestamp"].astype(str)
        )
        (folder / file).write_text("\n".join(text) + "\n")
        out[f"{name} layout ({file})"] = folder
    by_item = frame.sort_values(["item", "user"], kind="stable")
    dates = pd.to_datetime(by_item["timestamp"], unit="s").dt.strftime("%Y-%m-%d")
    lines = by_item["user"].astype(str) + "," + by_item["rating"].astype(int).astype(str)
    lines = lines + "," + dates
    blocks = {
        i: f"{i}:\n" + "\n".join(g) + "\n" for i, g in lines.groupby(by_item["item"].to_numpy())
    }
    folder = root / "netflix-combined"
    folder.mkdir()
    keys = sorted(blocks)
    for part in range(4):
        chunk = keys[part * len(keys) // 4 : (part + 1) * len(keys) // 4]
        (folder / f"combined_data_{part + 1}.txt").write_text("".join(blocks[i] for i in chunk))
    out["Netflix combined_data_*.txt"] = folder
    folder = root / "netflix-training-set"
    (folder / "training_set").mkdir(parents=True)
    for i, text in blocks.items():
        (folder / "training_set" / f"mv_{i:07d}.txt").write_text(text)
    out["Netflix training_set/mv_*.txt"] = folder
    return out


# VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child would report its parent's peak.
CHILD = """
import sys, time
from deeprec.data import load
t = time.perf_counter()
ds = load(sys.argv[1])
seconds = time.perf_counter() - t
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]
print(seconds, len(ds.ratings), hwm)
"""


def timed_load(folder: Path, cache: Path, caching: str) -> tuple[float, int, float]:
    """(seconds, rows, peak RSS GiB) of deeprec.data.load in a fresh process."""
    env = dict(os.environ, DEEPREC_PARSE_CACHE=caching, XDG_CACHE_HOME=str(cache))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder)], env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1])
    seconds, rows, rss_kib = out.stdout.split()
    return float(seconds), int(rows), int(rss_kib) / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=10_000_000, help="ratings per file [10M]")
    p.add_argument("--out", type=Path, help="folder for load_speed.json/.md")
    args = p.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        layouts = write_layouts(root, args.rows)
        print(f"wrote the files in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        for name, folder in layouts.items():
            size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            cache = root / f"cache-{folder.name}"
            parse, rows, rss = timed_load(folder, cache, "0")
            first, _, _ = timed_load(folder, cache, "1")
            cached, _, rss_cached = timed_load(folder, cache, "1")
            row = {
                "layout": name,
                "rows": rows,
                "mib": round(size / 2**20),
                "parse_s": round(parse, 2),
                "rows_per_s_millions": round(rows / parse / 1e6, 2),
                "first_load_with_cache_write_s": round(first, 2),
                "cached_load_s": round(cached, 2),
                "peak_rss_gib_parse": round(rss, 2),
                "peak_rss_gib_cached": round(rss_cached, 2),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    report = {"machine": machine_info("cpu"), "results": results}
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "load_speed.json").write_text(json.dumps(report, indent=2))
        lines = [
            f"# Load speed ({args.rows:,} synthetic ratings per layout)",
            "",
            f"Machine: {report['machine']['cpu']}, {report['machine']['cpu_count']} cores.",
            "",
            "| layout | MiB | first parse s | M rows/s | + cache write s | cached load s "
            "| peak RSS GiB (parse / cached) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in results:
            lines.append(
                f"| {r['layout']} | {r['mib']} | {r['parse_s']} | {r['rows_per_s_millions']} "
                f"| {r['first_load_with_cache_write_s']} | {r['cached_load_s']} "
                f"| {r['peak_rss_gib_parse']} / {r['peak_rss_gib_cached']} |"
            )
        (args.out / "load_speed.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
