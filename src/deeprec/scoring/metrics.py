"""Top-k metrics of score rows against held-out ratings: the protocol evaluate reports and
the training loop validates a ranking model with (relevant = a validation rating >= 4,
a user's training items never recommended)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from deeprec.data import RatingMatrix
from deeprec.top_items import top_rows

RELEVANT_AT = 4.0  # a validation rating at least this makes the item relevant


def popularity(rated: sp.csr_matrix, n_users: int) -> np.ndarray:
    """The popularity anchor's scores: each item's count of training ratings in ``rated``
    (users x items), the same row for each of ``n_users`` users (a read-only view)."""
    counts = np.bincount(rated.indices, minlength=rated.shape[1]).astype(float)
    return np.broadcast_to(counts, (n_users, rated.shape[1]))


def _dcg(hits: np.ndarray) -> float:
    return float((hits / np.log2(np.arange(2, len(hits) + 2))).sum())


def user_ranking_metrics(top: np.ndarray, relevant: set[int]) -> dict[str, float]:
    """One user's metrics from their top-100 list (best first) and relevant items.

    precision@10 = hits in the top 10 / 10; recall@10 = hits / |relevant| (as reported
    before); recall@20 = hits in the top 20 / min(20, |relevant|) and NDCG@k with binary
    gains, as Liang et al. (2018) define them."""
    hits = np.fromiter((i in relevant for i in top), dtype=float, count=len(top))
    n = len(relevant)
    ndcg = {}
    for k in (10, 100):
        ideal = _dcg(np.ones(min(n, k)))
        ndcg[k] = _dcg(hits[:k]) / ideal
    return {
        "precision@10": hits[:10].sum() / 10,
        "recall@10": hits[:10].sum() / n,
        "ndcg@10": ndcg[10],
        "recall@20": hits[:20].sum() / min(20, n),
        "ndcg@100": ndcg[100],
    }


PER_USER = ("precision@10", "recall@10", "ndcg@10", "recall@20", "ndcg@100")

# Score rows: a (len(users), n_items) array, or a function giving the rows of a slice of
# ``users`` (so a catalogue's scores are never held for every user at once).
Scores = np.ndarray | Callable[[np.ndarray], np.ndarray]


def rows_per_chunk(n_items: int, budget_bytes: int = 2**28) -> int:
    """Users scored at once: float64 rows of ``n_items`` in about ``budget_bytes``."""
    return max(1, budget_bytes // (8 * max(n_items, 1)))


def per_user(
    scores: Scores, users: np.ndarray, matrix: RatingMatrix, relevant_at: float = RELEVANT_AT
) -> tuple[list[dict[str, float]], list[np.ndarray]]:
    """(PER_USER metrics of each user with a relevant validation item, in ``users``' order;
    their top 10s). Items a user rated in training are never recommended. Callable
    ``scores`` are asked only for the users with a relevant item, in slices
    (rows_per_chunk), each ranked and dropped before the next."""
    v_user, v_item, v_rating = matrix.user_view()
    by_user = matrix.by_user()
    liked = v_rating >= relevant_at
    order = np.argsort(v_user[liked], kind="stable")
    owners, starts = np.unique(v_user[liked][order], return_index=True)
    pieces = np.split(v_item[liked][order], starts[1:]) if len(owners) else []
    groups = dict(zip(owners.tolist(), pieces, strict=True))
    users = np.asarray(users)
    wanted = np.array([int(u) in groups for u in users], dtype=bool)
    rows: list[dict[str, float]] = []
    shown: list[np.ndarray] = []
    targets = np.flatnonzero(wanted)  # positions in users of the users with a relevant item
    step = rows_per_chunk(matrix.n_items)
    for s in range(0, len(targets), step):
        part = targets[s : s + step]
        block = scores(users[part]) if callable(scores) else scores[part]
        tops = top_rows(np.asarray(block), by_user[users[part]], 100)
        for u, top in zip(users[part], tops, strict=True):
            rows.append(user_ranking_metrics(top, set(groups[int(u)].tolist())))
            shown.append(top[:10])
    return rows, shown


def _interval(values: np.ndarray, reps: int, seed: int) -> tuple[float, float]:
    """Bootstrap 95% percentile interval of the mean of ``values`` (users resampled)."""
    if not reps:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    boot = [values[rng.integers(0, len(values), len(values))].mean() for _ in range(reps)]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(lo), float(hi)


def ranking_metrics(
    scores: Scores,
    users: np.ndarray,
    matrix: RatingMatrix,
    relevant_at: float = RELEVANT_AT,
    reps: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Top-k quality of ``scores`` (len(users) x n_items) over the users with a relevant
    validation item (rated >= ``relevant_at``); items a user rated in training are never
    recommended. Means of PER_USER, a bootstrap 95% interval of NDCG@10 over those users,
    the catalog coverage of the top 10s (share of items in anyone's top 10), and the mean
    popularity rank of the recommended items (1: the most rated item in training)."""
    rows, shown = per_user(scores, users, matrix, relevant_at)
    if not rows:
        return {**dict.fromkeys(PER_USER, float("nan")), "users": 0}
    counts = np.bincount(matrix.by_user().indices, minlength=matrix.n_items)
    pop_rank = np.empty(matrix.n_items)
    pop_rank[np.lexsort((np.arange(matrix.n_items), -counts))] = np.arange(1, matrix.n_items + 1)
    out: dict[str, float] = {m: float(np.mean([r[m] for r in rows])) for m in PER_USER}
    top10 = np.concatenate(shown)
    out |= {
        "ndcg@10_ci95": _interval(np.array([r["ndcg@10"] for r in rows]), reps, seed),
        "coverage@10": len(np.unique(top10)) / matrix.n_items,
        "popularity_rank@10": float(pop_rank[top10].mean()),
        "users": len(rows),
    }
    return out


def paired_difference(
    scores: Scores,
    against: Scores,
    users: np.ndarray,
    matrix: RatingMatrix,
    relevant_at: float = RELEVANT_AT,
    reps: int = 1000,
    seed: int = 0,
) -> tuple[float, tuple[float, float]]:
    """(mean NDCG@10 of ``scores`` minus that of ``against`` over the same users, a paired
    bootstrap 95% interval of it): users are resampled together, so the interval reflects
    the difference, not two independent spreads."""
    a, _ = per_user(scores, users, matrix, relevant_at)
    b, _ = per_user(against, users, matrix, relevant_at)
    if not a:
        return float("nan"), (float("nan"), float("nan"))
    diff = np.array([x["ndcg@10"] - y["ndcg@10"] for x, y in zip(a, b, strict=True)])
    return float(diff.mean()), _interval(diff, reps, seed)
