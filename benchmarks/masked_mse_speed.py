"""Masked-MSE forward+backward: fused vs the seed's dense loss, eager and compiled.

    python benchmarks/masked_mse_speed.py [--runs 31] [--device cpu] [--out DIR]

All impls run in one process on the same batch; the table gives medians and the
ratios between them, the backward design choice (recompute vs save G), and how
close the fused call comes to the memory floor (writing the dense gradient once
at this machine's measured write bandwidth).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    machine_info,
    measure,
    rating_batch,
    seed_dense_masked_mse,
    write_bandwidth,
)

from deeprec.ops import _native, masked_mse


def fwd_bwd(loss_fn, output):
    out = output.detach().requires_grad_(True)

    def step():
        out.grad = None
        loss_fn(out).backward()

    return step


def run(B: int, N: int, density: float, device: str, runs: int) -> dict[str, object]:
    output, parts, dense = rating_batch(B, N, density, device=device)
    crow, col, val = parts
    compiled = torch.compile(seed_dense_masked_mse)
    impls = {
        "dense eager (seed)": fwd_bwd(lambda o: seed_dense_masked_mse(o, dense), output),
        "dense torch.compile": fwd_bwd(lambda o: compiled(o, dense), output),
        "reference (CSR gather)": fwd_bwd(lambda o: masked_mse(o, parts, impl="reference"), output),
        "fused": fwd_bwd(lambda o: masked_mse(o, parts, impl="fused"), output),
    }
    # Same math everywhere, checked once outside the timed region.
    ref = seed_dense_masked_mse(output.double(), dense.double())
    got = masked_mse(output, parts, impl="fused")
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)

    C = _native.module()
    grad = torch.empty_like(output)
    loss = output.new_empty(())
    one = torch.ones((), dtype=output.dtype, device=device)
    common_args = (
        output.data_ptr(),
        crow.data_ptr(),
        col.data_ptr(),
        val.data_ptr(),
        B,
        N,
        col.numel(),
        _native.DTYPE_CODE[output.dtype],
        _native.INDEX_CODE[col.dtype],
    )

    def kernel(loss_ptr, grad_ptr):
        if device == "cpu":
            return lambda: C.masked_mse_cpu(
                *common_args, loss_ptr, grad_ptr, one.data_ptr(), torch.get_num_threads()
            )
        partials = torch.empty(C.MASKED_MSE_MAX_BLOCKS, dtype=torch.float64, device=device)
        counter = torch.zeros(1, dtype=torch.int32, device=device)
        stream = torch.cuda.current_stream().cuda_stream
        idx = torch.device(device).index or 0
        return lambda: C.masked_mse_cuda(
            *common_args,
            loss_ptr,
            grad_ptr,
            one.data_ptr(),
            partials.data_ptr(),
            counter.data_ptr(),
            idx,
            stream,
        )

    loss_only, grad_only = kernel(loss.data_ptr(), 0), kernel(0, grad.data_ptr())
    both = kernel(loss.data_ptr(), grad.data_ptr())
    scale = torch.tensor(1.0, device=device)
    designs = {
        "kernel: loss + G in one pass": both,
        "design A (save G): loss+G pass, then G * grad_out": lambda: (both(), grad.mul(scale)),
        "design B (recompute, ours): loss pass, then G pass": lambda: (loss_only(), grad_only()),
    }
    times = {
        k: measure(f, device=device, runs=runs, min_time=0.02)
        for k, f in {**impls, **designs}.items()
    }
    floor_s = output.numel() * output.element_size() / (write_bandwidth(device) * 1e9)
    med = {k: v["median"] for k, v in times.items()}
    return {
        "shape": {"B": B, "N": N, "density": density, "nnz": int(col.numel())},
        "device": device,
        "machine": machine_info(device),
        "times": times,
        "ratios": {
            "fused vs dense eager": med["dense eager (seed)"] / med["fused"],
            "fused vs dense torch.compile": med["dense torch.compile"] / med["fused"],
            "fused vs reference": med["reference (CSR gather)"] / med["fused"],
            "design A / design B": med["design A (save G): loss+G pass, then G * grad_out"]
            / med["design B (recompute, ours): loss pass, then G pass"],
        },
        "floor_seconds": floor_s,
        "fused_over_floor": med["fused"] / floor_s,
    }


def to_markdown(r: dict[str, object]) -> str:
    s, m = r["shape"], r["machine"]
    lines = [
        f"## masked_mse forward+backward, B={s['B']}, N={s['N']}, {100 * s['density']:.2f}% rated "
        f"(nnz={s['nnz']}), float32, {r['device']}",
        "",
        f"Machine: {m['cpu']}, {m['torch_threads']} torch threads, torch {m['torch']}"
        + (f", GPU {m['gpu']}" if "gpu" in m else ""),
        "",
        "| impl | median | q1 | q3 |",
        "|---|---:|---:|---:|",
    ]
    for k, t in r["times"].items():
        lines.append(
            f"| {k} | {t['median'] * 1e3:.3f} ms | {t['q1'] * 1e3:.3f} | {t['q3'] * 1e3:.3f} |"
        )
    lines += ["", "| ratio (medians, same run) | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f}x |" for k, v in r["ratios"].items()]
    lines += [
        "",
        f"Memory floor (write the dense gradient once at the measured fill bandwidth): "
        f"{r['floor_seconds'] * 1e3:.3f} ms; the fused call takes "
        f"{r['fused_over_floor']:.2f}x the floor.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=31, help="timed samples per impl (median taken)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--out", type=Path, help="write masked_mse-<device>.json/.md here")
    args = p.parse_args(argv)
    results = [run(128, 9559, 0.017, args.device, args.runs)]
    md = "\n".join(to_markdown(r) for r in results)
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        tag = args.device.replace(":", "")
        (args.out / f"masked_mse-{tag}.json").write_text(json.dumps(results, indent=1))
        (args.out / f"masked_mse-{tag}.md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
