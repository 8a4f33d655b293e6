"""Top-k lists on one split: popularity, EASE, the rating autoencoder and Mult-DAE, each
chosen on the inner split of the training ratings, then scored once on the reported
validation ratings with evaluate's protocol (relevant: a validation rating >= 4; every item
the user did not rate in training is a candidate).

    python experiments/topk.py [--data ml-latest-small] [--split user-time] [--out FILE.md]

Candidates are fixed below. The top-k blend (deeprec.quality.topk_blend) adds, to EASE's
standardised scores (per user), w1 x the standardised predicted ratings of the rating recipe
(`--preset best`, I-AutoRec) and w2 x Mult-DAE's; EASE's form (every rated item, or only
the liked ones), its lambda, w1 and w2 are chosen on the inner split from the blend's grid.
EASE as published (lambda chosen alone) is the anchor. Numbers go to stdout and, with
--out, to a Markdown file.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from deeprec.config import Config, load_preset
from deeprec.data import RatingMatrix, load, split
from deeprec.quality import topk_blend
from deeprec.quality.topk_blend import Recipe
from deeprec.scoring import ease
from deeprec.scoring.metrics import (
    RELEVANT_AT,
    paired_difference,
    popularity,
    ranking_metrics,
)

# Mult-DAE as Liang et al. (2018): one tanh layer, input dropout 0.5, Adam; batch and epochs
# scaled to a 600-user set.
MULT_DAE = [
    dict(hidden=[600], epochs=e, weight_decay=wd, lr=1e-3)
    for e in (50, 100, 200)
    for wd in (0.0, 1e-4)
]
PRESET_DAE = MULT_DAE[2]  # what the search chose on user-time: the topk preset
LIKED = RELEVANT_AT  # the liked-items form of EASE reads ratings at least this


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
    trials = []
    for options in MULT_DAE if args.search_mult_dae else [PRESET_DAE]:
        torch.manual_seed(0)
        s = mult_dae_scores(inner, iu, options)
        trials.append((ndcg(s, iu, inner), options, s))
        print(f"inner Mult-DAE {options}: NDCG@10 {trials[-1][0]:.4f}", flush=True)
    dae_ndcg, options, dae_inner = max(trials, key=lambda t: t[0])
    rating_inner = rating_model_scores(inner, inner_items, iu)
    rated = inner.by_user()
    grid = topk_blend.grid_choice(
        topk_blend.ease_members(topk_blend.ease_fits(rated), rated[iu]),
        standardised(rating_inner),
        {"topk": standardised(dae_inner)},  # this report's blend: Mult-DAE its ranking member
        iu,
        inner,
    )
    best, alone = topk_blend.chosen(grid)
    liked = max(topk_blend.GRID["ease_lambda"], key=lambda lam: grid[Recipe(lam, 0, 0, LIKED)])
    chosen = {
        "EASE lambda": alone,
        "liked-items EASE lambda": liked,
        "Mult-DAE": options,
        "blend": asdict(best),
    }
    inner_scores = {
        "EASE": grid[Recipe(alone, 0, 0, None)],
        "liked-items EASE": grid[Recipe(liked, 0, 0, LIKED)],
        "Mult-DAE": dae_ndcg,
        "rating model": ndcg(rating_inner, iu, inner),
        "blend": grid[best],
    }
    # the reported split, once
    dae = mult_dae_scores(outer, ou, options)
    rating = rating_model_scores(outer, outer_items, ou)
    by_user = outer.by_user()
    anchor = ease.fit(by_user, alone).scores(by_user[ou])
    liked_ease = ease.fit(by_user, liked, LIKED).scores(by_user[ou])
    member = ease.fit(by_user, best.ease_lambda, best.ease_liked_at).scores(by_user[ou])
    blend = topk_blend.blended(best, standardised(member), standardised(rating), standardised(dae))
    rows = {
        "popularity": popularity(outer.by_user(), len(ou)),
        "rating model (--preset best)": rating,
        f"EASE (lambda {alone:g})": anchor,
        f"EASE on liked items (>= {LIKED:g}, lambda {liked:g})": liked_ease,
        "Mult-DAE (--preset topk)": dae,
        f"top-k blend ({topk_blend.ease_form(best)}; {best.rating_weight:g} rating, "
        f"{best.ranking_weight:g} Mult-DAE)": blend,
    }
    table = {name: ranking_metrics(s, ou, outer) for name, s in rows.items()}
    lines = [
        f"# Top-10 on {args.data}, {args.split}",
        "",
        f"Chosen on the inner split: {json.dumps(chosen)}; inner NDCG@10 "
        f"{json.dumps({k: round(v, 4) for k, v in inner_scores.items()})}.",
        "",
        *table_lines(table, list(COLUMNS)),
    ]
    lines += ["", "Paired differences of NDCG@10 over the same users (bootstrap 95% interval):", ""]
    for name, other in (("EASE", anchor), ("EASE on liked items", liked_ease)):
        gain, (lo, hi) = paired_difference(blend, other, ou, outer)
        lines.append(f"- top-k blend - {name}: {gain:+.4f} [{lo:+.4f}, {hi:+.4f}]")
    lines += ["", f"{table[next(iter(table))]['users']} users; {time.perf_counter() - t0:.0f} s."]
    emit(lines, args.out)


# How each metric of deeprec.scoring.metrics.ranking_metrics shows in a report's table:
# (header, Markdown alignment, the cell from a row of metrics).
COLUMNS = {
    "precision@10": ("P@10", "---:", lambda r: f"{r['precision@10']:.4f}"),
    "recall@10": ("R@10", "---:", lambda r: f"{r['recall@10']:.4f}"),
    "ndcg@10": (
        "NDCG@10 [95% interval]",
        "---",
        lambda r: "{:.4f} [{:.4f}, {:.4f}]".format(r["ndcg@10"], *r["ndcg@10_ci95"]),
    ),
    "recall@20": ("R@20", "---:", lambda r: f"{r['recall@20']:.4f}"),
    "ndcg@100": ("NDCG@100", "---:", lambda r: f"{r['ndcg@100']:.4f}"),
    "coverage@10": ("coverage@10", "---:", lambda r: f"{r['coverage@10']:.3f}"),
    "popularity_rank@10": ("pop. rank@10", "---:", lambda r: f"{r['popularity_rank@10']:.0f}"),
}


def table_lines(table: dict[str, dict], columns: list[str], first: str = "model") -> list[str]:
    """A Markdown table, a row per model of ``table`` (name -> ranking_metrics), with the
    metrics ``columns`` (keys of COLUMNS) after the ``first`` column of names."""
    lines = [
        "| " + " | ".join([first, *(COLUMNS[c][0] for c in columns)]) + " |",
        "|" + "|".join(["---", *(COLUMNS[c][1] for c in columns)]) + "|",
    ]
    for name, row in table.items():
        lines.append("| " + " | ".join([name, *(COLUMNS[c][2](row) for c in columns)]) + " |")
    return lines


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
    p.add_argument(
        "--search-mult-dae",
        action="store_true",
        help="choose Mult-DAE's epochs and weight decay on the inner split again (six "
        "trainings) instead of the topk preset's (100 epochs, no weight decay)",
    )
    return p.parse_args()


if __name__ == "__main__":
    main()
