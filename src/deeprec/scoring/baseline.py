"""The regularized user+item bias model r = mu + b_row + b_col, fitted by alternating least
squares: a baseline to beat, and (with --residual) the offset the autoencoder learns on top of.

Defaults are Surprise's BaselineOnly ALS settings (10 sweeps, reg_user 15, reg_item 10), so
its figures on our splits match the published ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass
class Biases:
    """mu, per-row and per-column biases of a RatingMatrix (row/col as the matrix orients)."""

    mu: float
    rows: np.ndarray
    cols: np.ndarray

    def at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self.mu + self.rows[rows] + self.cols[cols]


def fit(
    train: sp.csr_matrix,
    by: str = "user",
    reg_user: float = 15.0,
    reg_item: float = 10.0,
    sweeps: int = 10,
) -> Biases:
    """Fit mu + b_row + b_col to the stored entries of ``train`` by ALS."""
    coo = train.tocoo()
    rows, cols, r = coo.row, coo.col, coo.data.astype(np.float64)
    n_rows, n_cols = train.shape
    reg_row, reg_col = (reg_user, reg_item) if by == "user" else (reg_item, reg_user)
    mu = float(r.mean()) if len(r) else 0.0
    b_row = np.zeros(n_rows)
    b_col = np.zeros(n_cols)
    n_row = np.bincount(rows, minlength=n_rows)
    n_col = np.bincount(cols, minlength=n_cols)
    for _ in range(sweeps):
        b_col = np.bincount(cols, r - mu - b_row[rows], minlength=n_cols) / (reg_col + n_col)
        b_row = np.bincount(rows, r - mu - b_col[cols], minlength=n_rows) / (reg_row + n_row)
    return Biases(mu, b_row, b_col)


def fold_in_row(biases: Biases, cols: np.ndarray, ratings: np.ndarray, reg: float = 15.0) -> float:
    """The bias of a new row (a new user) from its ratings, with the same regularization."""
    rows = sp.csr_matrix((ratings, cols, [0, len(cols)]), shape=(1, len(biases.cols)))
    return float(fold_in_rows(biases, rows, reg)[0])


def fold_in_rows(biases: Biases, rows: sp.csr_matrix, reg: float = 15.0) -> np.ndarray:
    """The biases of new rows (users no model saw) from their ratings ``rows`` (new rows x
    the fitted columns): one ALS row step, b = sum(r - mu - b_col) / (reg + n)."""
    coo = rows.tocoo()
    resid = coo.data.astype(np.float64) - biases.mu - biases.cols[coo.col]
    n = np.bincount(coo.row, minlength=rows.shape[0])
    return np.bincount(coo.row, resid, minlength=rows.shape[0]) / (reg + n)
