"""The multinomial objective at a catalogue's size: the dense softmax against the fused,
chunked output layer + loss (deeprec.ops.multinomial_nll), medians in one run.

Mult-DAE (``--objective multinomial``) needs every item's logit for its softmax. The dense
path writes a B x items logit matrix and its gradient each step; the fused op computes
the same loss and gradients one chunk of items at a time. Timed, on the same inputs:

- a training step (forward, loss, backward, Adam) of the ``topk`` preset's shape (one
  600-unit tanh layer), dense softmax path (the fused input layer, then linear +
  log_softmax) and fused path (``multinomial_loss(impl="fused")``);
- the output layer + loss alone (forward and backward from fixed hidden activations):
  dense; the fused op with the native epilogue and with the torch-op epilogue (what a
  GPU runs); torch's ``linear_cross_entropy`` with soft targets (the multinomial loss's
  own form: torch takes its dense reference path for them), with hard targets, chunked
  (reduction "none", each row weighted by its count, plus the observed logits' correction:
  the loss exactly) and its fastest chunked form (reduction "sum", equal to this loss only
  because every row here has the same count); and the floor: the same chunks' four GEMMs
  (forward, recompute, dh, dW) alone;
- the epilogue alone (both kernels over every chunk) in each SIMD variant this CPU runs;
- the loss's peak extra memory (forward + backward from fixed h): the growth of the
  process's peak resident set (VmHWM, reset through /proc/self/clear_refs) over its
  resident set before, less the gradients both paths return (dh, dW, db).

    python benchmarks/multinomial_cost.py [--items 87585] [--users-per-step 512]
        [--ratings-per-user 160] [--chunks 256,512,...] [--out FILE.json] [--md FILE.md]

ML-32M: 87,585 items, 200,948 users, about 160 ratings per user.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from common import machine_info, measure

from deeprec.config import Config
from deeprec.model import AutoEncoder
from deeprec.ops import _native, backends, multinomial_nll, recycle, sparse_linear
from deeprec.ops.multinomial import chunk_items
from deeprec.ops.native import CPU, index_code, ptr


def batch(users: int, items: int, per_user: int, seed: int = 0):
    """A random who-rated-what CSR batch: ``per_user`` distinct items per row."""
    g = torch.Generator().manual_seed(seed)
    cols = torch.stack([torch.randperm(items, generator=g)[:per_user] for _ in range(users)])
    col = cols.sort(1).values.reshape(-1).to(torch.int32)
    crow = torch.arange(0, users * per_user + 1, per_user, dtype=torch.int64)
    return crow, col


def dense_softmax_loss(model: AutoEncoder, crow, col) -> torch.Tensor:
    """The dense softmax path: the model's fused input layer and code, then every logit at
    once, log_softmax and the rated items' sum."""
    rows = torch.repeat_interleave(torch.arange(crow.numel() - 1, device=crow.device), crow.diff())
    x_val = model.input_values(crow, col, None, rows)
    first = model.encoder[0]
    z1 = sparse_linear((crow, col, x_val), first.weight, first.bias, impl="fused")
    h = model.decode_hidden(model.encode_rest(z1))
    weight, bias = model.output_layer()
    log_p = F.linear(h, weight, bias).log_softmax(1)
    return -log_p[rows, col.long()].sum() / max(crow.numel() - 1, 1)


def steps(items, users, per_user, hidden, runs, device="cpu"):
    config = Config(objective="multinomial", hidden=[hidden], activation="tanh",
                    input_dropout=0.5)  # fmt: skip
    torch.manual_seed(0)
    model = AutoEncoder.from_config(config, items).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    crow, col = (t.to(device) for t in batch(users, items, per_user))

    def step(loss_fn):
        def run():
            optimizer.zero_grad(set_to_none=True)
            loss_fn().backward()
            optimizer.step()

        return run

    backend = backends.default(device)
    fused = step(lambda: model.multinomial_loss(crow, col, impl="fused", backend=backend))
    dense = step(lambda: dense_softmax_loss(model, crow, col))
    return {
        "dense_softmax": measure(dense, device=device, runs=runs, warmup=2),
        "fused": measure(fused, device=device, runs=runs, warmup=2),
    }


