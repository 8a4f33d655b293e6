"""Benchmark report: fused vs reference vs torch.compile, on CPU and/or GPU.

    python benchmarks/report.py [--quick] [--device cpu|cuda|all] --out DIR

Writes DIR/<device>.json, DIR/<device>.md and DIR/<device>.png: medians of repeated
runs taken in one process, speedup ratios between them, achieved GB/s (loss) or
GFLOP/s (training) and the fraction of this machine's ceilings, which the script
measures itself (copy bandwidth, sgemm rate). Each workload's impls are checked to
agree once before timing. --quick: fewer repeats and shapes (< 3 min on a 2-core CPU).
The full run adds the scale measurements of benchmarks/scale.py (a synth-netflix epoch,
synth-ml32m epochs, torchrun with 1 and 2 processes, load times): about 15 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_profile
import overhead
import scale
from common import copy_bandwidth, machine_info, matmul_rate, measure
from workloads import (
    LOSS_SHAPES,
    epoch_workload,
    loss_workload,
    seed_matrix,
    step_workload,
)


def device_tag(device: str, info: dict) -> str:
    """A file name that says the device: cpu-xeon-2t, h100, ..."""
    if device.startswith("cuda"):
        name = str(info.get("gpu", "cuda")).lower()
        m = re.search(r"(h100|h200|a100|l4|l40s?|a10g?|v100|t4|rtx ?\d+|gh200|b200)", name)
        return (m.group(1) if m else "cuda").replace(" ", "")
    cpu = str(info.get("cpu", "cpu")).lower()
    family = next(
        (f for f in ("epyc", "xeon", "ryzen", "core", "graviton", "neoverse") if f in cpu), "cpu"
    )
    return f"cpu-{family}-{info['torch_threads']}t"


def run_device(device: str, quick: bool) -> dict:
    info = machine_info(device)
    t_start = time.perf_counter()
    ceilings = {
        "copy_GBps": copy_bandwidth(device),
        "matmul_GFLOPps": matmul_rate(device, 2048 if device != "cpu" else 1024),
    }
    loss_runs, train_runs = (11, 3) if quick else (31, 7)
    shapes = ["seed", "netflix"] if quick else list(LOSS_SHAPES)
    dtypes = [torch.float32] + ([torch.bfloat16] if device.startswith("cuda") else [])
    workloads = [loss_workload(s, device, dt) for s in shapes for dt in dtypes]
    matrix, source = seed_matrix()
    workloads += [epoch_workload(bs, device, matrix, source) for bs in (32, 128)]
    workloads += [step_workload("netflix", device)]
    workloads += [step_workload(s, device, long_tailed=True) for s in ("netflix", "ml-32m")]
    results = []
    for w in workloads:
        w.check()
        runs = train_runs if w.flops else loss_runs
        times = {}
        for name, fn in w.impls.items():
            times[name] = measure(
                fn,
                device=device,
                runs=runs,
                warmup=2 if w.flops else 3,
                min_time=0.0 if w.flops else 0.02,
            )
        base = times[w.baseline]["median"]
        entry = {
            "workload": w.name,
            "baseline": w.baseline,
            "notes": w.notes,
            "times": times,
            "speedup_vs_baseline": {n: base / t["median"] for n, t in times.items()},
        }
        if "fused" in times and "dense torch.compile" in times:
            entry["fused_vs_compiled"] = (
                times["dense torch.compile"]["median"] / times["fused"]["median"]
            )
            entry["fused_vs_reference_csr"] = (
                times["reference (CSR)"]["median"] / times["fused"]["median"]
            )
        if w.bytes_moved:
            entry["GBps"] = {n: w.bytes_moved / t["median"] / 1e9 for n, t in times.items()}
            entry["fraction_of_copy_bw"] = {
                n: g / ceilings["copy_GBps"] for n, g in entry["GBps"].items()
            }
        if w.flops:
            entry["GFLOPps"] = {n: w.flops / t["median"] / 1e9 for n, t in times.items()}
            entry["fraction_of_matmul"] = {
                n: g / ceilings["matmul_GFLOPps"] for n, g in entry["GFLOPps"].items()
            }
        results.append(entry)
        print(
            f"  {w.name}: "
            + ", ".join(f"{n} {t['median'] * 1e3:.2f} ms" for n, t in times.items()),
            flush=True,
        )
    report = {
        "device": device,
        "machine": info,
        "ceilings": ceilings,
        "quick": quick,
        "results": results,
    }
    if device == "cpu":
        print("  per-call overhead and SIMD variants", flush=True)
        report["overhead"] = overhead.loss_overhead(41 if quick else 101)
        report["variants"] = overhead.per_variant(3 if quick else 5)
        report["op_overheads"] = overhead.op_overheads(41 if quick else 101)
    if device.startswith("cuda"):
        print("  GPU profile: wall, GPU-busy, syncs, kernels against their floors", flush=True)
        report["profile"] = gpu_profile.run(quick)
    if not quick:
        print("  scale: synth-netflix epoch, synth-ml32m, torchrun, load times", flush=True)
        report["scale"] = scale.run(device)
    report["seconds"] = time.perf_counter() - t_start
    return report


def to_markdown(rep: dict) -> str:
    m, c = rep["machine"], rep["ceilings"]
    gpu = (
        f", GPU {m['gpu']} ({m.get('gpu_memory_gib')} GiB, CUDA {m.get('cuda')})"
        if "gpu" in m
        else ""
    )
    lines = [
        f"# deeprec benchmarks on {rep['device']}",
        "",
        f"Machine: {m['cpu']} ({m['cpu_count']} CPUs, {m['torch_threads']} torch threads){gpu}; "
        f"torch {m['torch']}, Python {m['python']}.",
        f"Measured ceilings: copy bandwidth {c['copy_GBps']:.1f} GB/s (read + write), "
        f"matrix product {c['matmul_GFLOPps']:.0f} GFLOP/s (float32).",
        f"Medians of repeated runs in one process{' (--quick)' if rep['quick'] else ''}; "
        f"ratios are between medians of this run. Total {rep['seconds']:.0f} s.",
        "Training GFLOP/s count the dense model's FLOPs (forward + backward) for every impl, so",
        "the sparse path can exceed the matmul rate: it skips most of that work.",
        "",
    ]
    for r in rep["results"]:
        notes = ", ".join(f"{k}={v}" for k, v in r["notes"].items())
        lines += [f"## {r['workload']} ({notes})", ""]
        perf = "GB/s (% copy bw)" if "GBps" in r else "dense-equiv. GFLOP/s (% matmul)"
        base2 = next((n for n in r["times"] if n.startswith("reference, torch default")), None)
        head2 = f" speedup vs {base2} |" if base2 else ""
        lines += [
            f"| impl | median ms | q1-q3 ms | speedup vs {r['baseline']} |{head2} {perf} |",
            "|---|---:|---:|---:|" + ("---:|" if base2 else "") + "---:|",
        ]
        for name, t in r["times"].items():
            if "GBps" in r:
                p = f"{r['GBps'][name]:.1f} ({100 * r['fraction_of_copy_bw'][name]:.0f}%)"
            else:
                p = f"{r['GFLOPps'][name]:.1f} ({100 * r['fraction_of_matmul'][name]:.0f}%)"
            col2 = f" {r['times'][base2]['median'] / t['median']:.2f}x |" if base2 else ""
            lines.append(
                f"| {name} | {t['median'] * 1e3:.3f} | {t['q1'] * 1e3:.3f}-{t['q3'] * 1e3:.3f} "
                f"| {r['speedup_vs_baseline'][name]:.2f}x |{col2} {p} |"
            )
        if "fused_vs_compiled" in r:
            lines.append(
                f"\nfused vs dense torch.compile: **{r['fused_vs_compiled']:.2f}x**; "
                f"fused vs reference (CSR): {r['fused_vs_reference_csr']:.2f}x"
            )
        lines.append("")
    if "overhead" in rep:
        isa = rep["machine"]["deeprec_build"].get("cpu_simd_variant", "?")
        lines.append(overhead.to_markdown(rep["overhead"], rep["variants"], isa))
        if "op_overheads" in rep:
            lines.append(overhead.ops_markdown(rep["op_overheads"], isa))
    if "profile" in rep:
        lines.append(gpu_profile.to_markdown(rep["profile"]))
    if "scale" in rep:
        lines.append(scale.to_markdown(rep["scale"]))
    return "\n".join(lines)


def plot(rep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = rep["results"]
    fig, axes = plt.subplots(
        len(res),
        1,
        figsize=(7, 1.3 + 0.45 * sum(len(r["times"]) for r in res)),
        dpi=110,
        squeeze=False,
    )
    for ax, r in zip(axes[:, 0], res, strict=True):
        names = list(r["times"])
        ms = [r["times"][n]["median"] * 1e3 for n in names]
        colors = ["C2" if ("fused" in n) else "C0" for n in names]
        ax.barh(names, ms, color=colors)
        for y, (v, n) in enumerate(zip(ms, names, strict=True)):
            ax.text(
                v, y, f" {v:.2f} ms ({r['speedup_vs_baseline'][n]:.1f}x)", va="center", fontsize=7
            )
        ax.set_title(r["workload"], fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        ax.set_xlim(0, max(ms) * 1.45)
        ax.invert_yaxis()
    axes[-1, 0].set_xlabel("median time (ms), lower is better; speedup vs baseline in brackets")
    fig.suptitle(
        f"deeprec on {rep['device']}: {rep['machine'].get('gpu', rep['machine']['cpu'])}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="fewer repeats and shapes (< 3 min on CPU)")
    p.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda", "all"), help="where to measure"
    )
    p.add_argument("--out", type=Path, required=True, help="folder for <device>.json/.md/.png")
    p.add_argument("--name", help="file stem instead of the automatic one (e.g. cpu-epyc-2t, h100)")
    args = p.parse_args(argv)
    torch.set_flush_denormal(True)  # as deeprec.training.fit does (flushed_denormals)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            p.error("--device cuda: torch sees no CUDA device")
        devices.remove("cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    for device in devices:
        print(f"== {device}", flush=True)
        rep = run_device(device, args.quick)
        stem = args.name or device_tag(device, rep["machine"])
        (args.out / f"{stem}.json").write_text(json.dumps(rep, indent=1))
        (args.out / f"{stem}.md").write_text(to_markdown(rep))
        plot(rep, args.out / f"{stem}.png")
        print(f"wrote {args.out / stem}.{{json,md,png}} in {rep['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
