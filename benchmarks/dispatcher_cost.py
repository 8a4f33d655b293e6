"""What torch's dispatcher costs the ops, against the eager fast path they could keep.

    python benchmarks/dispatcher_cost.py [--rounds 15] [--busy] [--out DIR]

Every deeprec op can be called through torch's dispatcher (the kernel registered for the
tensors' device, the registered autograd) or through an eager fast path: an
``autograd.Function`` over the same validator, kernel and backward, which skips the
dispatcher (schema.Op's fast_path, given to the ops where this measured it worth it).
``path(eager)`` puts every op on one or the other, in this process, so both are timed in
one run, alternately (rounds interleaved, each path first in every other round; medians
of each, their ratio). The
workloads: each op forward + backward at the seed shape (128 x 9,559, 1.7% rated, the
seed's 512-wide layers) through its public function, and one fused training step of the
seed model. --busy runs one busy process beside the timing (a loaded machine). Writes
DIR/dispatcher.json and DIR/dispatcher.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import busy_beside, machine_info
from overhead import seed_op_calls
from workloads import epoch_workload, step_workload

from deeprec.ops import schema


@contextmanager
def path(eager: bool):
    """Every Op eager (an autograd.Function over its CPU kernel, as the ops given a fast
    path run; an op without autograd: its kernel called directly) or every Op through the
    dispatcher (the fast paths switched off), whatever each op is given."""
    saved = {op.name: (op.op, op.eager) for op in schema.OPS}
    for op in schema.OPS:
        if not eager:
            op.eager = None
        elif op.backward is not None:
            op.eager = schema._eager_function(op)
        else:
            op.op = op.kernels["cpu"]
    try:
        yield
    finally:
        for op in schema.OPS:
            op.op, op.eager = saved[op.name]


def op_workloads() -> dict[str, Callable[[], object]]:
    """Each op forward + backward at the seed shape through its public function (the row
    Adam: a step), one fused training step and one epoch of the seed model."""
    work = {
        name if both is None else f"{name} fwd+bwd": both or fwd
        for name, (fwd, both) in seed_op_calls().items()
    }
    work["seed training step --fused (b128)"] = step_workload("seed", "cpu").impls["--fused"]
    work["seed epoch --fused (b128)"] = epoch_workload(128, "cpu").impls["--fused"]
    return work


def timed(fn: Callable[[], object], seconds: float = 0.3) -> float:
    """Seconds per call, over about ``seconds`` of calls (at least 3)."""
    fn()
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    p.add_argument("--busy", action="store_true", help="one busy process beside the timing")
    p.add_argument("--out", type=Path, help="folder for dispatcher.json and dispatcher.md")
    args = p.parse_args(argv)
    work = op_workloads()
    times: dict[str, dict[str, list[float]]] = {k: {"dispatcher": [], "eager": []} for k in work}
    with busy_beside(args.busy):
        for r in range(args.rounds):
            for name, fn in work.items():
                for kind in ("dispatcher", "eager")[:: 1 if r % 2 else -1]:  # each goes first
                    with path(eager=kind == "eager"):
                        times[name][kind].append(timed(fn))
            print(f"round {r + 1}/{args.rounds}", flush=True)
    rows = []
    for name, t in times.items():
        d, e = statistics.median(t["dispatcher"]), statistics.median(t["eager"])
        each = [a / b for a, b in zip(t["dispatcher"], t["eager"], strict=True)]
        rows.append({"workload": name, "dispatcher_ms": d * 1e3, "eager_ms": e * 1e3,
                     "ratio": d / e, "ratio_range": [min(each), max(each)],
                     "extra_us": (d - e) * 1e6})  # fmt: skip
    info = machine_info()
    load = "one busy process beside it" if args.busy else "quiet"
    lines = [
        f"# The dispatcher against an eager fast path ({info['cpu']}, {info['cpu_count']} "
        f"CPUs, {load})",
        "",
        f"`python benchmarks/dispatcher_cost.py --rounds {args.rounds}"
        f"{' --busy' if args.busy else ''}`: both paths in one process, rounds interleaved; "
        "medians over rounds; torch " + str(info["torch"]) + ".",
        "",
        "| workload | dispatcher ms | eager ms | dispatcher / eager | per-round range | extra us |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        lo, hi = r["ratio_range"]
        lines.append(f"| {r['workload']} | {r['dispatcher_ms']:.3f} | {r['eager_ms']:.3f} | "
                     f"{r['ratio']:.3f} | {lo:.2f}-{hi:.2f} | {r['extra_us']:.1f} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        suffix = "-busy" if args.busy else ""
        (args.out / f"dispatcher{suffix}.md").write_text(text)
        (args.out / f"dispatcher{suffix}.json").write_text(
            json.dumps({"machine": info, "load": load, "rows": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