def output_layer(items, users, per_user, hidden, runs, chunk, device="cpu"):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(users, hidden, generator=g).tanh().to(device).requires_grad_()
    W = (torch.randn(items, hidden, generator=g) * 0.05).to(device).requires_grad_()
    b = torch.zeros(items, device=device, requires_grad=True)
    crow, col = (t.to(device) for t in batch(users, items, per_user))
    rows = torch.repeat_interleave(torch.arange(users, device=device), crow.diff())
    counts = crow.diff().to(torch.float32)
    leaves = (h, W, b)

    def backward(loss):
        loss.backward()
        for t in leaves:
            t.grad = None

    def dense_loss():
        log_p = F.linear(h, W, b).log_softmax(1)
        return -log_p[rows, col.long()].sum() / users

    def fused_loss(epilogue="native"):
        return multinomial_nll(h, W, b, (crow, col), impl="fused", chunk=chunk, backend=epilogue)

    def dense():
        backward(dense_loss())

    def fused(epilogue):
        return lambda: backward(fused_loss(epilogue))

    soft = torch.zeros(users, items, device=device)
    soft[rows, col.long()] = 1.0
    first = col.long()[crow[:-1]]  # any one rated item per row, for the hard-target forms

    def torch_soft():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "options ignored": soft targets are not chunked
            opts = torch.nn.LinearCrossEntropyOptions()
            loss = F.linear_cross_entropy(h, W, soft, linear_bias=b, reduction="sum",
                                          options=opts)  # fmt: skip
        backward(loss / users)

    def torch_hard_none(rows_per_chunk):
        opts = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=rows_per_chunk,
                                                  chunking_method=None)  # fmt: skip

        def run():
            per_row = F.linear_cross_entropy(h, W, first, linear_bias=b, reduction="none",
                                             options=opts)  # lse - z_first  # fmt: skip
            z_first = (h * W[first]).sum(1) + b[first]
            z_obs = (h[rows] * W[col.long()]).sum(1) + b[col.long()]
            backward((counts * (per_row + z_first)).sum() / users - z_obs.sum() / users)

        return run

    def torch_hard_sum(rows_per_chunk):
        opts = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=rows_per_chunk,
                                                  chunking_method=None)  # fmt: skip

        def run():  # sum_i (lse_i - z_first): the loss here only since every count is equal
            per = F.linear_cross_entropy(h, W, first, linear_bias=b, reduction="sum", options=opts)
            z_first = (h * W[first]).sum(1) + b[first]
            z_obs = (h[rows] * W[col.long()]).sum(1) + b[col.long()]
            backward(counts[0] * (per + z_first.sum()) / users - z_obs.sum() / users)

        return run

    hd, Wd, bd = (t.detach() for t in leaves)
    buf = torch.empty(users * chunk, device=device)
    G = (torch.randn(users, chunk, generator=g) * 1e-3).to(device)
    dh, dW = torch.zeros_like(hd), torch.empty_like(Wd)

    def gemms():  # the fused op's four GEMMs per chunk, nothing else
        for n0 in range(0, items, chunk):
            n1 = min(items, n0 + chunk)
            Z = buf[: users * (n1 - n0)].view(users, n1 - n0)
            torch.addmm(bd[n0:n1], hd, Wd[n0:n1].t(), out=Z)  # forward
            torch.addmm(bd[n0:n1], hd, Wd[n0:n1].t(), out=Z)  # backward's recompute
            dh.addmm_(G[:, : n1 - n0], Wd[n0:n1])
            torch.mm(G[:, : n1 - n0].t(), hd, out=dW[n0:n1])

    Zd = torch.empty(users, items, device=device)
    Gd = (torch.randn(users, items, generator=g) * 1e-3).to(device)

    def dense_gemms():  # the dense path's three whole-catalogue GEMMs alone
        torch.addmm(bd, hd, Wd.t(), out=Zd)
        torch.mm(Gd, Wd, out=dh)
        torch.mm(Gd.t(), hd, out=dW)

    timed = {
        "dense": dense,
        "dense_gemms": dense_gemms,
        "fused_native_epilogue": fused("native"),
        "fused_torch_epilogue": fused("torch"),
        "gemm_floor": gemms,
        "torch_lce_soft_targets": torch_soft,
        "torch_lce_hard_none_256": torch_hard_none(256),
        "torch_lce_hard_sum_256": torch_hard_sum(256),
    }
    out = {name: measure(fn, device=device, runs=runs, warmup=1) for name, fn in timed.items()}
    check = {
        "fused": float(multinomial_nll(hd, Wd, bd, (crow, col), impl="fused", chunk=chunk)),
        "dense": float(-F.linear(hd, Wd, bd).log_softmax(1)[rows, col.long()].sum() / users),
    }
    out["loss_values"] = check
    out["memory"] = {
        "dense": peak_extra(dense_loss, leaves, device),
        "fused": peak_extra(fused_loss, leaves, device),
    }
    return out


