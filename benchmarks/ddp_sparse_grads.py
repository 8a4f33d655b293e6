"""Row-sparse item gradients across torchrun ranks: all-gather of rows vs dense all-reduce.

    python benchmarks/ddp_sparse_grads.py [--procs 2] [--out DIR]

Each rank holds a row-sparse gradient of an item matrix (rows x 512) touching a fraction
of the rows (long-tailed: popular rows are touched by every rank); both methods of
deeprec.distributed.reduce_rows sum them, and the median time of each is printed (and
written to DIR/ddp_sparse_grads.json/.md). gloo on CPU: the processes share this machine,
so the numbers are a lower bound on what a network adds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info

from deeprec.distributed import World, reduce_rows

SHAPES = {"Netflix items": 17_770, "ML-32M items": 87_585}
FRACTIONS = (0.05, 0.15, 0.3, 0.6)
H = 512


def worker(rank: int, size: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    world = World(rank, size)
    rows_out = []
    for shape, n in SHAPES.items():
        for fraction in FRACTIONS:
            g = torch.Generator().manual_seed(rank)
            weights = 1.0 / (torch.arange(n, dtype=torch.float64) + 0.003 * n)
            k = int(fraction * n)
            idx = torch.multinomial(weights, k, replacement=False, generator=g).sort().values
            p = torch.nn.Parameter(torch.zeros(n, H))
            grad = torch.sparse_coo_tensor(idx[None], torch.randn(k, H, generator=g), (n, H))
            times = {}
            results = {}
            for method in ("gather", "dense"):
                runs = []
                for _ in range(5):
                    p.grad = grad
                    dist.barrier()
                    t = time.perf_counter()
                    results[method] = reduce_rows(p, 1.0, world, method)
                    runs.append(time.perf_counter() - t)
                times[method] = statistics.median(runs)
            a, b = results["gather"].to_dense(), results["dense"].to_dense()
            assert torch.allclose(a, b, atol=1e-6), "the two methods disagree"
            rows_out.append(
                {
                    "matrix": f"{shape} ({n} x {H})",
                    "rows_per_rank": fraction,
                    "union_rows": results["gather"].indices().shape[1] / n,
                    "gather_ms": round(times["gather"] * 1e3, 1),
                    "dense_ms": round(times["dense"] * 1e3, 1),
                }
            )
    if rank == 0:
        queue.put(rows_out)
    dist.barrier()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--procs", type=int, default=2, help="processes (gloo) [2]")
    p.add_argument("--out", type=Path, help="folder for ddp_sparse_grads.json/.md")
    args = p.parse_args(argv)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(worker, (args.procs, port, queue), nprocs=args.procs, start_method="spawn")
    rows = queue.get()
    for r in rows:
        print(json.dumps(r))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        info = machine_info("cpu")
        (args.out / "ddp_sparse_grads.json").write_text(
            json.dumps({"machine": info, "procs": args.procs, "results": rows}, indent=2)
        )
        lines = [
            f"# Row-sparse gradient reduction, {args.procs} gloo processes on one machine",
            "",
            f"Machine: {info['cpu']}, {info['cpu_count']} cores; median of 5; 512 columns.",
            "",
            "| matrix | rows per rank | union of rows | all-gather ms | dense all-reduce ms |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['matrix']} | {r['rows_per_rank']:.0%} | {r['union_rows']:.0%} "
            f"| {r['gather_ms']} | {r['dense_ms']} |"
            for r in rows
        ]
        (args.out / "ddp_sparse_grads.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
