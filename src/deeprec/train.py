"""python -m deeprec.train: train the autoencoder and write a run folder.

Defaults reproduce the seed recipe (``--preset seed``): ml-latest-small, global-time
0.98 split, user-based, 512-512-1024 ReLU, Adam lr 1e-3, 40 epochs, batch 32. Any
flag given on the command line overrides the preset (or the --config file). The run folder
holds config.toml (the resolved configuration: ``--config RUN/config.toml`` reproduces the
run), metrics.json, model.pt (the full training state; resume with --resume) and loss.png.

A leaf: it parses flags and calls the API (deeprec.api.Recommender: fit into the run
folder, or resume one).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deeprec import checkpoint, cli, distributed
from deeprec.api import (
    Config,
    Recommender,
    default_out,
    flag,
    load_config_file,
    load_preset,
    presets,
    resolve_device,
    saved_config,
)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(
        prog="python -m deeprec.train",
        description="Train a deep autoencoder recommender on explicit ratings. With no flags: "
        "the seed recipe on ml-latest-small (see --preset). Recipe flags override the preset; "
        "[brackets] show the seed recipe's value.",
    )
    groups = Config.add_arguments(p)
    groups["data"].add_argument(
        "--data-dir",
        help="folder holding dataset folders, e.g. DIR/ml-latest-small/ratings.csv "
        "(default: $DEEPREC_DATA, then the user cache)",
    )
    r = p.add_argument_group("run")
    base = r.add_mutually_exclusive_group()
    base.add_argument(
        "--preset", help=f"base recipe; flags override it ({', '.join(presets())}) [seed]"
    )
    base.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="base recipe from a TOML file of train options (e.g. a run's config.toml, "
        "or tune's best.toml); keys it leaves out take the seed recipe's values; flags "
        "override it",
    )
    r.add_argument(
        "--tensorboard",
        type=Path,
        metavar="DIR",
        help="log train loss, validation RMSE/MAE, learning rate and seconds per epoch, and "
        "the config, to DIR/<run folder name>/ for TensorBoard, so runs sharing DIR stay "
        "apart (needs deeprec[tensorboard])",
    )
    r.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1, or auto (cuda if available) [auto]"
    )
    r.add_argument("--out", type=Path, help="run folder (default: runs/<data>-<split>-<by>-<time>)")
    r.add_argument(
        "--overwrite",
        action="store_true",
        help="let --out replace a run already in that folder (without it, a folder holding a "
        "model.pt is refused: continue it with --resume, or pick another --out)",
    )
    r.add_argument(
        "--resume", type=Path, metavar="DIR", help="continue the run in DIR up to --epochs"
    )
    r.add_argument(
        "--save-every",
        type=positive_int,
        default=1,
        help="write model.pt every N epochs (and at the end) [1]",
    )
    r.add_argument(
        "--slim",
        action="store_true",
        help="write the last model.pt with the weights only, about a third of its size "
        "(evaluate, recommend and export read it; --resume cannot)",
    )
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    cli.add_debug(p)
    return p


def build_config(args: argparse.Namespace) -> Config:
    """The config file, or the preset (seed by default), with the given flags over it."""
    base = load_config_file(args.config) if args.config else load_preset(args.preset or "seed")
    return base.replace(**Config.overrides(args))


def refuse_changes_on_resume(args: argparse.Namespace, saved: Config) -> None:
    """--resume continues the saved configuration exactly; a flag that would change it is
    refused by name, never dropped. --epochs (how far to continue) and the run options
    (--device, --data-dir, --save-every, --quiet) are allowed."""
    changed = [
        f"{flag(key)} {given} (the run has {getattr(saved, key)})"
        for key, given in Config.overrides(args).items()
        if key != "epochs" and given != getattr(saved, key)
    ]
    if args.preset is not None:
        changed.append(f"--preset {args.preset}")
    if args.config is not None:
        changed.append(f"--config {args.config}")
    folder = args.resume if args.resume.is_dir() else args.resume.parent
    if args.out is not None and args.out.resolve() != folder.resolve():
        changed.append(f"--out {args.out} (a resumed run writes to its own folder)")
    if changed:
        raise cli.UsageError(
            "--resume continues the saved configuration; these flags would change it: "
            f"{'; '.join(changed)}. Drop them, or start a new run instead"
        )


def main(args: argparse.Namespace) -> int:
    world, device = distributed.init(resolve_device(args.device))
    clean = False
    try:
        code = _train(args, world, str(device))
        clean = True
        return code
    finally:
        distributed.shutdown(world, clean)


def _train(args: argparse.Namespace, world: distributed.World, device: str) -> int:
    say = print if world.main else (lambda *a, **k: None)
    run = {
        "data_dir": args.data_dir,
        "save_every": args.save_every,
        "tensorboard": args.tensorboard,
        "world": world,
        "report": say,
    }
    if args.resume is not None:
        refuse_changes_on_resume(args, saved_config(checkpoint.load(args.resume), args.resume))
        rec = Recommender.resume(args.resume, epochs=args.epochs, device=device,
                                 progress=not args.quiet, **run)  # fmt: skip
    else:
        rec = Recommender(config=build_config(args), device=device, progress=not args.quiet)
        rec.fit(out=args.out or default_out(rec.config), overwrite=args.overwrite,
                slim=args.slim, **run)  # fmt: skip
    final = rec.validation_metrics
    if "val_rmse" in final:
        say(
            f"final val RMSE {final['val_rmse']:.4f}  MAE {final['val_mae']:.4f} "
            f"(unclipped {final['val_rmse_unclipped']:.4f})  -> {rec.folder}"
        )
    else:
        say(
            f"final val NDCG@10 {final['val_ndcg@10']:.4f}  Recall@20 "
            f"{final['val_recall@20']:.4f}  -> {rec.folder}"
        )
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    distributed.exit_process(cli_main())
