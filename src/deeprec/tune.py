"""python -m deeprec.tune: search the model options with Optuna on a nested split.

    python -m deeprec.tune --trials 40 --epochs 30 --out tune-run
    python -m deeprec.train --config tune-run/best.toml

Only the training ratings of the chosen --data/--split are used: they are split again with
the same rule, trials train on the inner part and are scored on the inner validation part
(TPE sampling, median pruning on that curve). The study is an SQLite file in --out, so the
same command resumes or extends it. Writes results.md, results.json and best.toml (the
best configuration, its epochs set to the best inner epoch). A leaf over the API
(deeprec.api.workflows.tuning).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deeprec import cli
from deeprec.api import SHARED, Config, load_config_file, load_preset
from deeprec.api.workflows import tuning


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(
        prog="python -m deeprec.tune",
        description="Hyper-parameter search (Optuna TPE + median pruning) on a nested split of "
        "the training ratings; writes results.md/.json and best.toml for train --config.",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="study folder, resumed if it exists [runs/tune-<data>-<split>: the same command "
        "resumes the same study]",
    )
    p.add_argument("--trials", type=int, default=20, help="trials to run now [20]")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--epochs", type=int, default=20, help="epochs per trial (at most) [20]")
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="base options (TOML) the search starts from [the seed recipe]",
    )
    # The data, split, seed and path every trial shares (they override --config); the
    # seed also seeds the sampler.
    Config.add_arguments(p, only=SHARED)
    p.add_argument("--data-dir", help="folder holding dataset folders (or $DEEPREC_DATA)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    cli.add_debug(p)
    return p


def main(args: argparse.Namespace) -> int:
    for name, value, low in (("--trials", args.trials, 1), ("--epochs", args.epochs, 1)):
        if value < low:
            raise cli.UsageError(f"{name} must be >= {low}, got {value}")
    if args.timeout is not None and not args.timeout > 0:
        raise cli.UsageError(f"--timeout must be > 0 seconds, got {args.timeout}")
    base = load_config_file(args.config) if args.config else load_preset("seed")
    given = Config.overrides(args)  # --epochs is tune's own (per trial), not a Config's
    base = base.replace(**{k: v for k, v in given.items() if k in SHARED})
    if args.out is None:
        args.out = Path("runs") / f"tune-{Path(base.data).name}-{base.split}"
    cli.writable_folder(args.out, "--out")
    data = tuning.nested_data(base, args.data_dir)
    print(
        f"tuning on the inner {base.split} split of {base.data}'s training ratings: "
        f"{len(data.train)} train / {len(data.val)} validation ({data.n_outer_val} outer "
        "validation ratings never read)"
    )
    study = tuning.run_study(
        base, data, args.out, args.trials, args.timeout, args.epochs, base.seed, not args.quiet
    )
    best = tuning.write_results(study, base, data, args.out)
    print(
        f"best inner validation RMSE {study.best_value:.4f} (trial {study.best_trial.number}, "
        f"{best.epochs} epochs); wrote {args.out / 'results.md'} and {args.out / 'best.toml'}\n"
        f"train it: python -m deeprec.train --config {args.out / 'best.toml'}"
    )
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli_main())
