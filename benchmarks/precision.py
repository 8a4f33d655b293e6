"""Training steps in float32 against bf16 (``--precision bf16``), medians in one run.

Each workload is built as ``deeprec.train`` builds it (Config -> plan -> optimizer), once per
precision, and the two are timed in interleaved rounds (each goes first in every other
round), so a drift of the machine hits both alike:

- the Mult-DAE step at the ML-32M shape (the ``topk`` preset's model: one 600-unit tanh
  layer; 512 users, 87,585 items, 160 items each), fused (``--fused``: the chunked output
  layer + loss) and dense (the fused input layer, then every logit at once and
  log_softmax: benchmarks/multinomial_cost.py's dense step), and the fused step over the
  dense one in each precision;
- the rating path (``--fused``, the seed model) at the ML-32M shape, one long-tailed batch
  of 512 users;
- one epoch of the seed recipe (ml-latest-small, batch 32), ``--fused`` and dense.

``--busy`` runs one busy process beside the timing (a loaded machine).

    python benchmarks/precision.py [--rounds 5] [--busy] [--only NAME] [--out DIR]

Writes precision[-busy].json and .md into --out (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import busy_beside, machine_info
from multinomial_cost import batch as who_rated_what
from multinomial_cost import dense_softmax_loss
from workloads import SEED_HIDDEN, long_tailed_batch, seed_matrix

from deeprec import precision
from deeprec.config import Config
from deeprec.data import Batch
from deeprec.model import AutoEncoder
from deeprec.training import batch_loss, plan, run_epoch
from deeprec.training.optim import build as build_optimizer

CPU = torch.device("cpu")
PRECISIONS = ("fp32", "bf16")


def _trainer(config: Config, n_in: int, bf16: bool):
    """(model, optimizer, plan) as deeprec.train builds them, in fp32 or bf16."""
    torch.manual_seed(0)
    model = AutoEncoder.from_config(config, n_in)
    path = dataclasses.replace(plan(config, CPU), precision="bf16" if bf16 else "fp32")
    return model, build_optimizer(config, model, path), path


def _step(model, opt, path, batch) -> Callable[[], object]:
    def step():
        loss = batch_loss(model, batch, path)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def mult_dae(fused: bool) -> dict[str, Callable[[], object]]:
    items, users, per_user = 87_585, 512, 160
    crow, col = who_rated_what(users, items, per_user)
    n_unique = int(torch.unique(col).numel())
    batch = Batch(crow, col.long(), torch.ones(col.numel()), items, n_unique,
                  torch.arange(users))  # fmt: skip
    batch.index  # noqa: B018  (built once, outside the timed step)
    config = Config(objective="multinomial", hidden=[600], activation="tanh",
                    input_dropout=0.5, fused=True)  # fmt: skip
    steps = {}
    for p in PRECISIONS:
        model, opt, path = _trainer(config, items, p == "bf16")
        if fused:
            steps[p] = _step(model, opt, path, batch)
            continue

        def dense(m=model, o=opt, t=path):
            with precision.autocast(t.precision, CPU):
                loss = dense_softmax_loss(m, batch.crow, batch.col)
            o.zero_grad(set_to_none=True)
            loss.backward()
            o.step()

        steps[p] = dense
    return steps


def rating_step() -> dict[str, Callable[[], object]]:
    batch = long_tailed_batch("ml-32m")
    batch.index  # noqa: B018
    config = Config(hidden=list(SEED_HIDDEN), fused=True)
    return {p: _step(*_trainer(config, batch.n_cols, p == "bf16"), batch) for p in PRECISIONS}


def seed_epoch(fused: bool) -> dict[str, Callable[[], object]]:
    matrix, _ = seed_matrix()
    config = Config(fused=fused, batch_size=32)
    out = {}
    for p in PRECISIONS:
        model, opt, path = _trainer(config, matrix.n_cols, p == "bf16")
        gen = torch.Generator().manual_seed(0)
        out[p] = lambda m=model, o=opt, t=path, g=gen: run_epoch(
            m, o, matrix.batches(32, "cpu", generator=g), t
        )
    return out


WORKLOADS: dict[str, Callable[[], dict[str, Callable[[], object]]]] = {
    "Mult-DAE step, ML-32M, --fused": lambda: mult_dae(True),
    "Mult-DAE step, ML-32M, dense softmax": lambda: mult_dae(False),
    "rating step, ML-32M long-tailed, --fused": rating_step,
    "seed epoch b32, --fused": lambda: seed_epoch(True),
    "seed epoch b32, dense": lambda: seed_epoch(False),
}


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--busy", action="store_true", help="one busy process beside the timing")
    p.add_argument("--only", action="append", help="a workload name's start (repeatable)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    why = precision.cpu_bf16_refusal()
    if why is not None:
        p.error(f"bf16 is refused on this machine: {why}")
    names = [n for n in WORKLOADS if not args.only or any(n.startswith(o) for o in args.only)]
    rows = []
    with busy_beside(args.busy):
        for name in names:
            work = WORKLOADS[name]()
            for fn in work.values():  # warm up (allocations, oneDNN's kernel choice)
                fn()
            times: dict[str, list[float]] = {k: [] for k in work}
            for r in range(args.rounds):
                for kind in PRECISIONS[:: 1 if r % 2 else -1]:
                    times[kind].append(timed(work[kind]))
            f, b = (statistics.median(times[k]) for k in PRECISIONS)
            each = [a / c for a, c in zip(times["fp32"], times["bf16"], strict=True)]
            rows.append({"workload": name, "fp32_ms": f * 1e3, "bf16_ms": b * 1e3,
                         "speedup": f / b, "speedup_range": [min(each), max(each)]})  # fmt: skip
            print(f"{name}: fp32 {f * 1e3:.1f} ms, bf16 {b * 1e3:.1f} ms, {f / b:.2f}x",
                  flush=True)  # fmt: skip
            del work
    info = machine_info()
    info["bf16_instructions"] = ", ".join(precision.cpu_bf16_instructions() or []) or "none"
    load = "one busy process beside it" if args.busy else "quiet"
    lines = [
        f"# float32 against bf16 training ({info['cpu']}, {info['cpu_count']} cores, {load})",
        "",
        f"`python benchmarks/precision.py --rounds {args.rounds}"
        f"{' --busy' if args.busy else ''}`: each workload built as deeprec.train builds it, "
        "once per precision, timed in interleaved rounds. Speedup: the float32 median over "
        "the bf16 one (range: per round).",
        "",
        f"Machine: {info['cpu']}; ISA flags with bf16: {info['bf16_instructions']}; "
        f"torch {info.get('torch', torch.__version__)}, {torch.get_num_threads()} threads.",
        "",
        "| workload | fp32 ms | bf16 ms | speedup | per-round range |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        lo, hi = r["speedup_range"]
        lines.append(f"| {r['workload']} | {r['fp32_ms']:.1f} | {r['bf16_ms']:.1f} | "
                     f"{r['speedup']:.2f}x | {lo:.2f}-{hi:.2f} |")  # fmt: skip
    by = {r["workload"]: r for r in rows}
    fused, dense = (by.get(f"Mult-DAE step, ML-32M, {k}") for k in ("--fused", "dense softmax"))
    if fused and dense:
        lines += [
            "",
            "The fused Mult-DAE step over the dense one: "
            + ", ".join(f"{p} {dense[f'{p}_ms'] / fused[f'{p}_ms']:.2f}x" for p in PRECISIONS)
            + ".",
        ]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "precision-busy" if args.busy else "precision"
    (args.out / f"{stem}.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
