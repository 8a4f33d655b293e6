"""python -m deeprec.export: a trained model as a portable ONNX scorer, verified.

    python -m deeprec.export --checkpoint RUN/model.pt --format onnx --out model.onnx

Writes model.onnx and its sidecar model.onnx.npz (ids, scale, training rows, residual
offsets, titles; see deeprec.inference.serving and the README), checks onnxruntime against the torch
model on real rows, and only then reports success. A leaf: parses flags, calls the library.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deeprec import cli
from deeprec.api import Recommender


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(
        prog="python -m deeprec.export",
        description="Export a trained model (model.pt) as an ONNX dense scorer (rating rows in, "
        "predicted rows out, any batch size) plus a sidecar, checked with onnxruntime.",
    )
    p.add_argument("--checkpoint", required=True, help="model.pt (or its run folder)")
    p.add_argument("--format", default="onnx", choices=("onnx",), help="export format [onnx]")
    p.add_argument(
        "--out",
        type=Path,
        help="the .onnx file to write [model.onnx beside the checkpoint, in its run folder]",
    )
    p.add_argument("--data-dir", help="where the run's dataset lives, if it moved")
    cli.add_debug(p)
    return p


def main(args: argparse.Namespace) -> int:
    given = Path(args.checkpoint)
    if args.out is None:
        args.out = (given if given.is_dir() else given.parent) / "model.onnx"
    if args.out.suffix.lower() != ".onnx":
        raise cli.UsageError(f"--out {args.out}: name the file *.onnx")
    rec = Recommender.load(args.checkpoint, data_dir=args.data_dir, device="cpu")
    try:
        check = rec.export(args.out)
    except OSError as exc:
        raise cli.UsageError(f"--out {args.out}: cannot write ({exc.strerror})") from None
    n = len(rec.items)
    print(
        f"wrote {args.out} and {args.out}.npz: ratings (batch, {n}) -> scores (batch, {n}); "
        f"onnxruntime matches torch on {int(check['rows_checked'])} rows "
        f"(max |diff| {check['max_abs_diff']:.2g})"
    )
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli_main())
