"""Where a GPU training step's time goes: wall time, GPU-busy time, host syncs with the
source line of each, and every deeprec kernel against its memory floor and against the
cuSPARSE / cuBLAS call that does the same math.

    python benchmarks/gpu_profile.py --out DIR [--quick]

Writes DIR/gpu-profile.json and DIR/gpu-profile.md; report.py --device cuda includes the
markdown in its report, and benchmarks/gpu_check.sh runs it. Needs a CUDA GPU and the
deeprec CUDA kernels. A kernel's floor is the bytes it must move (read the touched rows
of each matrix once, write its outputs once) over the copy bandwidth measured here.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import copy_bandwidth, machine_info
from workloads import (
    LONG_TAILED,
    epoch_workload,
    long_tailed_batch,
    loss_workload,
    seed_matrix,
    step_workload,
)

from deeprec.ops import row_adam_step, sparse_linear, sparse_output_mse

# Workloads and the impls profiled in each: the --fused default (torch's sparse ops on a GPU)
# and deeprec's own CUDA kernels, side by side.
STEP_IMPLS = ("reference (dense)", "--fused", "--fused, deeprec's CUDA kernels",
              "--fused --optimizer sparse-adam")  # fmt: skip
# deeprec's kernels, by the name the profiler shows (a prefix of the templated name).
KERNELS = (
    "masked_mse_kernel",
    "spmm_rows_kernel",
    "sddmm_residual_kernel",
    "col_accumulate_kernel",
    "row_adam_kernel",
)


def wall_ms(fn: Callable[[], object], runs: int = 20) -> float:
    """Median wall milliseconds of one call, the GPU drained after each."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def sync_sites(fn: Callable[[], object]) -> collections.Counter:
    """Every host-device sync one call makes, keyed by the deeprec (or benchmark) source
    lines that caused it: torch's sync debug mode warns at each, and the warning's stack
    says where."""
    sites: collections.Counter = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message).lower():
            return
        ours = [
            f
            for f in traceback.extract_stack()
            if "/deeprec/" in f.filename or "benchmarks" in f.filename
        ]
        ours = [f for f in ours if not f.filename.endswith("gpu_profile.py")]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.line}" for f in ours[::-1][:2])
        sites[where or f"{filename}:{lineno}"] += 1

    fn()  # warm-up outside the count (first-call allocations, lazy setup)
    torch.cuda.synchronize()
    shown = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
            warnings.showwarning = shown
    return sites


