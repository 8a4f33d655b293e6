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
solve, seconds); not to ML-32M's 87k, where the solve alone needs 184 GB. ``fit`` refuses
a catalogue whose solve does not fit in the memory available, before allocating anything
(``check_fits``); the ranking autoencoders (Mult-DAE, Mult-VAE) have no such limit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from deeprec.errors import DataError
from deeprec.memory import proc_kib


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


# Items x items float64 matrices alive at once in fit, at most: the Gram matrix's sparse
# product and its dense copy, then the Gram matrix and its Cholesky factor, then the factor
# and the inverse.
SOLVE_MATRICES = 3


def bytes_needed(n_items: int) -> int:
    """Peak memory of fit's solve for a catalogue of ``n_items``: SOLVE_MATRICES float64
    items x items matrices."""
    return SOLVE_MATRICES * 8 * n_items * n_items


def available_bytes() -> int | None:
    """Memory this machine can give now (Linux: MemAvailable), or None when unknown."""
    kib = proc_kib("/proc/meminfo", "MemAvailable")
    if kib is not None:
        return kib * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class TooLarge(DataError):
    """EASE's items x items solve would not fit in memory (a command's one-line error)."""


def check_fits(n_items: int, available: int | None = None) -> None:
    """Raise TooLarge, one line naming the memory EASE would need and what to use instead,
    when its solve for ``n_items`` items exceeds ``available`` bytes (default: what the
    machine has now)."""
    available = available_bytes() if available is None else available
    need = bytes_needed(n_items)
    if available is not None and need > available:
        raise TooLarge(
            f"EASE on {n_items:,} items needs about {need / 1e9:,.1f} GB (up to {SOLVE_MATRICES} "
            f"float64 matrices of {n_items:,} x {n_items:,}) but only {available / 1e9:,.1f} GB "
            "is available; rank with the Mult-DAE or Mult-VAE autoencoder instead "
            "(train --preset topk or topk-vae), whose memory grows with the items, not their "
            "square"
        )


def fit(by_user: sp.csr_matrix, lam: float = 250.0, liked_at: float | None = None) -> Ease:
    """EASE on the users x items training ratings ``by_user``. lam: the L2 weight (> 0);
    liked_at: fit on the items rated at least this (None: every rated item). The Gram
    matrix is solved in float64 with torch's Cholesky factorisation (symmetric positive
    definite for lam > 0)."""
    if not lam > 0:
        raise ValueError(f"EASE needs lam > 0, got {lam}")
    check_fits(by_user.shape[1])
    X = ones(by_user, liked_at)
    gram = torch.from_numpy(np.asarray((X.T @ X).todense()))
    gram.diagonal().add_(lam)
    factor = torch.linalg.cholesky(gram)
    del gram  # never more than SOLVE_MATRICES items x items matrices at once
    P = torch.cholesky_inverse(factor)
    del factor
    P.div_(-P.diagonal().clone()[None, :])  # B = -P / diag(P), in place
    P.diagonal().zero_()
    return Ease(P.to(torch.float32).numpy(), lam, liked_at)
