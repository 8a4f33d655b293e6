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
    lower item index, exactly, at the k-th place too. NaN and -inf scores are never chosen,
    so a row with fewer than k other items gets fewer.

    A handful of passes over the rows, whatever k: one partition picks k candidates per row;
    where the k-th best score has ties the partition did not all take, that row's tied
    items are taken lowest index first instead."""
    s = np.array(scores, dtype=np.float64, copy=True, ndmin=2)
    n_rows, n_items = s.shape
    s[np.isnan(s)] = -np.inf
    s[np.repeat(np.arange(n_rows), np.diff(exclude.indptr)), exclude.indices] = -np.inf
    k = min(k, n_items)
    if k <= 0 or n_rows == 0:
        return [np.empty(0, dtype=np.int64) for _ in range(n_rows)]
    np.negative(s, out=s)  # ascending now: the partition puts the best first
    part = np.argpartition(s, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(s, part, axis=1)
    kth = vals.max(1, keepdims=True)  # each row's k-th best (negated)
    short = (s == kth).sum(1) != (vals == kth).sum(1)  # ties at the k-th place left out
    out = []
    for row in range(n_rows):
        if short[row]:
            ahead = np.flatnonzero(s[row] < kth[row])
            tied = np.flatnonzero(s[row] == kth[row])[: k - len(ahead)]
            idx = np.concatenate([ahead, tied])
        else:
            idx = part[row]
        idx = idx[s[row, idx] < np.inf]  # not excluded, NaN or -inf
        out.append(idx[np.lexsort((idx, s[row, idx]))])
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
