"""python -m deeprec.blend: score a blend of I-AutoRec, U-AutoRec, the bias baseline and kNN.

    python -m deeprec.blend --preset best --split user-time --fused

The recipe (a preset or --config file, with flags over it) is trained by item and by user;
the blend's weights are fit on a nested split of the training ratings, the models retrained
on the whole training part, and every model and the blend scored once on the validation
ratings, with bootstrap 95% intervals. With --topk, the top-k blend of
deeprec.quality.topk_blend instead (lists, not ratings). A leaf over the API
(deeprec.api.workflows).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from deeprec import cli
from deeprec.api import SHARED, Config, load_config_file, load_preset, presets
from deeprec.api.workflows import blending, strong_generalization, topk_blend


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(
        prog="python -m deeprec.blend",
        description="Blend I-AutoRec, U-AutoRec, the bias baseline and item/user kNN with "
        "weights fit on a nested split of the training ratings; print every model's and the "
        "blend's RMSE.",
    )
    Config.add_arguments(p)
    base = p.add_mutually_exclusive_group()
    base.add_argument("--preset", help=f"the recipe ({', '.join(presets())}) [best]")
    base.add_argument("--config", type=Path, metavar="FILE", help="the recipe from a TOML file")
    p.add_argument("--data-dir", help="folder holding dataset folders (or $DEEPREC_DATA)")
    p.add_argument("--out", type=Path, help="write the weights and scores to this JSON file")
    p.add_argument(
        "--save",
        type=Path,
        metavar="DIR",
        help="also train the two models on the whole training part into DIR (run folders "
        "DIR/item, DIR/user and DIR/blend.json) for python -m deeprec.recommend --blend DIR",
    )
    p.add_argument(
        "--topk",
        action="store_true",
        help="the top-k blend instead (EASE + the rating recipe + a ranking autoencoder, "
        "Mult-DAE or Mult-VAE on liked items, chosen on the inner split; for lists): train "
        "its members on the training part and print their and its top-k metrics on the "
        "validation users; with --save DIR keep it for recommend --blend DIR. Recipe flags "
        "given with it (e.g. --epochs) apply to every member",
    )
    p.add_argument(
        "--protocol",
        choices=("split", "strong"),
        default="split",
        help="with --topk: 'split' scores on --split's validation ratings; 'strong' holds "
        "out users instead (strong generalization: 20%% of the users for choosing the "
        "weights, 20%% for the report, 80%% of each one's ratings folded in, the rest "
        "predicted; no model trains on them) [split]",
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress bars (none either when not a terminal)"
    )
    cli.add_debug(p)
    return p


def main(args: argparse.Namespace) -> int:
    recipe = load_config_file(args.config) if args.config else load_preset(args.preset or "best")
    config = recipe.replace(**Config.overrides(args))
    if args.out is not None:  # outputs are checked before the blend is computed
        cli.writable_file(args.out, "--out")
    if args.save is not None:
        cli.writable_folder(args.save, "--save")
    if args.topk and (args.preset or args.config):
        raise cli.UsageError(
            "--topk trains its own members (the best and topk presets); --preset and "
            "--config go with the rating blend"
        )
    if args.protocol == "strong":
        if not args.topk or args.save is not None:
            raise cli.UsageError("--protocol strong goes with --topk, and without --save")
        given = [f"--{k.replace('_', '-')}" for k in ("split", "quantile", "val_frac")
                 if getattr(args, k, None) is not None]  # fmt: skip
        if given:
            raise cli.UsageError(
                f"--protocol strong splits the users, not the ratings: drop {', '.join(given)}"
            )
        return _strong(args, config)
    if args.topk:
        return _topk(args, config)
    result = blending.blend(config, args.data_dir, progress=not args.quiet)
    print(
        f"{config.data}, {config.split}: weights fit on {result.n_inner_val} inner validation "
        f"ratings; scored on {result.n_val} validation ratings"
    )
    w, m = result.weights, len(blending.MODELS)
    print("weights: w + w_u log(1 + user's ratings) + w_i log(1 + item's ratings)")
    for k, name in enumerate(blending.MODELS):
        rmse, lo, hi = result.rmse[name]
        print(f"{name:14s} RMSE {rmse:.4f} [{lo:.4f}, {hi:.4f}]  "
              f"w {w[k]:+.3f}  w_u {w[m + k]:+.3f}  w_i {w[2 * m + k]:+.3f}")  # fmt: skip
    rmse, lo, hi = result.rmse["blend"]
    print(f"{'blend':14s} RMSE {rmse:.4f} [{lo:.4f}, {hi:.4f}]  "
          f"constant {w[-1]:+.3f}  w_u {w[3 * m]:+.3f}  w_i {w[3 * m + 1]:+.3f}")  # fmt: skip
    if args.out is not None:
        doc = {"config": config.to_dict(), "weights": result.weights, "rmse": result.rmse,
               "n_inner_val": result.n_inner_val, "n_val": result.n_val}  # fmt: skip
        try:
            args.out.write_text(json.dumps(doc, indent=1))
        except OSError as exc:
            raise cli.UsageError(f"--out {args.out}: cannot write ({exc.strerror})") from None
    if args.save is not None:
        blending.save(config, result, args.save, args.data_dir, progress=not args.quiet)
        print(f"saved the blend to {args.save} (recommend --blend {args.save})")
    return 0


def _topk(args: argparse.Namespace, config: Config) -> int:
    if args.out is not None:
        raise cli.UsageError("--out goes with the rating blend; --topk prints its table")
    with tempfile.TemporaryDirectory(prefix="deeprec-topk-") as scratch:
        folder = args.save if args.save is not None else Path(scratch)
        recipe = topk_blend.save(
            config,
            folder,
            args.data_dir,
            progress=not args.quiet,
            overrides=_member_overrides(args),
        )
        table = topk_blend.evaluate_saved(folder, args.data_dir)
    print(f"{config.data}, {config.split}: top 10 of every unrated item, relevant = rated >= 4")
    print(
        f"chosen on the inner split: EASE ({topk_blend.ease_form(recipe)}), rating model x "
        f"{recipe.rating_weight:g}, {topk_blend.ranking_name(recipe.ranking_preset)} x "
        f"{recipe.ranking_weight:g}"
    )
    _topk_table(table)
    if args.save is not None:
        print(f"saved the top-k blend to {args.save} (recommend --blend {args.save})")
    return 0


def _member_overrides(args: argparse.Namespace) -> dict:
    """Options given on the command line that both top-k members take (not the data and
    split ones, which the members share with the blend anyway)."""
    return {k: v for k, v in Config.overrides(args).items() if k not in SHARED}


def _strong(args: argparse.Namespace, config: Config) -> int:
    result = strong_generalization.evaluate(
        config,
        args.data_dir,
        progress=not args.quiet,
        report=print,
        overrides=_member_overrides(args),
    )
    r = result.recipe
    print(f"{config.data}, strong generalization: top 10, relevant = rated >= 4")
    print(
        f"chosen on the validation users: EASE ({topk_blend.ease_form(r)}), rating model x "
        f"{r.rating_weight:g}, {topk_blend.ranking_name(r.ranking_preset)} x "
        f"{r.ranking_weight:g} (NDCG@10 {result.val_ndcg:.4f})"
    )
    _topk_table(result.table)
    print(f"({next(iter(result.table.values()))['users']} test users with a target rated >= 4)")
    return 0


def _topk_table(table: dict[str, dict]) -> None:
    width = max(44, *map(len, table))
    print(f"{'model':<{width}} {'P@10':>7} {'R@20':>7} {'NDCG@10':>8} {'95% interval':>18}")
    for name, row in table.items():
        lo, hi = row["ndcg@10_ci95"]
        print(f"{name:<{width}} {row['precision@10']:7.4f} {row['recall@20']:7.4f} "
              f"{row['ndcg@10']:8.4f} [{lo:.4f}, {hi:.4f}]")  # fmt: skip
    gain = table["top-k blend"]
    lo, hi = gain["ndcg@10_minus_ease_ci95"]
    print(f"top-k blend - EASE: NDCG@10 {gain['ndcg@10_minus_ease']:+.4f} "
          f"[{lo:+.4f}, {hi:+.4f}] (paired over the same users)")  # fmt: skip


def cli_main(argv: list[str] | None = None) -> int:
    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli_main())
