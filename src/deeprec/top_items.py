"""The k best items of score rows, in the one order every list and metric uses: highest
score first, ties to the lower item index, excluded items (a user's training items) never.

On the ground floor and torch-free: recommend (checkpoint or ONNX), evaluate and the
training loop's validation all rank through ``top_rows``, so a list shown and a list
scored are the same list.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def top_rows(scores: np.ndarray, exclude: sp.csr_matrix, k: int) -> list[np.ndarray]:
    """The k best items of each row of ``scores`` (rows x items), best first, never an item
    the row's row of ``exclude`` (rows x items, its stored entries) holds; ties go to the
    lower item index, exactly, at the k-th place too. Fewer than k where a row has fewer
    candidates; NaN scores are never chosen. Vectorised over the rows: one partition finds
    each row's k-th best score, then the ties at that score are taken lowest index first."""
    s = np.array(scores, dtype=np.float64, copy=True, ndmin=2)
    n_rows, n_items = s.shape
    excluded = np.zeros(s.shape, dtype=bool)
    excluded[np.repeat(np.arange(n_rows), np.diff(exclude.indptr)), exclude.indices] = True
    s[excluded] = -np.inf
    k = min(k, n_items)
    if k <= 0 or n_rows == 0:
        return [np.empty(0, dtype=np.int64) for _ in range(n_rows)]
    ranked = np.where(np.isnan(s), np.inf, -s)  # negated, NaN last: the best come first
    kth = -np.partition(ranked, k - 1, axis=1)[:, k - 1 : k]  # each row's k-th best score
    del ranked
    candidate = ~excluded & ~np.isnan(s)
    above = (s > kth) & candidate
    tied = (s == kth) & candidate
    room = k - above.sum(1, keepdims=True)  # how many of the tied (lowest index first) fit
    chosen = above | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= room))
    out = []
    for row in range(n_rows):
        idx = np.flatnonzero(chosen[row])
        out.append(idx[np.lexsort((idx, -s[row, idx]))])
    return out


def top_k(scores: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """The positions of the k best scores of one row, ``exclude`` (item positions) left
    out: ``top_rows`` for one row."""
    exclude = np.unique(np.asarray(exclude, dtype=np.int64))
    row = np.asarray(scores, dtype=np.float64)
    mask = sp.csr_matrix(
        (np.ones(len(exclude), dtype=bool), exclude, [0, len(exclude)]), shape=(1, row.size)
    )
    return top_rows(row, mask, k)[0]
