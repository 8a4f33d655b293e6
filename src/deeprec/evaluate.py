"""python -m deeprec.evaluate: a trained model against classical baselines, same split.

Prints RMSE (bootstrap 95% interval), MAE and the ranking metrics (Precision/Recall/NDCG@10
with an interval, Recall@20, NDCG@100, coverage, popularity rank) of the model beside the
global-mean, user+item-bias, popularity and EASE baselines (deeprec.quality.evaluation);
--out writes them all as JSON. A leaf: Recommender.load + Recommender.evaluate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from deeprec import cli
from deeprec.api import Recommender


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(
        prog="python -m deeprec.evaluate",
        description="RMSE/MAE (with bootstrap 95% intervals) and Precision/Recall/NDCG@10 of a "
        "trained model on its run's validation split, beside the global-mean, user+item-bias "
        "popularity and EASE baselines on the same split; --out writes every metric as JSON.",
    )
    p.add_argument("--checkpoint", required=True, help="model.pt (or its run folder)")
    p.add_argument("--data-dir", help="where the run's dataset lives, if it moved")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--no-ranking", action="store_true", help="skip the ranking metrics")
    p.add_argument(
        "--ease-lambda",
        type=float,
        default=250.0,
        help="L2 weight of the EASE ranking anchor; 0 leaves EASE out [250]",
    )
    p.add_argument(
        "--out", type=Path, metavar="FILE.json", help="also write every metric to this JSON file"
    )
    cli.add_debug(p)
    return p


def _fmt(x: object, spec: str = ".4f") -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def _missing(value: object) -> bool:
    """A cell the metrics table leaves empty (a metric that model does not have)."""
    return isinstance(value, float) and np.isnan(value)


def main(args: argparse.Namespace) -> int:
    if not args.ease_lambda >= 0 or args.ease_lambda == float("inf"):
        raise cli.UsageError(f"--ease-lambda must be >= 0 (0: no EASE), got {args.ease_lambda}")
    if args.out is not None:
        if args.out.suffix.lower() != ".json":
            raise cli.UsageError(f"--out {args.out}: name the file *.json")
        cli.writable_file(args.out, "--out")
    rec = Recommender.load(args.checkpoint, data_dir=args.data_dir, device=args.device)
    frame = rec.evaluate(ranking=not args.no_ranking, ease_lambda=args.ease_lambda or None)
    table = {name: {k: v for k, v in row.items() if not _missing(v)}
             for name, row in frame.to_dict(orient="index").items()}  # fmt: skip
    c = rec.config
    print(
        f"{rec.data_path} | split {c.split} | by {c.by} | "
        f"{rec.validation_size} validation ratings | epoch {rec.epochs_trained}"
    )
    print(
        f"{'model':<16} {'RMSE':>8} {'95% interval':>17} {'MAE':>8} {'P@10':>7} {'R@10':>7} "
        f"{'NDCG@10':>8}"
    )
    for name, row in table.items():
        if "left_out" in row:
            continue
        ci = row.get("rmse_ci95")
        interval = f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "-"
        print(
            f"{name:<16} {_fmt(row.get('rmse')):>8} {interval:>17} {_fmt(row.get('mae')):>8} "
            f"{_fmt(row.get('precision@10')):>7} {_fmt(row.get('recall@10')):>7} "
            f"{_fmt(row.get('ndcg@10')):>8}"
        )
    if "users" in table.get("deeprec", {}):
        print(
            f"{'model':<16} {'NDCG@10 95% interval':>21} {'R@20':>7} {'NDCG@100':>9} "
            f"{'coverage@10':>12} {'pop. rank@10':>13}"
        )
        for name, row in table.items():
            if "ndcg@100" not in row:
                continue
            lo, hi = row.get("ndcg@10_ci95", (float("nan"), float("nan")))
            print(
                f"{name:<16} {f'[{lo:.4f}, {hi:.4f}]':>21} {_fmt(row['recall@20']):>7} "
                f"{_fmt(row['ndcg@100']):>9} {_fmt(row['coverage@10']):>12} "
                f"{_fmt(row['popularity_rank@10'], '.0f'):>13}"
            )
        print(
            f"(ranking over {int(table['deeprec']['users'])} users with a validation rating >= 4)"
        )
    for name, row in table.items():
        if "left_out" in row:
            print(f"{name} left out: {row['left_out']}")
    if args.out is not None:
        doc = {
            "checkpoint": str(args.checkpoint),
            "data": c.data,
            "split": c.split,
            "by": c.by,
            "models": table,
        }
        try:
            args.out.write_text(json.dumps(doc, indent=1))
        except OSError as exc:
            raise cli.UsageError(f"--out {args.out}: cannot write ({exc.strerror})") from None
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli_main())
