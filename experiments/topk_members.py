"""The top-k blend with each ranking member it chooses from (Mult-DAE, Mult-VAE on liked
items), on one split, with evaluate's protocol (relevant: a validation rating >= 4; every item
the user did not rate in training is a candidate).

    python experiments/topk_members.py [--data ml-latest-small] [--split user-time] [--out F.md]

On the inner split (the training ratings split again the same way) every member trains once
and the blend's grid (deeprec.quality.topk_blend.GRID) is scored, with both ranking
candidates: the best recipe overall is what ``blend --topk`` chooses, and the best recipe
for each candidate is kept too. On the reported split the members train on the whole
training part and each kept recipe is scored once, with paired bootstrap intervals against
EASE on liked items and between the two blends.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import numpy as np
from topk import emit, matrices, parse_args, table_lines, val_users

from deeprec.config import load_preset
from deeprec.quality import topk_blend
from deeprec.scoring.metrics import paired_difference, ranking_metrics

standardised = topk_blend.standardised


def members(
    config_of: dict, m, by_item, users: np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Standardised scores of the rating member (trained on ``by_item``) and of every ranking
    candidate (trained on ``m``) for ``users``, in m's item order."""
    rating = topk_blend.member_scores(config_of["rating"], by_item, m, users, None)
    rankings = {
        preset: standardised(topk_blend.member_scores(config, m, m, users, None))
        for preset, config in config_of["rankings"].items()
    }
    return standardised(rating), rankings


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    t0 = time.perf_counter()
    split_of = matrices(args.data, args.split)
    (inner, inner_items), (outer, outer_items) = split_of["inner"], split_of["outer"]
    base = load_preset("topk").replace(data=args.data, split=args.split)
    config_of = {
        "rating": topk_blend.member_config(base, topk_blend.RATING_PRESET).replace(fused=True),
        "rankings": {p: c.replace(fused=True) for p, c in topk_blend.ranking_configs(base).items()},
    }
    iu, ou = val_users(inner), val_users(outer)
    rating, rankings = members(config_of, inner, inner_items, iu)
    rated = inner.by_user()
    ease_inner = topk_blend.ease_members(topk_blend.ease_fits(rated), rated[iu])
    grid = topk_blend.grid_choice(ease_inner, rating, rankings, iu, inner)
    chosen, _ = topk_blend.chosen(grid)
    per_member = {
        p: max((r for r in grid if r.ranking_preset == p and r.ranking_weight > 0), key=grid.get)
        for p in topk_blend.RANKING_PRESETS
    }
    liked_lambda = max(
        topk_blend.GRID["ease_lambda"],
        key=lambda lam: grid[topk_blend.Recipe(lam, 0.0, 0.0, 4.0)],
    )
    # the reported split, once
    rating, rankings = members(config_of, outer, outer_items, ou)
    by_user = outer.by_user()
    fits = topk_blend.ease_fits(by_user)
    ease_outer = topk_blend.ease_members(fits, by_user[ou])
    liked_ease = fits[4.0, liked_lambda].scores(by_user[ou])
    rows = {f"EASE on liked items (lambda {liked_lambda:g})": liked_ease}
    rows |= {f"{topk_blend.ranking_name(p)} alone": rankings[p] for p in rankings}
    blends = {}
    for p, r in per_member.items():
        name = f"blend with {topk_blend.RANKING_PRESETS[p]} ({topk_blend.ease_form(r)}; "
        name += f"{r.rating_weight:g} rating, {r.ranking_weight:g} {p})"
        name += " **chosen**" if r == chosen else ""
        blends[p] = topk_blend.blended(
            r, ease_outer[r.ease_liked_at, r.ease_lambda], rating, rankings[p]
        )
        rows[name] = blends[p]
    table = {name: ranking_metrics(s, ou, outer) for name, s in rows.items()}
    inner_scores = {topk_blend.ranking_name(p): round(grid[r], 4) for p, r in per_member.items()}
    lines = [
        f"# The top-k blend's ranking member on {args.data}, {args.split}",
        "",
        f"Chosen on the inner split: {json.dumps(asdict(chosen))}; the best recipe with each "
        f"candidate, inner NDCG@10: {json.dumps(inner_scores)}; liked EASE alone "
        f"{grid[topk_blend.Recipe(liked_lambda, 0.0, 0.0, 4.0)]:.4f}.",
        "",
        *table_lines(table, ["precision@10", "ndcg@10", "recall@20", "ndcg@100", "coverage@10"]),
    ]
    lines += ["", "Paired differences of NDCG@10 over the same users (bootstrap 95% interval):", ""]
    pairs = [(f"blend with {p} - EASE on liked items", blends[p], liked_ease) for p in blends]
    pairs.append(("blend with topk-liked - blend with topk", blends["topk-liked"], blends["topk"]))
    for name, a, b in pairs:
        gain, (lo, hi) = paired_difference(a, b, ou, outer)
        lines.append(f"- {name}: {gain:+.4f} [{lo:+.4f}, {hi:+.4f}]")
    lines += ["", f"{table[next(iter(table))]['users']} users; {time.perf_counter() - t0:.0f} s."]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
