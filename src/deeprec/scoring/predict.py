"""Predictions from a trained AutoEncoder: at given (row, col) entries, or whole rows.

A row's prediction always comes from that row's training vector (its known ratings),
exactly as the model was trained. Work is batched over rows to bound memory.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import scipy.sparse as sp
import torch

from deeprec.data import RatingMatrix
from deeprec.models import Model
from deeprec.ops import raise_kernel_errors
from deeprec.ops.schema import ChosenImpl
from deeprec.scoring import baseline


class Plan(Protocol):
    """What prediction reads of the run's plan (deeprec.training.plan.TrainingPlan, decided
    there once): the ops to run and their backend, and whether the model's output layer is
    linear, so that only the asked entries are computed (no chunk x items output)."""

    @property
    def impl(self) -> ChosenImpl: ...

    @property
    def backend(self) -> str: ...

    @property
    def linear_output(self) -> bool: ...


@torch.no_grad()
def predict_entries(
    model: Model,
    matrix: RatingMatrix,
    rows: np.ndarray,
    cols: np.ndarray,
    plan: Plan,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    offsets=None,
    source=None,
) -> np.ndarray:
    """Unclipped predictions at (rows[k], cols[k]) for every k.

    matrix holds the model's inputs. offsets: the baseline.Biases the model was trained
    on top of (--residual); added back here. source: where the batches come from (the
    matrix, or a ResidentMatrix of it); predictions stay on the device until one read at
    the end, which also raises an index a GPU kernel refused. plan: the run's (Plan).
    """
    source = matrix if source is None else source
    was_training = model.training
    model.eval()
    unique, inverse = np.unique(rows, return_inverse=True)
    order = np.argsort(inverse, kind="stable")  # entries grouped by chunk, one pass
    bounds = np.searchsorted(inverse[order], np.arange(0, len(unique) + batch_size, batch_size))
    device = torch.device(device)
    local = _upload(inverse[order] % batch_size, device)  # row inside its chunk
    col = _upload(np.asarray(cols)[order], device)
    pred = torch.empty(len(rows), dtype=torch.float64, device=device)
    chunks = source.batches(batch_size, device, shuffle=False, rows=unique) if len(unique) else ()
    for n, batch in enumerate(chunks):
        at = slice(int(bounds[n]), int(bounds[n + 1]))
        if plan.linear_output:  # only at the entries: no (chunk x n_items) output
            got = model.outputs_at(
                *batch.csr,
                local[at],
                col[at],
                index=batch.index,
                impl=plan.impl,
                backend=plan.backend,
            )
        else:
            got = model(batch.dense())[local[at], col[at]]
        pred[at] = got
    model.train(was_training)
    out = np.empty(len(rows), dtype=np.float64)
    out[order] = pred.cpu().numpy()
    raise_kernel_errors(device)  # an index a GPU kernel refused, before a value is used
    return out if offsets is None else out + offsets.at(rows, cols)


def _upload(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """An int64 host array on ``device``; from pinned memory on a GPU (no host wait)."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@torch.no_grad()
def predict_vector(model: Model, x: torch.Tensor) -> torch.Tensor:
    """Dense predictions for dense input rows x (B, n_in), in eval mode."""
    was_training = model.training
    model.eval()
    try:
        return model(x)
    finally:
        model.train(was_training)


@torch.no_grad()
def score_items(
    model: Model,
    inputs: RatingMatrix,
    users: np.ndarray,
    plan: Plan,
    device: torch.device | str = "cpu",
    offsets=None,
    batch_size: int = 256,
) -> np.ndarray:
    """Predicted ratings of every item for each user index in ``users``: (len(users), n_items).

    User-based models predict a user's row from their training vector, read by the sparse
    input layer; item-based models predict every item's row and read the users' columns
    (items x users, in batches). Callers at a catalogue's scale ask for a slice of users at
    a time (deeprec.scoring.metrics.per_user does). plan: the run's (Plan).
    """
    was_training = model.training
    model.eval()
    try:
        if inputs.rows_are_users:
            out = np.empty((len(users), inputs.n_cols))
            for s in range(0, len(users), batch_size):
                chunk = users[s : s + batch_size]
                batch = inputs.batch(chunk, device)
                got = model.reconstruct(
                    *batch.csr, index=batch.index, impl=plan.impl, backend=plan.backend
                )
                out[s : s + len(chunk)] = got.double().cpu().numpy()
        else:
            out = np.empty((inputs.n_rows, len(users)))
            cols = torch.as_tensor(users, device=device)
            for s in range(0, inputs.n_rows, batch_size):
                rows = np.arange(s, min(s + batch_size, inputs.n_rows))
                pred = model(inputs.batch(rows, device).dense())
                out[rows] = pred[:, cols].double().cpu().numpy()
            out = out.T
    finally:
        model.train(was_training)
    if offsets is not None:
        if inputs.rows_are_users:
            out += offsets.mu + offsets.rows[users][:, None] + offsets.cols[None, :]
        else:
            out += offsets.mu + offsets.cols[users][:, None] + offsets.rows[None, :]
    return out


@torch.no_grad()
def fold_in_scores(
    model: Model,
    offsets,
    rows: sp.csr_matrix,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    liked_at: float = 0.0,
) -> np.ndarray:
    """Scores of every item for users no model trained on, from their ratings ``rows`` (new
    users x the model's items), without retraining: a user-based autoencoder reads each row
    as it read a training row. With residual offsets (baseline.Biases) each user's bias is
    folded in from the row first and the inputs are the residuals, as the model learned;
    with ``liked_at`` (a model that learned from the liked items) it reads only the ratings
    at or above it."""
    was_training = model.training
    model.eval()
    out = np.empty(rows.shape)
    try:
        for s in range(0, rows.shape[0], batch_size):
            chunk = rows[s : s + batch_size].tocoo()
            x = np.zeros(chunk.shape, dtype=np.float32)
            base = np.zeros(chunk.shape)
            if offsets is not None:
                b_user = baseline.fold_in_rows(offsets, chunk.tocsr())
                base += offsets.mu + b_user[:, None] + offsets.cols[None, :]
            read = chunk.data >= liked_at if liked_at else np.ones(chunk.nnz, dtype=bool)
            r, c = chunk.row[read], chunk.col[read]
            x[r, c] = chunk.data[read] - base[r, c]
            got = model(torch.from_numpy(x).to(device)).double().cpu().numpy()
            out[s : s + chunk.shape[0]] = got + base
    finally:
        model.train(was_training)
    return out


def rmse_mae(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(RMSE, MAE); NaN for an empty validation set."""
    if len(truth) == 0:
        return float("nan"), float("nan")
    err = np.asarray(pred, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return float(np.sqrt(np.mean(err**2))), float(np.mean(np.abs(err)))
