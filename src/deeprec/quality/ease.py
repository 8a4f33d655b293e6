"""EASE (Steck, WWW 2019): a linear item-item autoencoder with a closed form.

For a users x items binary matrix X, EASE's weights minimise ||X - X B||^2 + lam ||B||^2
subject to diag(B) = 0, which solves to

    P = (X^T X + lam I)^-1,   B = I - P diag(1 / diag(P))   (so B_ij = -P_ij / P_jj, B_jj = 0)

and a user's scores are x_u B, with x_u the user's row of the same binary matrix. Which
entries are ones is the model's choice, made once at fit and used again to score:
- ``liked_at=None`` (EASE as published): every rated item, who rated what;
- ``liked_at=4.0``: only the items rated >= 4, so B learns which liked items go with which.
  When "relevant" means a rating >= 4 (evaluate's protocol) this ranks better than the
  published form (docs/quality.md).

The strongest simple anchor for top-k lists on MovieLens, and the top-k blend's base.
Dense items x items: fine to tens of thousands of items (ml-latest-small's 9k: a 9k x 9k
solve, seconds); not to ML-32M's 87k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch


def ones(rated: sp.csr_matrix, liked_at: float | None = None) -> sp.csr_matrix:
    """The binary users x items matrix EASE reads: 1 where ``rated`` holds a rating (at
    least ``liked_at`` when given), float64."""
    X = rated.tocsr().astype(np.float64, copy=True)
    X.data = np.ones_like(X.data) if liked_at is None else (X.data >= liked_at).astype(np.float64)
    X.eliminate_zeros()
    return X


@dataclass
class Ease:
    """A fitted EASE: ``weights`` (items x items, float32, zero diagonal), its L2 weight, and
    which ratings count as ones (``liked_at``; None: every rating)."""

    weights: np.ndarray
    lam: float
    liked_at: float | None = None

    def scores(self, rated: sp.csr_matrix) -> np.ndarray:
        """Scores of every item for each row of ``rated`` (users x items, ratings), read
        as the model was fitted (binary; only liked items with ``liked_at``)."""
        return np.asarray(ones(rated, self.liked_at).astype(np.float32) @ self.weights)


def fit(by_user: sp.csr_matrix, lam: float = 250.0, liked_at: float | None = None) -> Ease:
    """EASE on the users x items training ratings ``by_user``. lam: the L2 weight (> 0);
    liked_at: fit on the items rated at least this (None: every rated item). The Gram
    matrix is solved in float64 with torch's Cholesky factorisation (symmetric positive
    definite for lam > 0)."""
    if not lam > 0:
        raise ValueError(f"EASE needs lam > 0, got {lam}")
    X = ones(by_user, liked_at)
    gram = torch.from_numpy(np.asarray((X.T @ X).todense()))
    gram.diagonal().add_(lam)
    P = torch.cholesky_inverse(torch.linalg.cholesky(gram))
    B = -P / P.diagonal()[None, :]
    B.diagonal().zero_()
    return Ease(B.to(torch.float32).numpy(), lam, liked_at)
