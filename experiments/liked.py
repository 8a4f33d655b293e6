"""The ranking autoencoders learning from the liked items (--liked-at 4) against EASE on
liked items, on one split, with evaluate's protocol (relevant: a validation rating >= 4;
every item the user did not rate in training is a candidate).

    python experiments/liked.py [--data ml-latest-small] [--split user-time] [--out FILE.md]

Everything is chosen on the inner split (the training ratings split again the same way),
never on the reported validation users: each model trains once to its longest candidate
with the inner validation scored after every epoch (the learning rate is constant and the
KL weight follows the update count, so the first E epochs of that run are the run to E
epochs), and the best candidate epoch count is kept; EASE's lambda likewise. The chosen
forms are then trained on the whole training part and scored once on the reported
validation ratings, with paired bootstrap intervals against EASE on liked items.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from topk import emit, table_lines

from deeprec.config import Config, load_preset
from deeprec.data import RatingMatrix, load, split
from deeprec.quality.topk_blend import GRID
from deeprec.scoring import ease
from deeprec.scoring.metrics import RELEVANT_AT, paired_difference, ranking_metrics
from deeprec.scoring.predict import score_items
from deeprec.training import Trainer, fit

# RecVAE as Shenbin et al. set it: encoder width 600, code 200, 5 layers, gamma 0.005, three
# encoder passes per decoder pass, Adam 5e-4, batch 500, input dropout 0.5.
RECVAE = {"recvae": True, "hidden": [600, 200], "lr": 5e-4, "batch_size": 500}
LIKED = {"liked_at": RELEVANT_AT}
MODELS = {  # name: (preset, options over it, candidate epoch counts)
    "Mult-DAE, liked items": ("topk", LIKED, (25, 50, 100, 150, 200)),
    "Mult-VAE, liked items": ("topk-vae", LIKED, (25, 50, 100, 150, 200)),
    "RecVAE": ("topk", RECVAE, (10, 25, 50, 75, 100)),
    "RecVAE, liked items": ("topk", RECVAE | LIKED, (10, 25, 50, 75, 100)),
    # the paper's batch of 500 is one or two updates per pass over 600 users: batch 128 too
    "RecVAE, liked items, batch 128": (
        "topk",
        RECVAE | LIKED | {"batch_size": 128},
        (10, 25, 50, 75, 100),
    ),
    "RecVAE, liked items, batch 128, lr 1e-3": (
        "topk",
        RECVAE | LIKED | {"batch_size": 128, "lr": 1e-3},
        (10, 25, 50, 75, 100),
    ),
}


def matrices(data: str, how: str) -> dict[str, RatingMatrix]:
    """{inner: the training ratings split again, outer: the reported split}, users as rows."""
    ds = load(data)
    train, val = split(ds.ratings, how)
    inner_train, inner_val = split(train, how)
    return {
        "inner": RatingMatrix.from_split(inner_train, inner_val, "user", ds.scale),
        "outer": RatingMatrix.from_split(train, val, "user", ds.scale),
    }


def users_of(m: RatingMatrix) -> np.ndarray:
    return np.unique(m.user_view()[0])


def trained(config: Config, m: RatingMatrix) -> Trainer:
    trainer = Trainer.assemble(config, m, torch.device("cpu"))
    fit(trainer, quiet=True)
    return trainer


def choose_epochs(
    config: Config, m: RatingMatrix, candidates: tuple[int, ...]
) -> tuple[int, float, list[float]]:
    """(best candidate epoch count, its inner NDCG@10, the NDCG@10 of every epoch)."""
    t = trained(config.replace(epochs=max(candidates)), m)
    curve = [r["val_ndcg@10"] for r in t.history]
    best = max(candidates, key=lambda e: curve[e - 1])
    return best, curve[best - 1], curve


def liked_ease_lambda(m: RatingMatrix) -> tuple[float, float]:
    users, by_user = users_of(m), m.by_user()
    got = {}
    for lam in GRID["ease_lambda"]:
        scores = ease.fit(by_user, lam, RELEVANT_AT).scores(by_user[users])
        got[lam] = ranking_metrics(scores, users, m, reps=0)["ndcg@10"]
    best = max(got, key=got.get)
    return best, got[best]


def main() -> None:
    args = parse_args()
    t0 = time.perf_counter()
    split_of = matrices(args.data, args.split)
    inner, outer = split_of["inner"], split_of["outer"]
    chosen, inner_ndcg = {}, {}
    wanted = {k: v for k, v in MODELS.items() if not args.only or k in args.only}
    for name, (preset, options, candidates) in wanted.items():
        config = load_preset(preset).replace(fused=True, **options)
        epochs, score, curve = choose_epochs(config, inner, candidates)
        chosen[name] = config.replace(epochs=epochs)
        inner_ndcg[name] = score
        top = int(np.argmax(curve)) + 1
        print(
            f"inner {name}: {epochs} epochs, NDCG@10 {score:.4f} (any epoch: "
            f"{max(curve):.4f} at {top})",
            flush=True,
        )
    lam, inner_ndcg["EASE, liked items"] = liked_ease_lambda(inner)
    print(f"inner EASE on liked items: lambda {lam:g}", flush=True)
    users, by_user = users_of(outer), outer.by_user()
    rows = {f"EASE on liked items (lambda {lam:g})": ease.fit(by_user, lam, RELEVANT_AT).scores(
        by_user[users])}  # fmt: skip
    for name, config in chosen.items():
        t = trained(config, outer)
        rows[f"{name} ({config.epochs} epochs)"] = score_items(t.model, t.inputs, users, t.plan)
    table = {name: ranking_metrics(s, users, outer) for name, s in rows.items()}
    anchor_name = next(iter(rows))
    lines = [
        f"# Ranking autoencoders on liked items: {args.data}, {args.split}",
        "",
        f"Chosen on the inner split: {json.dumps({k: c.epochs for k, c in chosen.items()})} "
        f"epochs (candidates: {json.dumps({k: m[2] for k, m in wanted.items()})}), "
        f"liked-items EASE lambda {lam:g}; inner "
        f"NDCG@10 {json.dumps({k: round(v, 4) for k, v in inner_ndcg.items()})}.",
        "",
        *table_lines(table, ["ndcg@10", "recall@20", "ndcg@100", "coverage@10"]),
    ]
    lines += ["", "Paired differences of NDCG@10 against EASE on liked items, over the same "
              "users (bootstrap 95% interval):", ""]  # fmt: skip
    for name, s in list(rows.items())[1:]:
        gain, (lo, hi) = paired_difference(s, rows[anchor_name], users, outer)
        lines.append(f"- {name}: {gain:+.4f} [{lo:+.4f}, {hi:+.4f}]")
    lines += ["", f"{len(users)} users; {time.perf_counter() - t0:.0f} s on the machine that ran "
              "it."]  # fmt: skip
    emit(lines, args.out)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="ml-latest-small")
    p.add_argument("--split", default="user-time")
    p.add_argument("--out", type=Path)
    p.add_argument("--only", nargs="+", metavar="NAME", help="these models of MODELS only")
    return p.parse_args()


if __name__ == "__main__":
    main()
