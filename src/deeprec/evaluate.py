"""python -m deeprec.evaluate: a trained model against classical baselines, same split.

Baselines: the global mean of the training ratings, and the regularized user+item
bias model r = mu + b_user + b_item fitted by alternating least squares (the
classical "baseline predictor"; Surprise's BaselineOnly defaults: 10 sweeps,
reg_user 15, reg_item 10). All predictions are clipped to the rating scale.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np
import torch

from deeprec import checkpoint, cli
from deeprec.data import RatingMatrix
from deeprec.predict import predict_entries, rmse_mae


def bias_baseline(
    matrix: RatingMatrix, reg_user: float = 15.0, reg_item: float = 10.0, sweeps: int = 10
) -> tuple[float, np.ndarray, np.ndarray]:
    """(mu, row biases, col biases) of mu + b_row + b_col, fitted by ALS on the training CSR."""
    coo = matrix.train.tocoo()
    rows, cols, r = coo.row, coo.col, coo.data.astype(np.float64)
    reg_row, reg_col = (reg_user, reg_item) if matrix.by == "user" else (reg_item, reg_user)
    mu = float(r.mean())
    b_row = np.zeros(matrix.n_rows)
    b_col = np.zeros(matrix.n_cols)
    n_row = np.bincount(rows, minlength=matrix.n_rows)
    n_col = np.bincount(cols, minlength=matrix.n_cols)
    for _ in range(sweeps):
        b_col = np.bincount(cols, r - mu - b_row[rows], minlength=matrix.n_cols) / (reg_col + n_col)
        b_row = np.bincount(rows, r - mu - b_col[cols], minlength=matrix.n_rows) / (reg_row + n_row)
    return mu, b_row, b_col


def baseline_predictions(matrix: RatingMatrix) -> dict[str, np.ndarray]:
    mu, b_row, b_col = bias_baseline(matrix)
    rows, cols = matrix.val_rows, matrix.val_cols
    return {
        "global mean": np.full(len(rows), float(matrix.train.data.mean())),
        "user+item bias": mu + b_row[rows] + b_col[cols],
    }


def evaluate(
    model, matrix: RatingMatrix, device: torch.device | str = "cpu"
) -> dict[str, dict[str, float]]:
    """RMSE and MAE (clipped to the scale) of the model and each baseline on the validation set."""
    lo, hi = matrix.scale
    preds = {"deeprec": predict_entries(model, matrix, matrix.val_rows, matrix.val_cols, device)}
    preds.update(baseline_predictions(matrix))
    table = {}
    for name, pred in preds.items():
        rmse, mae = rmse_mae(np.clip(pred, lo, hi), matrix.val_ratings)
        table[name] = {"rmse": rmse, "mae": mae}
    return table


def load_run(
    path: str, data_dir: str | None, device: torch.device
) -> tuple[Any, RatingMatrix, dict[str, Any], Any]:
    """(model, matrix, checkpoint payload, dataset) for a checkpoint.

    The data is re-derived from the run's config and checked against the saved fingerprint.
    """
    from deeprec.train import build_model, prepare_data

    state = checkpoint.load(path)
    config = state["config"]
    dataset, matrix = prepare_data(config, data_dir or _saved_data_dir(state))
    if matrix.fingerprint() != state["data"]["fingerprint"]:
        raise checkpoint.CheckpointError(
            f"{path}: the data at {dataset.path} is not the data this model was trained on "
            "(fingerprint differs)"
        )
    model = build_model(config, matrix.n_cols)
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise checkpoint.CheckpointError(
            f"{path}: weights do not fit the model ({str(exc).splitlines()[0]})"
        ) from None
    return model.to(device).eval(), matrix, state, dataset


def _saved_data_dir(state: dict[str, Any]) -> str | None:
    """The folder above the dataset the run used, so a plain re-run finds it again."""
    from pathlib import Path

    saved = Path(state["data"]["path"])
    name = state["config"]["data"]
    return str(saved.parent) if saved.exists() and saved.name == Path(name).name else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m deeprec.evaluate",
        description="RMSE/MAE of a trained model on its run's validation split, beside the "
        "global-mean and user+item-bias baselines on the same split.",
    )
    p.add_argument("--checkpoint", required=True, help="model.pt (or its run folder)")
    p.add_argument("--data-dir", help="where the run's dataset lives, if it moved")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    cli.add_debug(p)
    return p


def main(args: argparse.Namespace) -> int:
    from deeprec.train import resolve_device

    device = resolve_device(args.device)
    model, matrix, state, dataset = load_run(args.checkpoint, args.data_dir, device)
    table = evaluate(model, matrix, device)
    c = state["config"]
    print(
        f"{dataset.path} | split {c['split']} | by {c['by']} | "
        f"{len(matrix.val_ratings)} validation ratings "
        f"| epoch {state['epoch']}"
    )
    print(f"{'model':<16} {'RMSE':>8} {'MAE':>8}")
    for name, m in table.items():
        print(f"{name:<16} {m['rmse']:>8.4f} {m['mae']:>8.4f}")
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli_main())
