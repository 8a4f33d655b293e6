"""Top-k lists on one split: popularity, EASE, the rating autoencoder and Mult-DAE, each
chosen on the inner split of the training ratings, then scored once on the reported
validation ratings with evaluate's protocol (relevant: a validation rating >= 4; every item
the user did not rate in training is a candidate).

    python experiments/topk.py [--data ml-latest-small] [--split user-time] [--out FILE.md]

Candidates are fixed below; a blend of EASE and Mult-DAE (their scores standardised per
user, mixed with a weight chosen on the inner split) is scored too. Numbers go to stdout
and, with --out, to a Markdown file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from deeprec.config import Config
from deeprec.data import RatingMatrix, load, split
from deeprec.inference.predict import score_items
from deeprec.quality import ease
from deeprec.quality.metrics import ranking_metrics
from deeprec.training import Trainer, fit

EASE_LAMBDAS = (100.0, 250.0, 500.0, 1000.0)
# Mult-DAE as Liang et al. (2018): one tanh layer, input dropout 0.5, Adam; batch and epochs
# scaled to a 600-user set.
MULT_DAE = [
    dict(hidden=[600], epochs=e, weight_decay=wd, lr=1e-3)
    for e in (50, 100, 200)
    for wd in (0.0, 1e-4)
]
BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def matrices(data: str, how: str) -> tuple[RatingMatrix, RatingMatrix]:
    """(inner: the training ratings split again, outer: the reported split), users as rows."""
    ds = load(data)
    train, val = split(ds.ratings, how)
    inner_train, inner_val = split(train, how)
    outer = RatingMatrix.from_split(train, val, "user", ds.scale)
    inner = RatingMatrix.from_split(inner_train, inner_val, "user", ds.scale)
    return inner, outer


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
    trainer = Trainer.assemble(config, m, torch.device("cpu"))
    fit(trainer, quiet=True, evaluate=False)
    return score_items(trainer.model, m, users, "cpu")


def rating_model_scores(m: RatingMatrix, users: np.ndarray) -> np.ndarray:
    """The rating recipe the README recommends with (--preset best), user-based here."""
    from deeprec.config import load_preset

    config = load_preset("best").replace(by="user", fused=True)
    trainer = Trainer.assemble(config, m, torch.device("cpu"))
    fit(trainer, quiet=True, evaluate=False)
    return score_items(trainer.model, trainer.inputs, users, "cpu", offsets=trainer.offsets)


def standardised(scores: np.ndarray) -> np.ndarray:
    mu = scores.mean(1, keepdims=True)
    sd = scores.std(1, keepdims=True)
    return (scores - mu) / np.where(sd > 0, sd, 1.0)


def ndcg(scores: np.ndarray, users: np.ndarray, m: RatingMatrix) -> float:
    return ranking_metrics(scores, users, m, reps=0)["ndcg@10"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="ml-latest-small")
    p.add_argument("--split", default="user-time")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    t0 = time.perf_counter()
    inner, outer = matrices(args.data, args.split)
    iu, ou = val_users(inner), val_users(outer)
    chosen: dict[str, object] = {}
    inner_scores: dict[str, float] = {}
    # EASE: lambda on the inner split
    best = max(EASE_LAMBDAS, key=lambda lam: ndcg(ease_scores(inner, iu, lam), iu, inner))
    chosen["EASE lambda"] = best
    # Mult-DAE: the candidate with the best inner NDCG@10
    trials = []
    for options in MULT_DAE:
        torch.manual_seed(0)
        s = mult_dae_scores(inner, iu, options)
        trials.append((ndcg(s, iu, inner), options, s))
        print(f"inner Mult-DAE {options}: NDCG@10 {trials[-1][0]:.4f}", flush=True)
    score, options, dae_inner = max(trials, key=lambda t: t[0])
    chosen["Mult-DAE"] = options
    inner_scores["Mult-DAE"] = score
    ease_inner = ease_scores(inner, iu, best)
    inner_scores["EASE"] = ndcg(ease_inner, iu, inner)
    mix = {
        w: ndcg(w * standardised(dae_inner) + (1 - w) * standardised(ease_inner), iu, inner)
        for w in BLEND_WEIGHTS
    }
    weight = max(mix, key=mix.get)
    chosen["blend weight of Mult-DAE"] = weight
    inner_scores["blend"] = mix[weight]
    # the reported split, once
    dae = mult_dae_scores(outer, ou, options)
    ease_outer = ease_scores(outer, ou, best)
    rows = {
        "popularity": popularity(outer, ou),
        "deeprec --preset best (by user, ratings)": rating_model_scores(outer, ou),
        f"EASE (lambda {best:g})": ease_outer,
        "Mult-DAE": dae,
        f"blend ({weight:g} Mult-DAE + {1 - weight:g} EASE)": weight * standardised(dae)
        + (1 - weight) * standardised(ease_outer),
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
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