def epilogue_by_isa(items, users, chunk, runs):
    """Both epilogue kernels over every chunk of a fixed logit block, per SIMD variant."""
    g = torch.Generator().manual_seed(2)
    Z = torch.randn(users, chunk, generator=g)
    crow, col = batch(users, chunk, min(chunk, 160))
    state = torch.empty(3, users, dtype=torch.float64)
    lse = torch.randn(users)
    scale = torch.tensor(1.0 / users)
    n_chunks = -(-items // chunk)

    def run():  # the batch's items fall in the first chunk; every chunk is read and rewritten
        for c in range(n_chunks):
            args = dict(Z=ptr(Z), crow=ptr(crow), col=ptr(col), B=users, N=n_chunks * chunk,
                        n0=c * chunk, C=chunk, ldz=chunk, nnz=col.numel(), dtype=Z.dtype,
                        index_dtype=index_code(col))  # fmt: skip
            CPU.launch("multinomial.lse_chunk", Z.device, op="multinomial_nll", reduce=False,
                       run_max=ptr(state[0]), run_sum=ptr(state[1]), observed=ptr(state[2]),
                       **args)  # fmt: skip
            CPU.launch("multinomial.softmax_grad_chunk", Z.device, op="multinomial_nll backward",
                       reduce=False, lse=ptr(lse), scale=ptr(scale), **args)  # fmt: skip

    was = _native.active_isa()
    out = {}
    try:
        for isa in _native.supported_isas():
            _native.use_isa(isa)
            out[isa] = measure(run, runs=runs, warmup=1)
    finally:
        _native.use_isa(was)
    return out


def _malloc_trim() -> None:
    with contextlib.suppress(OSError):  # not glibc: the baseline may include freed memory
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def peak_extra(loss_fn, leaves, device="cpu") -> dict[str, float]:
    """MiB the peak resident set (on a GPU: torch's allocated memory) grows by during a
    forward + backward of ``loss_fn()``, less the gradients it leaves in the leaves' ``.grad``
    (accumulated into, as in training, so nothing is copied for the count). One untimed call
    first, so what a first call allocates once (the BLAS's buffers, thread stacks) is not
    counted. Blocks this large are mmapped by glibc and returned on free, so the resident set
    tracks the live tensors."""

    def clear():
        for t in leaves:
            t.grad = None
        gc.collect()
        recycle.release()  # a recycled gradient block counts as the gradient it becomes
        _malloc_trim()

    loss_fn().backward()
    clear()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        loss_fn().backward()
        torch.cuda.synchronize()
        grown = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
        before = _status_kib("VmRSS")
        loss_fn().backward()
        grown = (_status_kib("VmHWM") - before) / 1024
    grads = sum(t.grad.numel() * t.grad.element_size() for t in leaves) / 2**20
    clear()
    return {"peak_growth_mib": grown, "gradients_mib": grads, "extra_mib": grown - grads}


def chunk_curve(items, users, per_user, hidden, runs, chunks):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(users, hidden, generator=g).tanh().requires_grad_()
    W = (torch.randn(items, hidden, generator=g) * 0.05).requires_grad_()
    b = torch.zeros(items, requires_grad=True)
    crow, col = batch(users, items, per_user)

    def fused(c):
        def run():
            multinomial_nll(h, W, b, (crow, col), impl="fused", chunk=c).backward()
            h.grad = W.grad = b.grad = None

        return run

    return {str(c): measure(fused(c), runs=runs, warmup=1) for c in chunks}


LCE_NONE = (
    "torch `linear_cross_entropy`, hard targets, chunked 256 rows, `none` + count weights "
    "+ correction (exact)"
)
LCE_SUM = "torch `linear_cross_entropy`, chunked 256 rows, `sum` (exact only for equal counts)"


def report_md(r: dict) -> str:
    ms = lambda t: f"{t['median'] * 1e3:,.0f} ms"  # noqa: E731
    o, s, m = r["output_layer"], r["step"], r["machine"]
    floor = o["gemm_floor"]["median"]
    lines = [
        f"# The multinomial loss at {r['items']:,} items, {r['users_per_step']} users per step",
        "",
        f"`python benchmarks/multinomial_cost.py --device {r['device']}` on "
        f"{m.get('gpu', m['cpu'])} ({m['torch_threads']} torch threads, SIMD "
        f"{m['deeprec_build']['cpu_simd_variant']}, torch {m['torch']}); "
        f"{r['ratings_per_user']} items per user, hidden {r['hidden']}, chunk {r['chunk']} "
        "items; medians in one run.",
        "",
        "| a training step (forward, loss, backward, Adam) | median | vs dense |",
        "|---|---:|---:|",
        f"| dense softmax path | {ms(s['dense_softmax'])} | 1.00x |",
        f"| fused (`multinomial_nll`) | {ms(s['fused'])} | "
        f"{s['dense_softmax']['median'] / s['fused']['median']:.2f}x |",
        "",
        "| the output layer + loss, forward + backward | median | vs dense | vs GEMM floor |",
        "|---|---:|---:|---:|",
    ]
    for name, label in [
        ("dense", "dense (linear, log_softmax, gather)"),
        ("fused_native_epilogue", "fused, native epilogue (what a CPU runs)"),
        ("fused_torch_epilogue", "fused, torch-op epilogue (what a GPU runs until measured)"),
        ("torch_lce_soft_targets", "torch `linear_cross_entropy`, soft targets (its dense path)"),
        ("torch_lce_hard_none_256", LCE_NONE),
        ("torch_lce_hard_sum_256", LCE_SUM),
        ("gemm_floor", "the same chunks' four GEMMs alone (the floor)"),
        ("dense_gemms", "the dense path's three GEMMs alone"),
    ]:
        t = o[name]["median"]
        lines.append(f"| {label} | {ms(o[name])} | {o['dense']['median'] / t:.2f}x | "
                     f"{t / floor:.2f}x |")  # fmt: skip
    mem = o["memory"]
    lines += [
        "",
        "| the loss's peak extra memory (growth of the peak resident set, on a GPU of torch's "
        "allocated memory, less the gradients) | MiB |",
        "|---|---:|",
        f"| dense | {mem['dense']['extra_mib']:,.0f} |",
        f"| fused | {mem['fused']['extra_mib']:,.0f} "
        f"({mem['fused']['extra_mib'] / max(mem['dense']['extra_mib'], 1e-9):.3f} of dense) |",
        "",
    ]
    if "epilogue_by_isa" in r:
        lines += [
            "| epilogue alone, every chunk (forward + backward kernels) | median |",
            "|---|---:|",
            *(f"| {isa} | {ms(t)} |" for isa, t in r["epilogue_by_isa"].items()),
            "",
        ]
    lines += [
        f"An epoch of {r['epoch_users']:,} users ({r['epoch_steps']} steps): dense "
        f"{r['epoch_s']['dense_softmax'] / 60:.1f} min, fused {r['epoch_s']['fused'] / 60:.1f} "
        "min (step medians times steps).",
    ]
    if "chunks" in r:
        lines += ["", "| chunk (items) | fused output layer, fwd + bwd |", "|---:|---:|"]
        lines += [f"| {c} | {ms(t)} |" for c, t in r["chunks"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=87_585)
    p.add_argument("--users-per-step", type=int, default=512)
    p.add_argument("--ratings-per-user", type=int, default=160)
    p.add_argument("--hidden", type=int, default=600)
    p.add_argument("--runs", type=int, default=5, help="timed runs per measurement [5]")
    p.add_argument("--epoch-users", type=int, default=200_948, help="users per epoch [ML-32M]")
    p.add_argument("--chunks", help="also time these chunk sizes, e.g. 256,512,1024,2048")
    p.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="where to time; cuda: the step and the output layer, with both epilogues (the "
        "native CUDA one is off in the package until measured) [cpu]",
    )
    p.add_argument("--out", type=Path, help="JSON results")
    p.add_argument("--md", type=Path, help="the Markdown report")
    args = p.parse_args()
    items, users, per = args.items, args.users_per_step, args.ratings_per_user
    chunk = chunk_items(users, items)
    result = {
        "items": items,
        "users_per_step": users,
        "ratings_per_user": per,
        "hidden": args.hidden,
        "chunk": chunk,
        "device": args.device,
        "machine": machine_info(args.device),
        "output_layer": output_layer(items, users, per, args.hidden, args.runs, chunk, args.device),
        "step": steps(items, users, per, args.hidden, args.runs, args.device),
    }
    if args.device == "cpu":
        result["epilogue_by_isa"] = epilogue_by_isa(items, users, chunk, args.runs)
    if args.chunks and args.device == "cpu":
        sizes = [int(c) for c in args.chunks.split(",")]
        result["chunks"] = chunk_curve(items, users, per, args.hidden, args.runs, sizes)
    n_steps = -(-args.epoch_users // users)
    result |= {
        "epoch_users": args.epoch_users,
        "epoch_steps": n_steps,
        "epoch_s": {k: n_steps * v["median"] for k, v in result["step"].items()},
    }
    text = report_md(result)
    print(text)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    if args.md:
        args.md.write_text(text)


if __name__ == "__main__":
    main()
