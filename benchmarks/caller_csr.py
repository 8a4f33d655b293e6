"""A caller's own CSR at kernel speed: the fused masked MSE on every form of target.

    python benchmarks/caller_csr.py [--runs 41] [--rounds 3] [--out benchmarks/results]

At the seed shape (128 x 9,559, 1.7% rated, float32) forward + backward of
``masked_mse(output, target)`` where target is one of deeprec's Batches (built once, as
training does), a caller's (crow, col, val) triple with int64 or int32 columns, or a torch
sparse CSR tensor; against ``torch.compile`` of the seed's dense masked MSE on the same
ratings. A caller's target pays metadata checks only (the kernels check every index they
read), so its call should cost what a Batch's does. Also the backward kernel alone writing
the 4.9 MB dense gradient into a fresh allocation (what the op does) and into one reused
buffer: what reusing the gradient's memory would save.

Every variant runs in each of ``rounds`` interleaved rounds in one process; a variant's
figure is the median of its rounds' medians, and ratios are taken between those.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, measure, rating_batch, seed_dense_masked_mse

from deeprec.csr import Batch
from deeprec.ops import masked_mse
from deeprec.ops.masked_mse import masked_mse_launch

SHAPE = (128, 9559, 0.017)


def targets(crow, col, val, n_cols: int) -> dict[str, object]:
    """The forms a caller may pass, all holding the same ratings."""
    col64 = col.to(torch.int64)
    with warnings.catch_warnings():  # torch's "sparse CSR support is in beta" notice
        warnings.simplefilter("ignore")
        tensor = torch.sparse_csr_tensor(crow, col64, val, (crow.numel() - 1, n_cols))
    return {
        "Batch (deeprec's, built once)": Batch(
            crow, col64, val, n_cols, int(torch.unique(col64).numel())
        ),
        "triple, int64 columns": (crow, col64, val),
        "triple, int32 columns": (crow, col, val),
        "torch sparse CSR tensor": tensor,
    }


def fwd_bwd(loss: Callable[[torch.Tensor], torch.Tensor], output: torch.Tensor):
    out = output.detach().clone().requires_grad_(True)

    def step():
        out.grad = None
        loss(out).backward()

    return step


def run(runs: int, rounds: int) -> dict[str, object]:
    B, N, density = SHAPE
    output, (crow, col, val), dense = rating_batch(B, N, density)
    forms = targets(crow, col, val, N)
    want = seed_dense_masked_mse(output.double(), dense.double())
    for name, target in forms.items():  # the same loss from every form, checked untimed
        got = masked_mse(output, target, impl="fused").double()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
    compiled = torch.compile(seed_dense_masked_mse)
    steps = {f"fused, {k}": fwd_bwd(lambda o, t=t: masked_mse(o, t, impl="fused"), output)
             for k, t in forms.items()}  # fmt: skip
    steps["dense torch.compile (seed's loss)"] = fwd_bwd(lambda o: compiled(o, dense), output)
    col64 = col.to(torch.int64)
    one = torch.ones((), dtype=output.dtype)
    reused = torch.empty_like(output)

    def kernel(into: Callable[[], torch.Tensor]):
        return lambda: masked_mse_launch(output, crow, col64, val, None, into(), one)

    steps["backward kernel, fresh gradient"] = kernel(lambda: torch.empty_like(output))
    steps["backward kernel, reused gradient"] = kernel(lambda: reused)
    per_round: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            per_round[name].append(measure(step, runs=runs, min_time=0.01)["median"])
    med = {k: statistics.median(v) for k, v in per_round.items()}
    batch = med["fused, Batch (deeprec's, built once)"]
    tensor = med["fused, torch sparse CSR tensor"]
    compile_s = med["dense torch.compile (seed's loss)"]
    return {
        "shape": {"B": B, "N": N, "density": density, "nnz": int(col.numel())},
        "machine": machine_info("cpu"),
        "runs": runs,
        "rounds": rounds,
        "seconds": med,
        "per_round": per_round,
        "ratios": {
            "CSR tensor / Batch (target <= 1.3)": tensor / batch,
            "int32 triple / Batch": med["fused, triple, int32 columns"] / batch,
            "int64 triple / Batch": med["fused, triple, int64 columns"] / batch,
            "torch.compile dense / CSR tensor (target >= 2.5)": compile_s / tensor,
            "torch.compile dense / Batch": compile_s / batch,
            "backward kernel: fresh / reused gradient": med["backward kernel, fresh gradient"]
            / med["backward kernel, reused gradient"],
        },
    }


def to_markdown(r: dict[str, object]) -> str:
    s, m = r["shape"], r["machine"]
    lines = [
        f"## A caller's CSR: masked_mse forward + backward, B={s['B']}, N={s['N']}, "
        f"{100 * s['density']:.1f}% rated (nnz={s['nnz']}), float32, CPU",
        "",
        f"Machine: {m['cpu']} (SIMD variant {m['deeprec_build'].get('cpu_simd_variant')}), "
        f"{m['torch_threads']} torch threads, "
        f"torch {m['torch']}. Medians of {r['rounds']} interleaved rounds of {r['runs']} "
        "timed samples each, one process.",
        "",
        "| call | median |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v * 1e3:.3f} ms |" for k, v in r["seconds"].items()]
    lines += ["", "| ratio (medians, same run) | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f}x |" for k, v in r["ratios"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=41, help="timed samples per call and round [41]")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds [3]")
    p.add_argument("--out", type=Path, help="write caller_csr.json/.md into this folder")
    args = p.parse_args(argv)
    result = run(args.runs, args.rounds)
    md = to_markdown(result)
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "caller_csr.json").write_text(json.dumps(result, indent=1))
        (args.out / "caller_csr.md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
