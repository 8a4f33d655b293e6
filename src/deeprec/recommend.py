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

from deeprec import cli, recommendation, run


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
    if args.k < 1:
        raise cli.UsageError(f"-k must be >= 1, got {args.k}")
    device = run.resolve_device(args.device)
    trained = run.load_trained(args.checkpoint, args.data_dir, device)
    if args.user is not None:
        scores, rated = recommendation.known_user(trained, args.user)
        who = f"user {args.user} ({len(rated)} training ratings)"
    else:
        given = parse_ratings(args.ratings, trained.matrix.scale)
        scores, rated = recommendation.new_user(trained, given)
        who = f"a new user ({len(given)} ratings)"
    top = recommendation.top_k(trained, scores, rated, args.k)
    print(f"Top {len(top)} for {who}:")
    for rank, (item, score, title) in enumerate(top, 1):
        print(f"{rank:3d}. {score:.2f}  {title}  [{item}]")
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli_main())