def device_profile(fn: Callable[[], object], steps: int = 10):
    """(GPU-busy ms per call, {kernel name: ms per call}) from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    events = prof.key_averages()
    busy = sum(e.self_device_time_total for e in events) / steps / 1e3
    per_kernel = {
        e.key: e.self_device_time_total / steps / 1e3
        for e in events
        if e.self_device_time_total > 0
    }
    return busy, per_kernel


def ours(per_kernel: dict[str, float], name: str) -> float:
    """Milliseconds per call of deeprec kernel ``name`` (every template instance)."""
    return sum(ms for key, ms in per_kernel.items() if name in key)


def study_workloads(quick: bool) -> list[dict]:
    """Wall, GPU-busy and syncs per call for every workload and impl."""
    jobs = [
        (lambda: loss_workload("netflix", "cuda"), ("dense torch.compile", "fused")),
        (lambda: step_workload("netflix", "cuda"), STEP_IMPLS),
        (lambda: step_workload("netflix", "cuda", long_tailed=True), STEP_IMPLS),
        (lambda: step_workload("ml-32m", "cuda", long_tailed=True), STEP_IMPLS),
    ]
    if not quick:
        jobs.append((lambda: epoch_workload(128, "cuda", *seed_matrix()), STEP_IMPLS[:3]))
    rows = []
    for make, impls in jobs:
        try:
            w = make()
            w.check()
        except Exception:  # a broken workload is reported, the others still run
            rows.append({"workload": "?", "error": traceback.format_exc()})
            continue
        for impl in impls:
            if impl not in w.impls:
                continue
            fn = w.impls[impl]
            sites = sync_sites(fn)
            busy, per_kernel = device_profile(fn)
            rows.append(
                {
                    "workload": w.name,
                    "impl": impl,
                    "wall_ms": wall_ms(fn),
                    "gpu_busy_ms": busy,
                    "syncs": sum(sites.values()),
                    "sync_sites": dict(sites.most_common(12)),
                    "kernels_ms": {k: ours(per_kernel, k) for k in KERNELS},
                }
            )
    return rows


def kernel_floors(shape: str, bandwidth: float) -> list[dict]:
    """Each sparse kernel at one long-tailed batch shape: its GPU time, its floor, and the
    library call that does the same math (cuSPARSE through torch.sparse, cuBLAS dense)."""
    batch = long_tailed_batch(shape, "cuda")
    B, N, H = batch.crow.numel() - 1, batch.n_cols, 512
    nnz, U = batch.nnz, batch.n_unique
    f = 4  # float32 bytes
    idx = 8
    g = torch.Generator(device="cuda").manual_seed(0)
    W = (torch.randn(N, H, device="cuda", generator=g) * 0.01).requires_grad_()
    b_in = torch.zeros(H, device="cuda", requires_grad=True)
    Wo = (torch.randn(N, H, device="cuda", generator=g) * 0.01).requires_grad_()
    b_out = torch.zeros(N, device="cuda", requires_grad=True)
    h = torch.randn(B, H, device="cuda", generator=g, requires_grad=True)
    x = torch.sparse_csr_tensor(batch.crow, batch.col, batch.val, (B, N))
    dense_x = x.to_dense()
    mask = torch.sparse_csr_tensor(batch.crow, batch.col, torch.ones_like(batch.val), (B, N))

    def input_fwd(backend="native"):
        return sparse_linear(batch, W, b_in, impl="fused", backend=backend)

    def input_bwd(backend="native"):
        W.grad = None
        y = sparse_linear(batch, W, b_in, impl="fused", backend=backend, sparse_grad=True)
        y.sum().backward()

    def output_fwd(backend="native"):
        with torch.no_grad():
            return sparse_output_mse(h, Wo, b_out, batch, impl="fused", backend=backend)

    def output_bwd(backend="native"):
        for t in (h, Wo, b_out):
            t.grad = None
        sparse_output_mse(h, Wo, b_out, batch, impl="fused", backend=backend,
                          sparse_grad=True).backward()  # fmt: skip

    # Each op on the torch backend (what a GPU runs by default): its device checks, then
    # torch's sparse ops; the whole op's GPU time, beside deeprec's kernel and the library.
    TORCH_BACKEND = "deeprec torch backend (device checks + torch.sparse)"
    input_bwd()
    grad_rows = W.grad
    p, m, v = (torch.zeros_like(W) for _ in range(3))

    def adam():
        row_adam_step(p, m, v, grad_rows, 1, 1e-3, (0.9, 0.999), 1e-8, 0.0, False, merge=False)

    def lib(fn):
        return device_profile(fn)[0]

    rows = []

    def add(op, kernel, fn, floor_bytes, libraries):
        _, per_kernel = device_profile(fn)
        rows.append(
            {
                "op": op,
                "kernel": kernel,
                "kernel_ms": ours(per_kernel, kernel),
                "floor_ms": floor_bytes / bandwidth * 1e3,
                "wall_ms": wall_ms(fn),
                "libraries_ms": {name: lib(call) for name, call in libraries.items()},
            }
        )

    with torch.no_grad():
        add(
            "input layer x @ W, forward",
            "spmm_rows_kernel",
            input_fwd,
            U * H * f + nnz * (idx + f) + B * H * f,
            {
                TORCH_BACKEND: lambda: input_fwd("torch"),
                "cuSPARSE torch.sparse.mm": lambda: torch.sparse.mm(x, W),
                "cuBLAS dense x @ W": lambda: dense_x @ W,
            },
        )
        add(
            "output layer at the ratings, forward",
            "sddmm_residual_kernel",
            output_fwd,
            U * H * f + B * H * f + nnz * (idx + 2 * f),
            {
                TORCH_BACKEND: lambda: output_fwd("torch"),
                "cuSPARSE torch.sparse.sampled_addmm": lambda: torch.sparse.sampled_addmm(
                    mask, h, Wo.t()
                ),
                "cuBLAS dense h @ W^T": lambda: h @ Wo.t(),
            },
        )
    add(
        "input layer, weight gradient (compact rows)",
        "col_accumulate_kernel",
        input_bwd,
        U * H * f + nnz * (4 * idx + f) + B * H * f,
        {
            TORCH_BACKEND: lambda: input_bwd("torch"),
            "cuBLAS dense x^T @ G": lambda: dense_x.t() @ h,
        },
    )
    add(
        "output layer, backward",
        "col_accumulate_kernel",
        output_bwd,
        2 * U * H * f + 2 * B * H * f + nnz * (4 * idx + f),
        {
            TORCH_BACKEND: lambda: output_bwd("torch"),
            "cuBLAS dense G^T @ h and G @ W": lambda: (dense_x.t() @ h, dense_x @ Wo),
        },
    )
    add(
        "row Adam, exact (every row)",
        "row_adam_kernel",
        adam,
        6 * N * H * f + U * (H * f + idx),
        {"torch fused Adam, dense": _dense_adam(N, H)},
    )
    return rows


def _dense_adam(N: int, H: int) -> Callable[[], None]:
    p = torch.zeros(N, H, device="cuda", requires_grad=True)
    p.grad = torch.randn(N, H, device="cuda")
    opt = torch.optim.Adam([p], lr=1e-3, fused=True)
    return opt.step


def to_markdown(rep: dict) -> str:
    """The profile's tables (report.py's GPU section includes them)."""
    lines = [
        f"## GPU profile: {rep['machine'].get('gpu', '?')} (copy bandwidth "
        f"{rep['bandwidth_GBps']:.0f} GB/s)",
        "",
        "Per call: wall time (GPU drained), GPU-busy time (sum of kernel and copy times, "
        "torch.profiler), host syncs (torch's sync debug mode) and deeprec's kernel time.",
        "",
        "| workload | impl | wall ms | GPU busy ms | syncs | deeprec kernels ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rep["workloads"]:
        if "error" in r:
            lines.append(f"| {r['workload']} | error | | | | |")
            continue
        kernels = sum(r["kernels_ms"].values())
        lines.append(
            f"| {r['workload']} | {r['impl']} | {r['wall_ms']:.3f} | {r['gpu_busy_ms']:.3f} | "
            f"{r['syncs']} | {kernels:.3f} |"
        )
    sites = [(r, s, n) for r in rep["workloads"] for s, n in r.get("sync_sites", {}).items()]
    if sites:
        lines += ["", "Where the syncs are (per call):", ""]
        for r, s, n in sites:
            lines.append(f"- {r['workload']} / {r['impl']}: {n} x `{s}`")
    for shape, rows in rep["kernels"].items():
        lines += [
            "",
            f"### Kernels at the {shape} long-tailed batch shape",
            "",
            "| op | kernel ms | floor ms | kernel / floor | library ms |",
            "|---|---:|---:|---:|---|",
        ]
        for r in rows:
            libs = "; ".join(f"{k} {v:.3f}" for k, v in r["libraries_ms"].items())
            ratio = r["kernel_ms"] / r["floor_ms"] if r["floor_ms"] else float("nan")
            lines.append(
                f"| {r['op']} | {r['kernel_ms']:.3f} | {r['floor_ms']:.3f} | {ratio:.1f}x | "
                f"{libs} |"
            )
    return "\n".join(lines) + "\n"


def run(quick: bool) -> dict:
    bandwidth = copy_bandwidth("cuda")
    return {
        "machine": machine_info("cuda"),
        "bandwidth_GBps": bandwidth / 1e9,
        "workloads": study_workloads(quick),
        "kernels": {
            shape: kernel_floors(shape, bandwidth)
            for shape in (("ml-32m",) if quick else tuple(LONG_TAILED))
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, required=True, help="folder for gpu-profile.{json,md}")
    p.add_argument("--quick", action="store_true", help="one kernel shape, no epoch workload")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_profile: needs a CUDA GPU (torch sees none)", file=sys.stderr)
        return 2
    rep = run(args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-profile.json").write_text(json.dumps(rep, indent=1))
    (args.out / "gpu-profile.md").write_text(to_markdown(rep))
    print(to_markdown(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
