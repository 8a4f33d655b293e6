"""python -m deeprec.evaluate: a trained model against classical baselines, same split.

Prints RMSE (bootstrap 95% interval), MAE and Precision/Recall/NDCG@10 of the model beside
the global-mean, user+item-bias and popularity baselines (see deeprec.quality.evaluation).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from deeprec import cli, run
from deeprec.quality.evaluation import evaluate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m deeprec.evaluate",
        description="RMSE/MAE (with bootstrap 95%% intervals) and Precision/Recall/NDCG@10 of a "
        "trained model on its run's validation split, beside the global-mean, user+item-bias "
        "and popularity baselines on the same split.",
    )
    p.add_argument("--checkpoint", required=True, help="model.pt (or its run folder)")
    p.add_argument("--data-dir", help="where the run's dataset lives, if it moved")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--no-ranking", action="store_true", help="skip the ranking metrics")
    cli.add_debug(p)
    return p


def _fmt(x: object, spec: str = ".4f") -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def main(args: argparse.Namespace) -> int:
    device = run.resolve_device(args.device)
    trained = run.load_trained(args.checkpoint, args.data_dir, device)
    table = evaluate(trained, device, ranking=not args.no_ranking)
    c, m = trained.config, trained.matrix
    print(
        f"{trained.dataset.path} | split {c.split} | by {c.by} | "
        f"{len(m.val_ratings)} validation ratings | epoch {trained.state['epoch']}"
    )
    print(
        f"{'model':<16} {'RMSE':>8} {'95% interval':>17} {'MAE':>8} {'P@10':>7} {'R@10':>7} "
        f"{'NDCG@10':>8}"
    )
    for name, row in table.items():
        ci = row.get("rmse_ci95")
        interval = f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "-"
        print(
            f"{name:<16} {_fmt(row.get('rmse')):>8} {interval:>17} {_fmt(row.get('mae')):>8} "
            f"{_fmt(row.get('precision@10')):>7} {_fmt(row.get('recall@10')):>7} "
            f"{_fmt(row.get('ndcg@10')):>8}"
        )
    if "users" in table.get("deeprec", {}):
        print(f"(ranking over {table['deeprec']['users']} users with a validation rating >= 4)")
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli_main())
