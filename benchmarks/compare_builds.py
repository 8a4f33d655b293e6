"""Before / after: the same CPU workloads timed under two builds of deeprec, alternately.

    python benchmarks/compare_builds.py --before DIR --after DIR [--rounds 5] [--out FILE.md]

DIR is a checkout whose package imports from DIR/src or from a --target install named by
--before-path / --after-path. Each round runs one process per build, alternating, so slow
drifts of a shared machine hit both; each process reports medians of repeated runs, and
the table gives the median over rounds of each build and their ratio. Workloads (each
build's own benchmarks/workloads.py): the fused masked-MSE loss on a caller's own CSR
triple (forward; forward + backward), a seed epoch at batch 128 on the fused path, and
one fused training step at the ML-32M long-tailed batch shape.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_model

# Run inside each build's own checkout (its workloads.py speaks its API).
PROBE = r"""
import json, sys
sys.path.insert(0, "benchmarks")
import torch
from common import measure, rating_batch
from deeprec.ops import masked_mse
from workloads import epoch_workload, seed_matrix, step_workload

output, parts, _ = rating_batch(128, 9559, 0.017)
out = output.detach().clone().requires_grad_(True)

def loss_both():
    out.grad = None
    masked_mse(out, parts, impl="fused").backward()

def loss_fwd():
    with torch.no_grad():
        masked_mse(out, parts, impl="fused")

res = {
    "loss fwd (caller's CSR)": measure(loss_fwd, runs=201, warmup=20)["median"],
    "loss fwd+bwd (caller's CSR)": measure(loss_both, runs=201, warmup=20)["median"],
}
m, src = seed_matrix()
res["seed epoch b128 --fused"] = measure(
    epoch_workload(128, "cpu", m, src).impls["--fused"], runs=9, warmup=1)["median"]
res["ML-32M step --fused"] = measure(
    step_workload("ml-32m", "cpu", long_tailed=True).impls["--fused"], runs=7, warmup=2
)["median"]
print("RESULT " + json.dumps(res))
"""


def probe(checkout: Path, path: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": path}
    r = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=checkout, env=env, capture_output=True, text=True
    )
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    if r.returncode != 0 or line is None:
        raise SystemExit(f"{checkout}: probe failed\n{r.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--before", type=Path, required=True, help="checkout of the old build")
    p.add_argument("--after", type=Path, required=True, help="checkout of the new build")
    p.add_argument("--before-path", help="PYTHONPATH of the old build (default: BEFORE/src)")
    p.add_argument("--after-path", help="PYTHONPATH of the new build (default: AFTER/src)")
    p.add_argument("--rounds", type=int, default=5, help="alternations (default 5)")
    p.add_argument("--out", type=Path, help="also write the table here (markdown)")
    args = p.parse_args(argv)
    sides = {
        "before": (args.before, args.before_path or str(args.before / "src")),
        "after": (args.after, args.after_path or str(args.after / "src")),
    }
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for i in range(args.rounds):
        for side, (checkout, path) in sides.items():
            runs[side].append(probe(checkout, path))
            print(f"round {i + 1} {side}: {runs[side][-1]}", flush=True)
    lines = [
        f"# Before / after on {cpu_model()} ({os.cpu_count()} CPUs)",
        "",
        f"`python benchmarks/compare_builds.py --rounds {args.rounds}`: one process per build "
        "per round, alternating; each cell is the median over rounds of each process's median.",
        "",
        "| workload | before ms | after ms | after / before | per-round after/before |",
        "|---|---:|---:|---:|---|",
    ]
    for name in runs["before"][0]:
        b = [r[name] for r in runs["before"]]
        a = [r[name] for r in runs["after"]]
        mb, ma = statistics.median(b), statistics.median(a)
        each = ", ".join(f"{y / x:.2f}" for x, y in zip(b, a, strict=True))
        lines.append(f"| {name} | {mb * 1e3:.3f} | {ma * 1e3:.3f} | {ma / mb:.3f} | {each} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
