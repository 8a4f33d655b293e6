"""The fused masked MSE (forward + backward) against the memory floor, at every loss shape.

The floor: the bytes the call must move (the output read at the stored entries, the
entries themselves, the dense gradient written once) at the copy bandwidth measured in
the same run. Rows, all in one process on the same batches:

- float32, the gradient in fresh memory (an allocation that large is a fresh mapping each
  call, so each step faults in its pages) against a recycled block (deeprec.ops.recycle,
  what the op does);
- bf16: the bf16 kernel on a bf16 output and ratings, writing a bf16 gradient; and the
  same under ``torch.autocast`` from float32 ratings (the op's rule casts them each call, and
  the call goes through the dispatcher's autocast layer); GB/s counted on the bf16 bytes.

    python benchmarks/masked_mse_floor.py [--runs 21] [--out DIR]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import copy_bandwidth, machine_info, measure, rating_batch
from workloads import LOSS_SHAPES, loss_workload

from deeprec.ops import masked_mse, recycle


def rows(runs: int, bw: float) -> list[dict[str, object]]:
    out = []
    for shape in LOSS_SHAPES:
        w = loss_workload(shape, "cpu", torch.float32)
        fused = w.impls["fused"]
        for label, min_bytes in (("float32, fresh gradient", 1 << 62),
                                 ("float32, recycled gradient", recycle.MIN_BYTES)):  # fmt: skip
            old, recycle.MIN_BYTES = recycle.MIN_BYTES, min_bytes
            try:
                t = measure(fused, runs=runs, warmup=3)["median"]
            finally:
                recycle.MIN_BYTES = old
            out.append({"shape": shape, "case": label, "ms": t * 1e3, "bytes": w.bytes_moved})
        B, N, _ = LOSS_SHAPES[shape]
        nnz = int(w.notes["nnz"])
        half_bytes = B * N * 2 + nnz * (2 + 2 + 8) + (B + 1) * 8
        output, target, _ = rating_batch(*LOSS_SHAPES[shape], device="cpu")
        output = output.to(torch.bfloat16).requires_grad_()
        crow, col, val = target
        direct = functools.partial(_bf16_step, output, (crow, col, val.to(torch.bfloat16)))
        t = measure(direct, runs=runs, warmup=3)["median"]
        out.append({"shape": shape, "case": "bf16 output, ratings and gradient",
                    "ms": t * 1e3, "bytes": half_bytes})  # fmt: skip
        step = functools.partial(_autocast_step, output, target)
        t = measure(step, runs=runs, warmup=3)["median"]
        out.append({"shape": shape, "case": "bf16 output and gradient, under autocast",
                    "ms": t * 1e3, "bytes": half_bytes})  # fmt: skip
    for r in out:
        r["GBps"] = r["bytes"] / (r["ms"] / 1e3) / 1e9
        r["fraction_of_copy_bw"] = r["GBps"] / bw
    return out


def _bf16_step(output, target):
    output.grad = None
    masked_mse(output, target, impl="fused").backward()


def _autocast_step(output, target):
    output.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = masked_mse(output, target, impl="fused")
    loss.backward()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--runs", type=int, default=21, help="timed samples per row (median)")
    p.add_argument("--out", type=Path, help="write masked_mse_floor.json/.md here")
    args = p.parse_args(argv)
    bw = copy_bandwidth()
    result = rows(args.runs, bw)
    m = machine_info()
    lines = [
        f"# The fused masked MSE at its memory floor ({m['cpu']}, {m['torch_threads']} threads)",
        "",
        f"`python benchmarks/masked_mse_floor.py --runs {args.runs}`: copy bandwidth measured "
        f"in the same run {bw:.1f} GB/s (read + write). Bytes: the output at the stored "
        "entries, the entries, the dense gradient written once.",
        "",
        "| shape | case | median ms | GB/s | % of copy bandwidth |",
        "|---|---|---:|---:|---:|",
    ]
    for r in result:
        lines.append(f"| {r['shape']} | {r['case']} | {r['ms']:.2f} | {r['GBps']:.1f} | "
                     f"{100 * r['fraction_of_copy_bw']:.0f}% |")  # fmt: skip
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        payload = {"machine": m, "copy_GBps": bw, "rows": result}
        (args.out / "masked_mse_floor.json").write_text(json.dumps(payload, indent=1))
        (args.out / "masked_mse_floor.md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
