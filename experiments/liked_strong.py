"""The ranking autoencoders against EASE on liked items under strong generalization (Liang
et al.): users no model trained on, folded in from 80% of their ratings, scored on the rest
with evaluate's rule (relevant: a held-out rating >= 4; folded-in items never recommended).

    python experiments/liked_strong.py [--data ml-latest-small] [--out FILE.md]

The users split as deeprec.quality.strong_generalization splits them (seed 0): each model
trains once on the training users to its longest candidate, the validation users are
scored after every epoch, and the best candidate epoch count is kept (EASE's lambda
likewise, on the validation users); the test users are scored once, with paired bootstrap
intervals against EASE on liked items.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from liked import LIKED, RECVAE
from topk import emit, table_lines

from deeprec.config import load_preset
from deeprec.data import RatingMatrix, load
from deeprec.quality.strong_generalization import held_out_matrix, split_users
from deeprec.quality.topk_blend import GRID
from deeprec.scoring import ease
from deeprec.scoring.metrics import RELEVANT_AT, paired_difference, ranking_metrics
from deeprec.scoring.predict import fold_in_scores
from deeprec.training import Trainer, fit

MODELS = {  # name: (preset, options over it, candidate epoch counts)
    "Mult-DAE": ("topk", {}, (25, 50, 100, 150, 200)),
    "Mult-DAE, liked items": ("topk", LIKED, (25, 50, 100, 150, 200)),
    "Mult-VAE, liked items": ("topk-vae", LIKED, (25, 50, 100, 150, 200)),
    "RecVAE, liked items": ("topk", RECVAE | LIKED, (10, 25, 50, 75, 100)),
}


def main() -> None:
    args = parse_args()
    t0 = time.perf_counter()
    dataset = load(args.data)
    split = split_users(dataset.ratings, seed=0)
    train = RatingMatrix.from_split(split.train, split.train.iloc[:0], "user", dataset.scale)
    held = {
        name: held_out_matrix(split, part, dataset.scale)
        for name, part in (("val", split.val), ("test", split.test))
    }

    def ndcg(scores: np.ndarray, part: str) -> float:
        matrix, users, _ = held[part]
        return ranking_metrics(scores, users, matrix, reps=0)["ndcg@10"]

    def scores_of(t: Trainer, part: str) -> np.ndarray:
        return fold_in_scores(t.model, t.offsets, held[part][2], liked_at=t.config.liked_at)

    rows: dict[str, np.ndarray] = {}
    chosen: dict[str, int] = {}
    val_ndcg: dict[str, float] = {}
    for name, (preset, options, candidates) in MODELS.items():
        config = load_preset(preset).replace(fused=True, epochs=max(candidates), **options)
        t = Trainer.assemble(config, train, torch.device("cpu"))
        curve: list[float] = []
        test_at: dict[int, np.ndarray] = {}

        def each_epoch(trainer: Trainer, record: dict, curve=curve, test_at=test_at,
                       candidates=candidates) -> None:  # fmt: skip
            curve.append(ndcg(scores_of(trainer, "val"), "val"))
            if record["epoch"] in candidates:  # kept, scored only if chosen
                test_at[record["epoch"]] = scores_of(trainer, "test")

        fit(t, [each_epoch], quiet=True, evaluate=False)
        best = max(candidates, key=lambda e: curve[e - 1])
        chosen[name], val_ndcg[name] = best, curve[best - 1]
        rows[f"{name} ({best} epochs)"] = test_at[best]
        print(f"{name}: {best} epochs, validation NDCG@10 {curve[best - 1]:.4f}", flush=True)
    by_user = train.by_user()
    got = {}
    for lam in GRID["ease_lambda"]:
        fitted = ease.fit(by_user, lam, RELEVANT_AT)
        got[lam] = ndcg(fitted.scores(held["val"][2]), "val")
    lam = max(got, key=got.get)
    val_ndcg["EASE, liked items"] = got[lam]
    anchor = ease.fit(by_user, lam, RELEVANT_AT).scores(held["test"][2])
    matrix, users, _ = held["test"]
    table = {f"EASE on liked items (lambda {lam:g})": ranking_metrics(anchor, users, matrix)}
    table |= {name: ranking_metrics(s, users, matrix) for name, s in rows.items()}
    lines = [
        f"# Ranking autoencoders on liked items, strong generalization: {args.data}",
        "",
        f"Chosen on the validation users: epochs {json.dumps(chosen)}, liked-items EASE lambda "
        f"{lam:g}; validation NDCG@10 {json.dumps({k: round(v, 4) for k, v in val_ndcg.items()})}.",
        "",
        *table_lines(table, ["ndcg@10", "recall@20", "ndcg@100"], "model (test users)"),
    ]
    lines += ["", "Paired differences of NDCG@10 against EASE on liked items (test users):", ""]
    for name, s in rows.items():
        gain, (lo, hi) = paired_difference(s, anchor, users, matrix)
        lines.append(f"- {name}: {gain:+.4f} [{lo:+.4f}, {hi:+.4f}]")
    n_test = next(iter(table.values()))["users"]
    lines += ["", f"{train.n_users} training users, {n_test} test users with a relevant "
              f"rating; {time.perf_counter() - t0:.0f} s."]  # fmt: skip
    emit(lines, args.out)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="ml-latest-small")
    p.add_argument("--out", type=Path)
    return p.parse_args()


if __name__ == "__main__":
    main()
