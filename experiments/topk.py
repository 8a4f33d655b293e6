"""Top-k lists on one split: popularity, EASE, the rating autoencoder and Mult-DAE, each
chosen on the inner split of the training ratings, then scored once on the reported
validation ratings with evaluate's protocol (relevant: a validation rating >= 4; every item
the user did not rate in training is a candidate).

    python experiments/topk.py [--data ml-latest-small] [--split user-time] [--out FILE.md]

Candidates are fixed below. The top-k blend adds, to EASE's standardised scores (per user),
w1 x the standardised predicted ratings of the rating recipe (`--preset best`, I-AutoRec)
and w2 x Mult-DAE's: EASE ranks what a user will rate, the rating model what they will
like, which is what "relevant" asks for. EASE's lambda, w1 and w2 are chosen on the inner
split. Numbers go to stdout and, with --out, to a Markdown file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from deeprec.config import Config, load_preset
from deeprec.data import RatingMatrix, load, split
from deeprec.quality import ease, topk_blend
from deeprec.quality.metrics import ranking_metrics

EASE_LAMBDAS = topk_blend.GRID["ease_lambda"]
# Mult-DAE as Liang et al. (2018): one tanh layer, input dropout 0.5, Adam; batch and epochs
# scaled to a 600-user set.
MULT_DAE = [
    dict(hidden=[600], epochs=e, weight_decay=wd, lr=1e-3)
    for e in (50, 100, 200)
    for wd in (0.0, 1e-4)
]
RATING_WEIGHTS = topk_blend.GRID["rating_weight"]
DAE_WEIGHTS = topk_blend.GRID["ranking_weight"]


def matrices(data: str, how: str) -> dict[str, tuple[RatingMatrix, RatingMatrix]]:
    """{inner: the training ratings split again, outer: the reported split}, each as
    (users as rows, items as rows)."""
    ds = load(data)
    train, val = split(ds.ratings, how)
    inner_train, inner_val = split(train, how)
    return {
        name: tuple(RatingMatrix.from_split(a, b, by, ds.scale) for by in ("user", "item"))
        for name, (a, b) in (("inner", (inner_train, inner_val)), ("outer", (train, val)))
    }


def val_users(m: RatingMatrix) -> np.ndarray:
    return np.unique(m.user_view()[0])


def popularity(m: RatingMatrix, users: np.ndarray) -> np.ndarray:
    counts = np.bincount(m.by_user().indices, minlength=m.n_items).astype(float)
    return np.broadcast_to(counts, (len(users), m.n_items))


def ease_scores(m: RatingMatrix, users: np.ndarray, lam: float) -> np.ndarray:
    by_user = m.by_user()
    return ease.fit(by_user, lam).scores(by_user[users])


def mult_dae_scores(m: RatingMatrix, users: np.ndarray, options: dict) -> np.ndarray:
    config = Config(
        objective="multinomial",
        activation="tanh",
        input_dropout=0.5,
        batch_size=128,
        fused=True,
        **options,
    )
    return topk_blend.member_scores(config, m, m, users, None)


def rating_model_scores(m: RatingMatrix, by_item: RatingMatrix, users: np.ndarray) -> np.ndarray:
    """Predicted ratings of the rating recipe (--preset best: I-AutoRec on ``by_item``, the
    same ratings with items as rows), for ``users`` of ``m``, in m's item order."""
    config = load_preset("best").replace(fused=True)
    return topk_blend.member_scores(config, by_item, m, users, None)


standardised = topk_blend.standardised


