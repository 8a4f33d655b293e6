"""Neighbourhood models on baseline residuals (item- or user-based kNN): blend members.

The autoencoders and the bias baseline model every rating through a few global factors; a
neighbourhood model predicts from the handful of most similar items the user rated (or
users who rated the item), errors the others do not make. On the nested split of
ml-latest-small user-time, adding both to the I-/U-AutoRec + bias blend cut its RMSE by
0.005 (experiments/results/quality.md).

    r_ui = b_ui + sum_j s_ij (r_uj - b_uj) / sum_j s_ij

over the k most similar rated neighbours with s_ij > 0 (b_ui if none), where s is the
Pearson correlation of baseline residuals over common raters, shrunk by
(n - 1) / (n - 1 + shrinkage) for n common raters: Koren's KNNBaseline, the
"pearson_baseline" similarity. Similarities are computed on demand, a block of query
neighbours at a time, by sparse products, so memory stays O(block x neighbours) and nothing
quadratic in the catalog is stored; the cost is that of those products (sum over raters of
their ratings squared), fine for 100K-1M ratings, hours at 20M.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from deeprec.scoring import baseline

KINDS = ("item", "user")
BLOCK_BYTES = 128 << 20  # dense similarity rows computed at once
GATHER = 1 << 22  # neighbour entries gathered at once
PROGRESS_BLOCKS = 16  # show a progress bar from this many blocks of similarities


@dataclass
class Neighborhood:
    """A fitted kNN model over a users x items training matrix.

    kind "item": neighbours are the items the user rated; "user": the users who rated the item.
    """

    kind: str
    biases: baseline.Biases  # rows = users, cols = items
    resid: sp.csr_matrix  # owners x neighbours: users x items ("item") or items x users
    k: int = 40
    shrinkage: float = 100.0

    def __post_init__(self) -> None:
        self._mask = self.resid.copy()
        self._mask.data = np.ones_like(self._mask.data)
        self._sq = self.resid.copy()
        self._sq.data = self._sq.data**2

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predictions at (users[p], items[p]) (indices into the training matrix)."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        owners, targets = (users, items) if self.kind == "item" else (items, users)
        est = self.biases.at(users, items)
        if len(est) == 0:
            return est
        n_neigh = self.resid.shape[1]
        block = max(1, BLOCK_BYTES // (8 * 4 * max(n_neigh, 1)))
        order = np.argsort(targets, kind="stable")
        uniq, first = np.unique(targets[order], return_index=True)
        bounds = np.append(first, len(order))
        indptr = self.resid.indptr
        starts = range(0, len(uniq), block)
        # large sets take minutes (the products cost the sum over raters of ratings squared)
        for b in tqdm(starts, desc=f"{self.kind} kNN", unit="block", leave=False,
                      disable=len(starts) < PROGRESS_BLOCKS):  # fmt: skip
            pairs = order[bounds[b] : bounds[min(b + block, len(uniq))]]
            sims = self.similarities(uniq[b : b + block])
            local = np.searchsorted(uniq[b : b + block], targets[pairs])
            # pairs in runs of at most ~GATHER neighbour entries, to bound the gather's memory
            work = np.cumsum(indptr[owners[pairs] + 1] - indptr[owners[pairs]])
            cuts = np.searchsorted(work, np.arange(GATHER, work[-1] if len(work) else 0, GATHER))
            for run in np.split(np.arange(len(pairs)), np.unique(cuts)):
                if len(run):
                    est[pairs[run]] += self._offsets(sims, local[run], owners[pairs[run]])
        return est

    def score_users(self, users: np.ndarray) -> np.ndarray:
        """Predictions for every item, (len(users), items), as predict() computes them."""
        n_items = self.biases.cols.shape[0]
        out = np.empty((len(users), n_items))
        for row, u in enumerate(np.asarray(users, dtype=np.int64)):
            if self.kind == "user":
                out[row] = self.predict(np.full(n_items, u), np.arange(n_items))
                continue
            # item-based: the similarities of every item to the items u rated (symmetric)
            lo, hi = self.resid.indptr[u], self.resid.indptr[u + 1]
            rated, resid = self.resid.indices[lo:hi], self.resid.data[lo:hi]
            out[row] = self.biases.at(np.full(n_items, u), np.arange(n_items))
            if hi == lo:
                continue
            sims = self.similarities(rated)  # (rated, items)
            sims[sims <= 0] = 0.0
            if len(rated) > self.k:  # keep each item's k most similar rated items
                kth = np.partition(sims, len(rated) - self.k, axis=0)[len(rated) - self.k]
                sims[sims < kth[None, :]] = 0.0
            weight = sims.sum(axis=0)
            with np.errstate(divide="ignore", invalid="ignore"):
                out[row] += np.where(weight > 0, (resid @ sims) / weight, 0.0)
        return out

    def similarities(self, targets: np.ndarray) -> np.ndarray:
        """Shrunk Pearson-baseline similarities, (len(targets), neighbours), float64."""
        X, mask, sq = self.resid, self._mask, self._sq
        A, Am, Asq = (m[:, targets].T.tocsr() for m in (X, mask, sq))
        num = (A @ X).toarray()
        common = (Am @ mask).toarray()
        norms = (Asq @ mask).toarray() * (Am @ sq).toarray()
        with np.errstate(divide="ignore", invalid="ignore"):
            sim = np.where(norms > 0, num / np.sqrt(norms), 0.0)
            shrink = np.where(common > 1, (common - 1) / (common - 1 + self.shrinkage), 0.0)
        return sim * shrink

    def _offsets(self, sims: np.ndarray, local: np.ndarray, owners: np.ndarray) -> np.ndarray:
        """For each pair p: the weighted mean residual of owners[p]'s k most similar
        neighbours to target local[p] (rows of sims) with positive similarity, else 0."""
        indptr, indices, data = self.resid.indptr, self.resid.indices, self.resid.data
        lens = indptr[owners + 1] - indptr[owners]
        pair = np.repeat(np.arange(len(owners)), lens)
        starts = np.repeat(indptr[owners] - np.cumsum(lens) + lens, lens)
        flat = starts + np.arange(len(pair))
        s = sims[local[pair], indices[flat]]
        keep = s > 0
        pair, s, r = pair[keep], s[keep], data[flat[keep]]
        by_sim = np.lexsort((-s, pair))  # each pair's neighbours, most similar first
        pair, s, r = pair[by_sim], s[by_sim], r[by_sim]
        group_start = np.searchsorted(pair, pair, side="left")
        top = np.arange(len(pair)) - group_start < self.k
        weight = np.bincount(pair[top], s[top], minlength=len(owners))
        total = np.bincount(pair[top], s[top] * r[top], minlength=len(owners))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(weight > 0, total / weight, 0.0)


def fit(
    train: sp.csr_matrix,
    kind: str,
    k: int = 40,
    shrinkage: float = 100.0,
    biases: baseline.Biases | None = None,
) -> Neighborhood:
    """A kNN model of ``train`` (users x items, as RatingMatrix(by="user").train).

    ``biases``: baseline.fit(train, "user"), if already fitted (the blend fits it once for
    its bias member and both kNN models)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if k < 1 or shrinkage < 0:
        raise ValueError(f"need k >= 1 and shrinkage >= 0, got k={k}, shrinkage={shrinkage}")
    if biases is None:
        biases = baseline.fit(train, "user")
    coo = train.tocoo()
    resid = coo.data.astype(np.float64) - biases.at(coo.row, coo.col)
    X = sp.csr_matrix((resid, (coo.row, coo.col)), shape=train.shape)
    if kind == "user":
        X = X.T.tocsr()
    X.sort_indices()
    return Neighborhood(kind, biases, X, k, shrinkage)
