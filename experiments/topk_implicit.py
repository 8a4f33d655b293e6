"""ALS and BPR (the `implicit` package, an experiments-only dependency: `pip install
implicit`) as top-k anchors on the protocol of experiments/topk.py: options chosen on the
inner split, the reported split scored once.

    python experiments/topk_implicit.py [--data ml-latest-small] [--split user-time] [--out FILE.md]
"""

from __future__ import annotations

import time

import numpy as np
from topk import emit, matrices, ndcg, parse_args, val_users

from deeprec.data import RatingMatrix
from deeprec.scoring.metrics import ranking_metrics

ALS = [dict(factors=f, regularization=r, iterations=15) for f in (32, 64, 128) for r in (0.01, 0.1)]
BPR = [
    dict(factors=f, learning_rate=lr, regularization=0.01, iterations=100)
    for f in (32, 64)
    for lr in (0.01, 0.05)
]


def scores(kind: str, m: RatingMatrix, users: np.ndarray, options: dict) -> np.ndarray:
    import implicit

    rated = m.by_user().copy().astype(np.float32)
    rated.data[:] = 1.0
    cls = (
        implicit.als.AlternatingLeastSquares
        if kind == "ALS"
        else (implicit.bpr.BayesianPersonalizedRanking)
    )
    model = cls(**options, random_state=0)
    model.fit(rated, show_progress=False)
    user_f = np.asarray(model.user_factors)
    item_f = np.asarray(model.item_factors)
    return user_f[users] @ item_f.T


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    t0 = time.perf_counter()
    split_of = matrices(args.data, args.split)
    inner, outer = split_of["inner"][0], split_of["outer"][0]
    iu, ou = val_users(inner), val_users(outer)
    lines = [
        f"# ALS and BPR (implicit) on {args.data}, {args.split}",
        "",
        "| model | options chosen on the inner split (inner NDCG@10) | P@10 | NDCG@10 "
        "[95% interval] | R@20 |",
        "|---|---|---:|---|---:|",
    ]
    for kind, grid in (("ALS", ALS), ("BPR", BPR)):
        trials = [(ndcg(scores(kind, inner, iu, o), iu, inner), o) for o in grid]
        best, options = max(trials, key=lambda t: t[0])
        r = ranking_metrics(scores(kind, outer, ou, options), ou, outer)
        lo, hi = r["ndcg@10_ci95"]
        lines.append(
            f"| {kind} | {options} ({best:.4f}) | {r['precision@10']:.4f} | "
            f"{r['ndcg@10']:.4f} [{lo:.4f}, {hi:.4f}] | {r['recall@20']:.4f} |"
        )
    lines += ["", f"{time.perf_counter() - t0:.0f} s."]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
