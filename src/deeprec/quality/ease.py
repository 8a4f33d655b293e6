"""EASE (Steck, WWW 2019): a linear item-item autoencoder with a closed form.

For the users x items matrix X of who rated what (binary), EASE's weights minimise
||X - X B||^2 + lam ||B||^2 subject to diag(B) = 0, which solves to

    P = (X^T X + lam I)^-1,   B = I - P diag(1 / diag(P))   (so B_ij = -P_ij / P_jj, B_jj = 0)

and a user's scores are x_u B. It is the strongest simple anchor for top-k lists on
MovieLens, and a member a top-k blend can use. Dense items x items: fine to tens of
thousands of items (ml-latest-small's 9k: a 9k x 9k solve, seconds); not to ML-32M's 87k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch


@dataclass
class Ease:
    """A fitted EASE: ``weights`` (items x items, float32, zero diagonal)."""

    weights: np.ndarray
    lam: float

    def scores(self, rated: sp.csr_matrix) -> np.ndarray:
        """Scores of every item for each row of ``rated`` (users x items, binary)."""
        return np.asarray(rated.astype(np.float32) @ self.weights)


def fit(by_user: sp.csr_matrix, lam: float = 250.0) -> Ease:
    """EASE on the users x items training matrix ``by_user`` (values ignored: who rated
    what). lam: the L2 weight (> 0). The Gram matrix is solved in float64 with torch's
    Cholesky factorisation (the matrix is symmetric positive definite for lam > 0)."""
    if not lam > 0:
        raise ValueError(f"EASE needs lam > 0, got {lam}")
    X = by_user.copy().astype(np.float64)
    X.data[:] = 1.0
    gram = torch.from_numpy(np.asarray((X.T @ X).todense()))
    gram.diagonal().add_(lam)
    P = torch.cholesky_inverse(torch.linalg.cholesky(gram))
    B = -P / P.diagonal()[None, :]
    B.diagonal().zero_()
    return Ease(B.to(torch.float32).numpy(), lam)