def ndcg(scores: np.ndarray, users: np.ndarray, m: RatingMatrix) -> float:
    return ranking_metrics(scores, users, m, reps=0)["ndcg@10"]


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    t0 = time.perf_counter()
    split_of = matrices(args.data, args.split)
    (inner, inner_items), (outer, outer_items) = split_of["inner"], split_of["outer"]
    iu, ou = val_users(inner), val_users(outer)
    chosen: dict[str, object] = {}
    inner_scores: dict[str, float] = {}
    ease_inner = {lam: ease_scores(inner, iu, lam) for lam in EASE_LAMBDAS}
    best = max(EASE_LAMBDAS, key=lambda lam: ndcg(ease_inner[lam], iu, inner))
    chosen["EASE lambda"] = best
    inner_scores["EASE"] = ndcg(ease_inner[best], iu, inner)
    trials = []
    for options in MULT_DAE:
        torch.manual_seed(0)
        s = mult_dae_scores(inner, iu, options)
        trials.append((ndcg(s, iu, inner), options, s))
        print(f"inner Mult-DAE {options}: NDCG@10 {trials[-1][0]:.4f}", flush=True)
    score, options, dae_inner = max(trials, key=lambda t: t[0])
    chosen["Mult-DAE"] = options
    inner_scores["Mult-DAE"] = score
    rating_inner = rating_model_scores(inner, inner_items, iu)
    inner_scores["rating model"] = ndcg(rating_inner, iu, inner)
    grid = {}
    for lam in EASE_LAMBDAS:
        for w1 in RATING_WEIGHTS:
            for w2 in DAE_WEIGHTS:
                mix = standardised(ease_inner[lam]) + w1 * standardised(rating_inner)
                grid[lam, w1, w2] = ndcg(mix + w2 * standardised(dae_inner), iu, inner)
    lam_b, w1, w2 = max(grid, key=grid.get)
    chosen["blend"] = {"EASE lambda": lam_b, "rating weight": w1, "Mult-DAE weight": w2}
    inner_scores["blend"] = grid[lam_b, w1, w2]
    # the reported split, once
    dae = mult_dae_scores(outer, ou, options)
    rating = rating_model_scores(outer, outer_items, ou)
    ease_outer = ease_scores(outer, ou, best)
    ease_blend = ease_outer if lam_b == best else ease_scores(outer, ou, lam_b)
    rows = {
        "popularity": popularity(outer, ou),
        "rating model (--preset best)": rating,
        f"EASE (lambda {best:g})": ease_outer,
        "Mult-DAE (--preset topk)": dae,
        f"top-k blend (EASE lambda {lam_b:g} + {w1:g} rating + {w2:g} Mult-DAE)": (
            standardised(ease_blend) + w1 * standardised(rating) + w2 * standardised(dae)
        ),
    }
    table = {name: ranking_metrics(s, ou, outer) for name, s in rows.items()}
    lines = [
        f"# Top-10 on {args.data}, {args.split}",
        "",
        f"Chosen on the inner split: {json.dumps(chosen)}; inner NDCG@10 "
        f"{json.dumps({k: round(v, 4) for k, v in inner_scores.items()})}.",
        "",
        "| model | P@10 | R@10 | NDCG@10 [95% interval] | R@20 | NDCG@100 | coverage@10 | "
        "pop. rank@10 |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for name, r in table.items():
        lo, hi = r["ndcg@10_ci95"]
        lines.append(
            f"| {name} | {r['precision@10']:.4f} | {r['recall@10']:.4f} | "
            f"{r['ndcg@10']:.4f} [{lo:.4f}, {hi:.4f}] | {r['recall@20']:.4f} | "
            f"{r['ndcg@100']:.4f} | {r['coverage@10']:.3f} | {r['popularity_rank@10']:.0f} |"
        )
    lines += ["", f"{table[next(iter(table))]['users']} users; {time.perf_counter() - t0:.0f} s."]
    emit(lines, args.out)


def emit(lines: list[str], out: Path | None) -> None:
    """The report to stdout and, when asked, to a Markdown file."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        out.write_text(text)


def parse_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", default="ml-latest-small")
    p.add_argument("--split", default="user-time")
    p.add_argument("--out", type=Path)
    return p.parse_args()


if __name__ == "__main__":
    main()
