"""python -m deeprec.recommend: the k best unrated movies for a user, or for every user.

For a known user the prediction comes from their training ratings; for a new user
(--ratings "296=5,318=4.5") the autoencoder folds the given ratings in directly, no
retraining (user-based models only: an item-based model has no input for a user it has
never seen). --all-users writes every user's list to a CSV or Parquet file. The model is a
checkpoint (torch) or an export (--onnx model.onnx: onnxruntime, no torch needed).

A leaf: it parses flags and calls the API (deeprec.api.serving); torch is imported only for
--checkpoint and --blend.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from deeprec import cli
from deeprec.api.serving import (
    NewUser,
    Scorer,
    list_lines,
    open_scorer,
    user_position,
    write_all_users,
)
from deeprec.top_items import top_k


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
    p = cli.Parser(
        prog="python -m deeprec.recommend",
        description="Print the k best unrated movies for a user (title with year, predicted "
        "rating), or write every user's list to a file (--all-users --out recs.csv).",
    )
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="model.pt (or its run folder)")
    model.add_argument(
        "--onnx", type=Path, help="an export of python -m deeprec.export (with its .npz sidecar)"
    )
    model.add_argument(
        "--blend",
        type=Path,
        metavar="DIR",
        help="a blend saved by python -m deeprec.blend --save (the rating blend) or "
        "blend --topk --save (lists)",
    )
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", type=int, help="a user id from the training data")
    who.add_argument("--ratings", help='a new user\'s ratings, e.g. "296=5,318=4.5"')
    who.add_argument("--all-users", action="store_true", help="every user, to one file (--out)")
    p.add_argument("-k", type=int, default=10, help="how many movies per user [10]")
    p.add_argument(
        "--out",
        type=Path,
        help="with --all-users: a .csv or .parquet file [recs.csv beside the model]",
    )
    p.add_argument(
        "--batch-size", type=int, default=512, help="with --all-users: users scored at once [512]"
    )
    p.add_argument("--data-dir", help="where the run's dataset lives, if it moved")
    p.add_argument("--device", default="cpu", help="with --checkpoint: cpu or cuda[:i] [cpu]")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    cli.add_debug(p)
    return p


def _scorer(args: argparse.Namespace) -> tuple[Scorer, NewUser | None]:
    """The model as a ranking Scorer (and the new-user fold-in for --ratings)."""
    if args.blend is not None and args.ratings is not None:
        raise cli.UsageError("--ratings needs --checkpoint or --onnx (a blend has no fold-in)")
    return open_scorer(args.checkpoint, args.onnx, args.blend, args.data_dir, args.device)


def _source_folder(args: argparse.Namespace) -> Path:
    """The folder of the model recommended from: its run folder, blend folder, or the .onnx
    file's folder (where --all-users writes recs.csv by default). Resolved here rather than
    by deeprec.training.RunFolder.of, which imports torch: the --onnx path never does."""
    if args.onnx is not None:
        return Path(args.onnx).parent
    if args.blend is not None:
        return Path(args.blend)
    given = Path(args.checkpoint)
    return given if given.is_dir() else given.parent


def main(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise cli.UsageError(f"-k must be >= 1, got {args.k}")
    if args.batch_size < 1:
        raise cli.UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.out is not None and not args.all_users:
        raise cli.UsageError("--out goes with --all-users (one file for every user)")
    if args.all_users and args.out is None:
        args.out = _source_folder(args) / "recs.csv"
    if args.out is not None and args.out.suffix.lower() not in (".csv", ".parquet"):
        raise cli.UsageError(f"--out {args.out}: use a .csv or .parquet file name")
    scorer, new_user = _scorer(args)
    if args.all_users:
        try:
            users, rate = write_all_users(
                scorer, args.k, args.out, args.batch_size, progress=not args.quiet
            )
        except OSError as exc:
            raise cli.UsageError(f"--out {args.out}: cannot write ({exc.strerror})") from None
        print(
            f"wrote the top {args.k} of {len(scorer.item_ids)} items for {users} users to "
            f"{args.out} ({rate:.0f} users/s)"
        )
        return 0
    if args.user is not None:
        try:
            u = user_position(scorer, args.user)
        except ValueError as exc:
            raise cli.UsageError(str(exc)) from None
        scores, rated = scorer.score_users(np.array([u]))[0], scorer.rated(u)
        who = f"user {args.user} ({len(rated)} training ratings)"
    else:
        given = parse_ratings(args.ratings, scorer.scale)
        scores, rated = new_user(given)
        who = f"a new user ({len(given)} ratings)"
    best = top_k(scores, rated, args.k)
    lines = list_lines(scorer, best, scores)
    lo, hi = scorer.scale
    clipped = bool(((scores[best] < lo) | (scores[best] > hi)).any())
    note = f" (in brackets: the score before clipping to {lo:g}-{hi:g}, which orders the list)"
    print(f"Top {len(lines)} for {who}{note if clipped else ''}:")
    for line in lines:
        print(line)
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli_main())
