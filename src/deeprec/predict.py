"""Predictions from a trained AutoEncoder: at given (row, col) entries, or whole rows.

A row's prediction always comes from that row's training vector (its known ratings),
exactly as the model was trained. Work is batched over rows to bound memory.
"""

from __future__ import annotations

import numpy as np
import torch

from deeprec.data import RatingMatrix
from deeprec.model import AutoEncoder


@torch.no_grad()
def predict_entries(
    model: AutoEncoder,
    matrix: RatingMatrix,
    rows: np.ndarray,
    cols: np.ndarray,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> np.ndarray:
    """Unclipped predictions at (rows[k], cols[k]) for every k."""
    was_training = model.training
    model.eval()
    out = np.empty(len(rows), dtype=np.float64)
    unique, inverse = np.unique(rows, return_inverse=True)
    for start in range(0, len(unique), batch_size):
        chunk = unique[start : start + batch_size]
        pred = model(matrix.batch(chunk, device).dense())
        pick = (inverse >= start) & (inverse < start + len(chunk))
        local = torch.as_tensor(inverse[pick] - start, device=pred.device)
        col = torch.as_tensor(cols[pick], device=pred.device)
        out[pick] = pred[local, col].double().cpu().numpy()
    model.train(was_training)
    return out


@torch.no_grad()
def predict_vector(model: AutoEncoder, x: torch.Tensor) -> torch.Tensor:
    """Dense predictions for dense input rows x (B, n_in), in eval mode."""
    was_training = model.training
    model.eval()
    try:
        return model(x)
    finally:
        model.train(was_training)


def rmse_mae(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(RMSE, MAE); NaN for an empty validation set."""
    if len(truth) == 0:
        return float("nan"), float("nan")
    err = np.asarray(pred, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return float(np.sqrt(np.mean(err**2))), float(np.mean(np.abs(err)))
