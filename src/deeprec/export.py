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

import torch

from deeprec import cli
from deeprec.inference.onnx_export import ExportError, export_onnx
from deeprec.inference.serving import sidecar_path
from deeprec.inference.trained import load_trained
from deeprec.training.run_folder import RunFolder


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
    if args.out is None:
        args.out = RunFolder.of(Path(args.checkpoint)).path / "model.onnx"
    if args.out.suffix.lower() != ".onnx":
        raise cli.UsageError(f"--out {args.out}: name the file *.onnx")
    trained = load_trained(args.checkpoint, args.data_dir, torch.device("cpu"))
    try:
        check = export_onnx(trained, args.out)
    except ExportError as exc:
        raise cli.UsageError(str(exc)) from None
    except OSError as exc:
        raise cli.UsageError(f"--out {args.out}: cannot write ({exc.strerror})") from None
    m = trained.matrix
    print(
        f"wrote {args.out} and {sidecar_path(args.out)}: ratings (batch, {m.n_cols}) -> scores "
        f"(batch, {m.n_cols}); onnxruntime matches torch on {int(check['rows_checked'])} rows "
        f"(max |diff| {check['max_abs_diff']:.2g})"
    )
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli_main())
