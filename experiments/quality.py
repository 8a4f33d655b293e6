"""Quality against the classical baselines on several protocols.

    python experiments/quality.py [--data ml-latest-small] [--seeds 5] [--out DIR]

Protocols on ml-latest-small (or --data: any set deeprec loads, e.g. ml-1m, ml-100k):
user-time 0.8 (per user, the last 20% by time) and random 90/10 with seeds 0..4 (the
AutoRec / GLocal-K protocol). On every split, the same validation
ratings (those whose user and item occur in training) are scored by:
- Surprise's SVD and SVD++ (default settings, random_state = the seed; Surprise is an
  experiments-only dependency: pip install scikit-surprise);
- the bias baseline (mu + b_user + b_item, Surprise's BaselineOnly ALS settings);
- deeprec ``--preset best`` (I-AutoRec on residuals), trained on the split's training ratings;
- item and user kNN on the bias baseline's residuals (deeprec.scoring.neighbors: KNNBaseline with
  the shrunk pearson_baseline similarity, k = 40);
- a blend of I-AutoRec, U-AutoRec (the same recipe, rows = users), the bias baseline and
  the two kNN models, with weights fit by least squares on a *nested* split of the training
  ratings (the same rule applied again), each model's weight depending on the log-support
  of the rating's user and item: the reported validation ratings are read once, to score
  the blend (deeprec.quality.blending; ``python -m deeprec.blend`` runs one split).
Writes quality.json and quality.md with bootstrap 95% intervals of each RMSE.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from deeprec.config import Config, load_preset
from deeprec.data import load
from deeprec.quality.blending import blend_predictions
from deeprec.quality.evaluation import bootstrap_rmse

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def surprise_rmse(
    train: pd.DataFrame, val: pd.DataFrame, scale, seed: int
) -> dict[str, np.ndarray]:
    from surprise import SVD, Dataset, Reader, SVDpp

    reader = Reader(rating_scale=scale)
    data = Dataset.load_from_df(train[["user", "item", "rating"]], reader).build_full_trainset()
    out = {}
    for name, algo in (("SVD", SVD(random_state=seed)), ("SVD++", SVDpp(random_state=seed))):
        algo.fit(data)
        out[name] = np.array(
            [algo.predict(u, i).est for u, i in zip(val["user"], val["item"], strict=True)]
        )
    return out


def rmse_ci(pred: np.ndarray, truth: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """(RMSE, 95% bootstrap interval), the interval as deeprec.evaluate computes it."""
    rmse = float(np.sqrt(np.mean((pred - truth) ** 2)))
    return (rmse, *bootstrap_rmse(pred, truth, seed=seed))


def protocol(how: str, seed: int, scale, best: Config, data_dir) -> dict:
    config = best.replace(
        split=how, val_frac=0.2 if how == "user-time" else 0.1, seed=seed, fused=True
    )
    t = time.perf_counter()
    # weights on the nested split only, then one score (deeprec.quality.blending)
    done = blend_predictions(config, data_dir)
    seconds = time.perf_counter() - t
    truth = done.val["rating"].to_numpy(np.float64)
    item, user, bias, item_knn, user_knn = done.parts
    preds = {
        "bias baseline": bias,
        "item kNN": item_knn,
        "user kNN": user_knn,
        "deeprec --preset best (I-AutoRec)": item,
        "U-AutoRec (same recipe, by user)": user,
        "deeprec blend (weights from the nested split)": done.blended,
    }
    preds.update(surprise_rmse(done.train, done.val, scale, seed))
    return {
        "protocol": how,
        "seed": seed,
        "n_val": len(truth),
        "blend_weights": done.weights.round(4).tolist(),
        "deeprec_seconds": round(seconds, 1),
        "rmse": {k: rmse_ci(p, truth, seed) for k, p in preds.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="ml-latest-small", help="dataset [ml-latest-small]")
    p.add_argument("--seeds", type=int, default=5, help="random 90/10 seeds [5]")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    data_dir = os.environ.get("DEEPREC_DATA") or (SHARED if SHARED.exists() else None)
    ds = load(args.data, data_dir)
    best = load_preset("best").replace(data=args.data)
    runs = [protocol("user-time", 0, ds.scale, best, data_dir)]
    print(json.dumps(runs[-1]), flush=True)
    for seed in range(args.seeds):
        runs.append(protocol("random", seed, ds.scale, best, data_dir))
        print(json.dumps(runs[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps(runs, indent=1))
    names = list(runs[0]["rmse"])
    lines = [f"# Quality on {args.data} (experiments/quality.py)", "",
             "RMSE [bootstrap 95% interval] on each split's validation ratings.", "",
             "| protocol | " + " | ".join(names) + " |",
             "|---|" + "---:|" * len(names)]  # fmt: skip
    for r in runs:
        cells = [
            f"{r['rmse'][n][0]:.4f} [{r['rmse'][n][1]:.3f}, {r['rmse'][n][2]:.3f}]" for n in names
        ]
        lines.append(f"| {r['protocol']} seed {r['seed']} | " + " | ".join(cells) + " |")
    rnd = [r for r in runs if r["protocol"] == "random"]
    if rnd:
        means = [f"{np.mean([r['rmse'][n][0] for r in rnd]):.4f}" for n in names]
        lines.append(f"| random 90/10, mean of {len(rnd)} | " + " | ".join(means) + " |")
    (args.out / "quality.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
