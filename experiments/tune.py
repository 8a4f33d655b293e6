"""Honest hyper-parameter search for `--preset best` (issue #6).

    python experiments/tune.py [--data-dir DIR] [--quick] [--out experiments/results]

For each split protocol (user-time 0.8 and global-time 0.98 on ml-latest-small) the
*training* ratings are split again with the same protocol (a nested split). Every
candidate is trained on the inner training part and scored on the inner validation part
every 5 epochs; the reported validation ratings are never looked at during the search.
The candidate (and epoch count) with the best mean inner RMSE over both protocols wins;
it is then trained once on each full training split and evaluated once on its reported
validation split. Writes tuning.md and tuning.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from deeprec.config import Config, decide_path, load_preset
from deeprec.data import RatingMatrix, load, split
from deeprec.optim import build as build_optimizer
from deeprec.run import build_model, model_inputs
from deeprec.training import epoch_lr, flushed_denormals, run_epoch, set_lr, validate

SPLITS = {"user-time": {}, "global-time": {}}
BASE = load_preset("seed").replace(fused=True)
# The search space: orientation, residual learning over the bias baseline, width, activation,
# denoising (input dropout), code dropout, L2 weight decay.
GRID = [
    dict(by="item", hidden=[200], activation="sigmoid", residual=True, weight_decay=1e-3),
    dict(by="item", hidden=[500], activation="sigmoid", residual=True, weight_decay=1e-3),
    dict(by="item", hidden=[200], activation="sigmoid", residual=True, weight_decay=3e-3),
    dict(
        by="item",
        hidden=[200],
        activation="sigmoid",
        residual=True,
        weight_decay=1e-3,
        input_dropout=0.2,
    ),
    dict(
        by="item",
        hidden=[500, 200],
        activation="selu",
        residual=True,
        weight_decay=1e-3,
        dropout=0.3,
    ),
    dict(by="user", hidden=[200], activation="sigmoid", residual=True, weight_decay=1e-3),
    dict(
        by="user",
        hidden=[512, 512, 1024],
        activation="selu",
        residual=True,
        weight_decay=1e-3,
        dropout=0.5,
        input_dropout=0.2,
    ),
    dict(
        by="item",
        hidden=[500],
        activation="sigmoid",
        residual=False,
        weight_decay=1e-3,
        input_dropout=0.2,
    ),
]
# Round 2, added after round 1's table: around its winner (learning rate, decay, width, batch).
GRID += [
    dict(by="item", hidden=[200], activation="sigmoid", residual=True, weight_decay=1e-3, lr=3e-4),
    dict(by="item", hidden=[200], activation="sigmoid", residual=True, weight_decay=3e-4),
    dict(by="item", hidden=[100], activation="sigmoid", residual=True, weight_decay=1e-3),
    dict(
        by="item",
        hidden=[200],
        activation="sigmoid",
        residual=True,
        weight_decay=1e-3,
        batch_size=256,
    ),
    dict(by="user", hidden=[200], activation="sigmoid", residual=True, weight_decay=3e-3),
]
# Round 3, added after round 2's table: around its winner (batch 256).
GRID += [
    dict(
        by="item",
        hidden=[200],
        activation="sigmoid",
        residual=True,
        weight_decay=1e-3,
        batch_size=512,
    ),
    dict(
        by="item",
        hidden=[100],
        activation="sigmoid",
        residual=True,
        weight_decay=1e-3,
        batch_size=256,
    ),
    dict(
        by="item",
        hidden=[200],
        activation="sigmoid",
        residual=True,
        weight_decay=1e-3,
        batch_size=256,
        input_dropout=0.2,
    ),
    dict(
        by="item",
        hidden=[400],
        activation="sigmoid",
        residual=True,
        weight_decay=2e-3,
        batch_size=256,
    ),
]
# Round 4, after round 3's table: its winner with a cosine learning-rate schedule (the schedule
# fixes the length, so these are scored at their last epoch only) and with dense re-feeding.
GRID += [
    dict(
        by="item",
        hidden=[200],
        activation="sigmoid",
        residual=True,
        weight_decay=1e-3,
        batch_size=256,
        input_dropout=0.2,
        lr_schedule="cosine",
        epochs=40,
    ),
    dict(
        by="item",
        hidden=[200],
        activation="sigmoid",
        residual=True,
        weight_decay=1e-3,
        batch_size=256,
        input_dropout=0.2,
        lr_schedule="cosine",
        epochs=60,
        lr=2e-3,
    ),
    dict(
        by="item",
        hidden=[200],
        activation="sigmoid",
        residual=True,
        weight_decay=1e-3,
        batch_size=256,
        input_dropout=0.2,
        refeed=True,
    ),
]
COMMON = dict(lr=1e-3, batch_size=64, optimizer="adam")


def fit(
    config: Config, matrix: RatingMatrix, epochs: int, every: int = 5
) -> list[tuple[int, float]]:
    """Train on matrix's training part; (epoch, validation RMSE) every `every` epochs.

    The same code path as `python -m deeprec.train --fused` (model, optimizer, learning-rate
    schedule, re-feeding, epochs), without checkpoints.
    """
    torch.manual_seed(config.seed)
    inputs, offsets = model_inputs(config, matrix)
    model = build_model(config, matrix.n_cols)
    path = decide_path(config, torch.device("cpu"))
    opt = build_optimizer(config.optimizer, model, config.lr, config.weight_decay, path.sparse_grad)
    gen = torch.Generator().manual_seed(config.seed)
    schedule = config.replace(epochs=epochs)
    out = []
    for epoch in range(1, epochs + 1):
        set_lr(opt, epoch_lr(schedule, epoch))
        batches = inputs.batches(config.batch_size, generator=gen)
        run_epoch(model, opt, batches, path, config.refeed)
        if epoch % every == 0 or epoch == epochs:
            out.append((epoch, validate(model, inputs, "cpu", offsets)["val_rmse"]))
    return out


def matrices(data_dir: str | None, how: str, nested: bool) -> dict[str, RatingMatrix]:
    ds = load("ml-latest-small", data_dir)
    train, val = split(ds.ratings, how)
    if nested:
        train, val = split(train, how)
    return {by: RatingMatrix.from_split(train, val, by, ds.scale) for by in ("user", "item")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-dir", help="folder holding ml-latest-small/ (default: $DEEPREC_DATA)")
    p.add_argument("--epochs", type=int, default=60, help="epochs per candidate (scored every 5)")
    p.add_argument("--quick", action="store_true", help="first 2 candidates, 10 epochs")
    p.add_argument("--out", type=Path, default=Path("experiments/results"))
    args = p.parse_args(argv)
    grid = GRID[:2] if args.quick else GRID
    epochs = 10 if args.quick else args.epochs
    with flushed_denormals():
        inner = {how: matrices(args.data_dir, how, nested=True) for how in SPLITS}
        # Inner curves are deterministic: keep them, so adding a round reruns only its candidates.
        args.out.mkdir(parents=True, exist_ok=True)
        cache_file = args.out / "tuning-cache.json"
        cache = json.loads(cache_file.read_text()) if cache_file.exists() and not args.quick else {}
        rows = []
        for i, cand in enumerate(grid):
            config = BASE.replace(**{**COMMON, **cand})
            t0 = time.time()
            n = cand.get("epochs", epochs)  # a schedule's candidate brings its own length
            every = n if "lr_schedule" in cand else 5
            curves = {}
            for how in SPLITS:
                key = json.dumps([cand, how, n], sort_keys=True)
                if key not in cache:
                    cache[key] = fit(config, inner[how][cand["by"]], n, every)
                    cache_file.write_text(json.dumps(cache))
                curves[how] = [tuple(x) for x in cache[key]]
            mean = {
                e: float(np.mean([dict(c)[e] for c in curves.values()]))
                for e, _ in curves["user-time"]
            }
            best_epoch = min(mean, key=mean.get)
            rows.append(
                {
                    "candidate": i,
                    "config": cand,
                    "curves": curves,
                    "best_epoch": best_epoch,
                    "inner_rmse": {how: dict(c)[best_epoch] for how, c in curves.items()},
                    "mean_inner_rmse": mean[best_epoch],
                    "seconds": time.time() - t0,
                }
            )
            print(
                f"[{i}] {cand} -> epoch {best_epoch}: inner "
                + ", ".join(f"{h} {dict(c)[best_epoch]:.4f}" for h, c in curves.items())
                + f" ({time.time() - t0:.0f}s)",
                flush=True,
            )
        best = min(rows, key=lambda r: r["mean_inner_rmse"])
        config = BASE.replace(**{**COMMON, **best["config"], "epochs": best["best_epoch"]})
        final = {}
        for how in SPLITS:
            outer = matrices(args.data_dir, how, nested=False)[config.by]
            final[how] = fit(config, outer, config.epochs, every=config.epochs)[-1][1]
            print(f"final {how}: validation RMSE {final[how]:.4f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tuning.json").write_text(
        json.dumps(
            {"grid": rows, "chosen": config.to_dict(), "final_val_rmse": final},
            indent=1,
            default=str,
        )
    )
    lines = [
        "# Hyper-parameter search (nested splits; reported validation never used to choose)",
        "",
        "| # | candidate | best epoch | inner user-time RMSE | inner global-time RMSE | mean |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        mark = " **chosen**" if r is best else ""
        lines.append(
            f"| {r['candidate']}{mark} | `{json.dumps(r['config'])}` | {r['best_epoch']} | "
            f"{r['inner_rmse']['user-time']:.4f} | {r['inner_rmse']['global-time']:.4f} | "
            f"{r['mean_inner_rmse']:.4f} |"
        )
    lines += [
        "",
        "Chosen recipe trained once on each full training split, evaluated once:",
        "",
        "| split | validation RMSE |",
        "|---|---:|",
    ]
    lines += [f"| {h} | {v:.4f} |" for h, v in final.items()]
    (args.out / "tuning.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
