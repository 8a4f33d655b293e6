"""Would a row-split multinomial op beat the chunked one? Output layer + loss, forward and
backward, at the ML-32M shape (512 users, 87,585 items, hidden 600, 160 items each), in
bf16 and float32, medians of interleaved rounds in one run.

The chunked op (deeprec.ops.multinomial_nll) splits the catalogue: four GEMMs per chunk
(the logits, again in the backward, dh, dW), nothing held between passes. A row-split op
splits the rows: for R rows at a time, every item's logits, the softmax and the logit
gradient formed in the forward, then dW += G^T h_R and dh_R = G W: three GEMMs, at the cost
of an R x items block, and dW accumulated over the row blocks (float32 master weights: one
pass over dW per block). Timed here:

- the chunked op, as training calls it;
- the row-split op written with torch ops (the logit block in the GEMM's dtype, the
  softmax in float32), for R in --rows;
- the row-split op's GEMMs and dW accumulation alone, the floor any native epilogue would
  stand on.

    python benchmarks/row_split.py [--rounds 5] [--rows 64,128,512] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import machine_info
from multinomial_cost import batch as who_rated_what

from deeprec.ops import multinomial_nll

ITEMS, USERS, PER_USER, HIDDEN = 87_585, 512, 160, 600


def inputs(dtype: torch.dtype):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(USERS, HIDDEN, generator=g).tanh().to(dtype).requires_grad_()
    W = (torch.randn(ITEMS, HIDDEN, generator=g) * 0.05).requires_grad_()  # float32 master
    b = torch.zeros(ITEMS, requires_grad=True)
    crow, col = who_rated_what(USERS, ITEMS, PER_USER)
    return h, W, b, crow, col.long()


def chunked(h, W, b, crow, col) -> Callable[[], None]:
    def run():
        loss = multinomial_nll(h, W, b, (crow, col), impl="fused")
        torch.autograd.grad(loss, (h, W, b))

    return run


def row_split(h, W, b, crow, col, R: int, floor: bool) -> Callable[[], None]:
    """Forward and backward of the same loss, R rows at a time (no autograd: the gradient
    is formed in the forward); floor: only the GEMMs and dW's accumulation."""
    dt = h.dtype
    B = h.shape[0]
    counts = crow.diff().float()
    rows = torch.repeat_interleave(torch.arange(B), crow.diff())

    def run():
        Wc, bc = W.detach().to(dt), b.detach().to(dt)  # as autocast would cast them
        hd = h.detach()
        dW = torch.zeros(W.shape)
        db = torch.zeros(b.shape)
        dh = torch.empty(h.shape, dtype=dt)
        loss = torch.zeros(())
        for r0 in range(0, B, R):
            r1 = min(B, r0 + R)
            Z = torch.addmm(bc, hd[r0:r1], Wc.t())
            if not floor:
                logp = Z.float().log_softmax(1)
                inside = (rows >= r0) & (rows < r1)
                rr, cc = rows[inside] - r0, col[inside]
                loss -= logp[rr, cc].sum()
                G = logp.exp_().mul_(counts[r0:r1, None] / B)
                G[rr, cc] -= 1.0 / B
                Z = G.to(dt)
            dW.add_(torch.mm(Z.t(), hd[r0:r1]))
            db.add_(Z.float().sum(0))
            torch.mm(Z, Wc, out=dh[r0:r1])

    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rows", default="64,128,512", help="row-block sizes R")
    p.add_argument("--out", type=Path, help="write row_split.json/.md here")
    args = p.parse_args(argv)
    sizes = [int(r) for r in args.rows.split(",")]
    results = []
    for dtype in (torch.bfloat16, torch.float32):
        leaves = inputs(dtype)
        work = {"chunked op (four GEMMs a chunk)": chunked(*leaves)}
        for R in sizes:
            work[f"row-split R={R}, torch ops"] = row_split(*leaves, R, floor=False)
            work[f"row-split R={R}, GEMMs + dW accumulation only"] = row_split(*leaves, R, True)
        for fn in work.values():
            fn()
        times: dict[str, list[float]] = {k: [] for k in work}
        for r in range(args.rounds):
            for name in list(work)[:: 1 if r % 2 else -1]:
                t0 = time.perf_counter()
                work[name]()
                times[name].append(time.perf_counter() - t0)
        base = statistics.median(times["chunked op (four GEMMs a chunk)"])
        for name, t in times.items():
            m = statistics.median(t)
            results.append({"dtype": str(dtype).removeprefix("torch."), "impl": name,
                            "ms": m * 1e3, "vs_chunked": base / m})  # fmt: skip
            print(f"{dtype} {name}: {m * 1e3:.0f} ms ({base / m:.2f}x the chunked op)", flush=True)
    info = machine_info()
    lines = [
        f"# Row-split against chunked multinomial op ({info['cpu']}, quiet)",
        "",
        f"`python benchmarks/row_split.py --rounds {args.rounds} --rows {args.rows}`: output "
        "layer + loss forward and backward at the ML-32M shape, float32 master weights, h in "
        "the dtype shown. Speed: the chunked op's median over this one's (above 1: faster).",
        "",
        "| dtype | impl | median ms | speed vs the chunked op |",
        "|---|---|---:|---:|",
        *(
            f"| {r['dtype']} | {r['impl']} | {r['ms']:.0f} | {r['vs_chunked']:.2f}x |"
            for r in results
        ),
        "",
    ]
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "row_split.json").write_text(json.dumps({"machine": info, "rows": results},
                                                            indent=1))  # fmt: skip
        (args.out / "row_split.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
