"""Per-call overhead of the fused ops (op time minus its kernels' time), and every SIMD variant.

Used by report.py (CPU): at the seed shape (128 x 9,559, 1.7% rated), the fused masked-MSE
forward + backward through the public API on one of deeprec's batches (checked once when
built, as in training), against the same two kernels launched directly; and the
long-tailed Netflix-shape training step under each SIMD variant this CPU runs
(DEEPREC_ISA's choices), with the variant named.
"""

from __future__ import annotations

import torch
from common import measure, rating_batch, seed_dense_masked_mse
from workloads import step_workload

from deeprec import _native
from deeprec.data.matrix import Batch, remember
from deeprec.ops import masked_mse
from deeprec.ops.loss import _run_native


def loss_overhead(runs: int = 101) -> dict[str, float]:
    """Microseconds: op fwd, op fwd+bwd, kernels fwd / bwd, overheads, and the seed's losses."""
    output, (crow, col, val), target = rating_batch(128, 9559, 0.017)
    batch = remember(Batch(torch.arange(128), crow, col.long(), val, 9559))
    out = output.clone().requires_grad_(True)
    loss = output.new_empty(())
    grad = torch.empty_like(output)
    scale = torch.ones((), dtype=output.dtype)

    def op_fwd():
        with torch.no_grad():
            masked_mse(output, batch.csr, impl="fused")

    def op_both():
        out.grad = None
        masked_mse(out, batch.csr, impl="fused").backward()

    compiled = torch.compile(seed_dense_masked_mse, dynamic=False)

    def dense(fn):
        def step():
            out.grad = None
            fn(out, target).backward()

        return step

    us = {
        "op_forward": op_fwd,
        "op_forward_backward": op_both,
        "kernel_forward": lambda: _run_native(output, *batch.csr, loss, None, None),
        "kernel_backward": lambda: _run_native(output, *batch.csr, None, grad, scale),
        "seed_dense_eager": dense(seed_dense_masked_mse),
        "seed_dense_compiled": dense(compiled),
    }
    t = {k: measure(f, runs=runs, warmup=10)["median"] * 1e6 for k, f in us.items()}
    t["overhead_forward"] = t["op_forward"] - t["kernel_forward"]
    t["overhead_backward"] = (t["op_forward_backward"] - t["op_forward"]) - t["kernel_backward"]
    t["fused_vs_eager"] = t["seed_dense_eager"] / t["op_forward_backward"]
    t["fused_vs_compiled"] = t["seed_dense_compiled"] / t["op_forward_backward"]
    return t


def per_variant(runs: int = 5) -> dict[str, dict[str, float]]:
    """Median ms of the long-tailed Netflix-shape step per SIMD variant (fused paths)."""
    before = _native.active_isa()
    out = {}
    try:
        for name in _native.supported_isas():
            _native.use_isa(name)
            w = step_workload("netflix", "cpu", long_tailed=True)
            out[name] = {
                impl: measure(fn, runs=runs, warmup=2)["median"] * 1e3
                for impl, fn in w.impls.items()
                if impl.startswith("--fused")
            }
    finally:
        _native.use_isa(before)
    return out


def to_markdown(o: dict, variants: dict, isa: str) -> str:
    lines = [
        f"## Per-call overhead, seed shape (SIMD variant in use: {isa})",
        "",
        "| what | us |",
        "|---|---:|",
    ]
    for k in ("op_forward", "kernel_forward", "overhead_forward", "op_forward_backward",
              "kernel_backward", "overhead_backward", "seed_dense_eager",
              "seed_dense_compiled"):  # fmt: skip
        lines.append(f"| {k.replace('_', ' ')} | {o[k]:.1f} |")
    lines += [
        "",
        f"fused fwd+bwd vs the seed's eager dense loss: **{o['fused_vs_eager']:.2f}x**; vs its "
        f"torch.compile version: **{o['fused_vs_compiled']:.2f}x**.",
        "",
        "## Long-tailed Netflix-shape step per SIMD variant (median ms)",
        "",
        "| variant | " + " | ".join(next(iter(variants.values()))) + " |",
        "|---|" + "---:|" * len(next(iter(variants.values()))),
    ]
    for name, times in variants.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in times.values()) + " |")
    return "\n".join(lines) + "\n"
