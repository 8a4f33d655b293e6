"""python -m deeprec.recommend: the k best unrated movies for a user, with titles.

For a known user the prediction comes from their training ratings; for a new user
(--ratings "296=5,318=4.5") the autoencoder folds the given ratings in directly,
no retraining (user-based models only: an item-based model has no input for a
user it has never seen).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from deeprec import baseline, cli
from deeprec.evaluate import load_run
from deeprec.predict import predict_vector, score_items


def parse_ratings(text: str, scale: tuple[float, float]) -> dict[int, float]:
    """'296=5,318=4.5' -> {296: 5.0, 318: 4.5}; UsageError naming the bad part."""
    out: dict[int, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        item, sep, value = part.partition("=")
        try:
            item_id, rating = int(item), float(value)
        except ValueError:
            raise cli.UsageError(f"--ratings: {part!r} is not ITEM=RATING (e.g. 296=5)") from None
        if not sep or not np.isfinite(rating) or not scale[0] <= rating <= scale[1]:
            raise cli.UsageError(
                f"--ratings: {part!r}: rating must be a number in [{scale[0]:g}, {scale[1]:g}]"
            )
        out[item_id] = rating
    if not out:
        raise cli.UsageError("--ratings is empty; give ITEM=RATING pairs like 296=5,318=4.5")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m deeprec.recommend",
        description="Print the k best unrated movies for a user "
        "(title with year, predicted rating).",
    )
    p.add_argument("--checkpoint", required=True, help="model.pt (or its run folder)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", type=int, help="a user id from the training data")
    who.add_argument("--ratings", help='a new user\'s ratings, e.g. "296=5,318=4.5"')
    p.add_argument("-k", type=int, default=10, help="how many movies")
    p.add_argument("--data-dir", help="where the run's dataset lives, if it moved")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    cli.add_debug(p)
    return p


def main(args: argparse.Namespace) -> int:
    from deeprec.train import resolve_device

    if args.k < 1:
        raise cli.UsageError(f"-k must be >= 1, got {args.k}")
    device = resolve_device(args.device)
    run = load_run(args.checkpoint, args.data_dir, device)
    matrix, items = run.matrix, run.matrix.item_ids()
    if args.user is not None:
        users = matrix.user_ids()
        u = int(np.searchsorted(users, args.user))
        if u >= len(users) or users[u] != args.user:
            raise cli.UsageError(
                f"--user {args.user} is not in the training data ({len(users)} users)"
            )
        rated = matrix.train[u].indices if matrix.by == "user" else matrix.train[:, u].nonzero()[0]
        scores = score_items(run.model, run.inputs, np.array([u]), device, run.offsets)[0]
        who = f"user {args.user} ({len(rated)} training ratings)"
    else:
        if matrix.by != "user":
            raise cli.UsageError("--ratings needs a user-based model (trained with --by user)")
        given = parse_ratings(args.ratings, matrix.scale)
        pos = np.searchsorted(items, list(given))
        unknown = [i for i, p in zip(given, pos, strict=True) if p >= len(items) or items[p] != i]
        if unknown:
            raise cli.UsageError(f"--ratings: item ids not in the training data: {unknown[:10]}")
        values = np.array(list(given.values()))
        offset = np.zeros(len(items))
        if run.offsets is not None:  # --residual: the new user's bias, folded in like the rest
            b_user = baseline.fold_in_row(run.offsets, pos, values)
            offset = run.offsets.mu + b_user + run.offsets.cols
        x = torch.zeros(1, len(items), device=device)
        x[0, torch.as_tensor(pos, device=device)] = torch.as_tensor(
            values - offset[pos], dtype=torch.float32, device=device
        )
        scores = predict_vector(run.model, x)[0].double().cpu().numpy() + offset
        rated = pos
        who = f"a new user ({len(given)} ratings)"
    # Rank by the raw score (clipping would tie everything above the scale's top),
    # show the prediction clipped to the rating scale.
    scores[rated] = -np.inf
    top = np.argsort(-scores, kind="stable")[: args.k]
    top = top[np.isfinite(scores[top])]
    shown = np.clip(scores[top], *matrix.scale)
    print(f"Top {len(top)} for {who}:")
    for rank, (j, score) in enumerate(zip(top, shown, strict=True), 1):
        title = run.dataset.titles.get(int(items[j]), f"item {items[j]}")
        print(f"{rank:3d}. {score:.2f}  {title}  [{items[j]}]")
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli_main())
