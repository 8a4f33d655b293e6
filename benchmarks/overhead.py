"""Per-call overhead of the fused ops (op time minus its kernels' time), and every SIMD variant.

Used by report.py (CPU): at the seed shape (128 x 9,559, 1.7% rated), the fused masked-MSE
forward + backward through the public API on one of deeprec's batches (checked once when
built, as in training), against the same two kernels launched directly; and the
long-tailed Netflix-shape training step under each SIMD variant this CPU runs
(DEEPREC_ISA's choices), with the variant named.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
from common import measure, rating_batch, seed_dense_masked_mse
from workloads import step_workload

from deeprec.csr import Batch
from deeprec.ops import _native, masked_mse, row_adam_step, sparse_linear, sparse_output_mse
from deeprec.ops.masked_mse import launch_kernel
from deeprec.ops.native import CPU


class _NoKernels:
    """The compiled module with every kernel entry point (``*_cpu``, ``*_cuda``) a no-op."""

    def __init__(self, real) -> None:
        self._real = real

    def __getattr__(self, name: str):
        attr = getattr(self._real, name)
        if callable(attr) and name.endswith(("_cpu", "_cuda")):
            return lambda *args, **kwargs: 0
        return attr


@contextmanager
def kernels_skipped():
    """Every op with its native kernel calls made no-ops (deeprec.ops.native still runs):
    what the op still costs is its per-call overhead (checks, dispatch, autograd,
    allocation, the launch itself), whatever the number of kernels."""
    real = _native.module
    stub = _NoKernels(real())
    _native.module = lambda: stub
    try:
        yield
    finally:
        _native.module = real


def our_batch(crow, col, val) -> Batch:
    """The seed-shape batch as deeprec builds one (its distinct columns counted on the host)."""
    return Batch(crow, col.long(), val, 9559, int(torch.unique(col).numel()), torch.arange(128))


def seed_op_calls(hidden: int = 512) -> dict[str, tuple[Callable, Callable | None]]:
    """Every op at the seed shape (128 x 9,559, 1.7% rated; the seed's 512-wide first and
    last layers) through its public function, on one of deeprec's batches: (forward,
    forward + backward or None), each clearing the gradients it makes."""
    _, (crow, col, val), _ = rating_batch(128, 9559, 0.017)
    batch = our_batch(crow, col, val)
    g = torch.Generator().manual_seed(1)
    w_in = (torch.randn(9559, hidden, generator=g) * 0.01).requires_grad_(True)
    b_in = torch.zeros(hidden, requires_grad=True)
    w_out = (torch.randn(9559, hidden, generator=g) * 0.01).requires_grad_(True)
    b_out = torch.zeros(9559, requires_grad=True)
    h = torch.randn(128, hidden, generator=g).requires_grad_(True)
    out = torch.rand(128, 9559, generator=g).mul(5).requires_grad_(True)
    g_lin = torch.randn(128, hidden, generator=g)
    idx = batch.index
    with torch.no_grad():
        moments = torch.zeros_like(w_in), torch.zeros_like(w_in)
    sparse_grad = sparse_linear(batch.csr, w_in, b_in, index=idx, sparse_grad=True)
    sparse_grad.backward(g_lin)
    adam_grad = w_in.grad.coalesce()
    w_in.grad = None
    p = w_in.detach().clone()

    def clear():
        for t in (w_in, b_in, w_out, b_out, h, out):
            t.grad = None

    def cleared(fn):
        def call():
            clear()
            return fn()

        return call

    calls = {
        "masked_mse": (
            lambda: masked_mse(out, batch.csr, impl="fused"),
            lambda: masked_mse(out, batch.csr, impl="fused").backward(),
        ),
        "sparse_linear": (
            lambda: sparse_linear(batch.csr, w_in, b_in, index=idx, sparse_grad=True),
            lambda: sparse_linear(batch.csr, w_in, b_in, index=idx, sparse_grad=True).backward(
                g_lin
            ),
        ),
        "sparse_output_mse": (
            lambda: sparse_output_mse(h, w_out, b_out, batch.csr, index=idx, sparse_grad=True),
            lambda: sparse_output_mse(
                h, w_out, b_out, batch.csr, index=idx, sparse_grad=True
            ).backward(),
        ),
        "row_adam_step": (
            lambda: row_adam_step(p, *moments, adam_grad, 1, 1e-3, (0.9, 0.999), 1e-8, 0.0, True),
            None,
        ),
    }
    return {
        name: (cleared(fwd), None if both is None else cleared(both))
        for name, (fwd, both) in calls.items()
    }


def op_overheads(runs: int = 101, hidden: int = 512) -> dict[str, dict[str, float]]:
    """Microseconds per op at the seed shape (seed_op_calls), forward and forward +
    backward: the op, the op with its kernels skipped (the overhead), and their difference
    (the kernels). Backward overhead is (fwd + bwd overhead) - (fwd overhead)."""
    calls = seed_op_calls(hidden)

    def timed(fn) -> float:
        return measure(fn, runs=runs, warmup=10)["median"] * 1e6

    res: dict[str, dict[str, float]] = {}
    for name, (fwd, both) in calls.items():
        r = {"op_forward": timed(fwd)}
        with kernels_skipped():
            r["overhead_forward"] = timed(fwd)
        if both is not None:
            r["op_forward_backward"] = timed(both)
            with kernels_skipped():
                r["overhead_forward_backward"] = timed(both)
            r["overhead_backward"] = r["overhead_forward_backward"] - r["overhead_forward"]
        r["kernels"] = r.get("op_forward_backward", r["op_forward"]) - r.get(
            "overhead_forward_backward", r["overhead_forward"]
        )
        res[name] = r
    return res


def loss_overhead(runs: int = 101) -> dict[str, float]:
    """Microseconds: op fwd, op fwd+bwd, kernels fwd / bwd, overheads, and the seed's losses."""
    output, (crow, col, val), target = rating_batch(128, 9559, 0.017)
    batch = our_batch(crow, col, val)
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
        "kernel_forward": lambda: launch_kernel(CPU, output, *batch.csr, loss, None, None),
        "kernel_backward": lambda: launch_kernel(CPU, output, *batch.csr, None, grad, scale),
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


def ops_markdown(ops: dict[str, dict[str, float]], isa: str) -> str:
    """The op_overheads table: microseconds, overheads against the 50 us budget."""
    lines = [
        f"## Per-call overhead of every op, seed shape, kernels skipped (SIMD variant: {isa})",
        "",
        "| op | op fwd us | overhead fwd us | op fwd+bwd us | overhead bwd us | kernels us |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in ops.items():
        cells = [r.get(k) for k in ("op_forward", "overhead_forward", "op_forward_backward",
                                    "overhead_backward", "kernels")]  # fmt: skip
        shown = " | ".join("-" if c is None else f"{c:.1f}" for c in cells)
        lines.append(f"| {name} | {shown} |")
    return "\n".join(lines) + "\n"


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
        "Kernel rows: the two kernels launched alone, back to back on warm buffers; inside the "
        "op they run colder, so op - kernel here is an upper bound on the overhead (the "
        "per-op table below skips the kernels instead and measures it directly).",
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
