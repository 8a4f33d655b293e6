"""Evaluating a trained model against classical baselines on the same split.

Rating accuracy: RMSE (with a bootstrap 95% interval over the validation ratings) and MAE
of the model, the global mean and the regularized user+item bias model (deeprec.quality.baseline),
all clipped to the rating scale. Ranking: Precision@10, Recall@10 and NDCG@10 of each
user's top 10 unrated items, an item being relevant when the user rated it >= 4 in
validation, against ranking by popularity (training rating count).
"""

from __future__ import annotations

import numpy as np
import torch

from deeprec.data import RatingMatrix
from deeprec.inference.predict import predict_entries, rmse_mae, score_items
from deeprec.quality import baseline
from deeprec.run import Trained


def bootstrap_rmse(
    pred: np.ndarray, truth: np.ndarray, reps: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of the RMSE over validation ratings resampled with replacement."""
    err2 = (np.asarray(pred, float) - np.asarray(truth, float)) ** 2
    if len(err2) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = np.empty(reps)
    for i in range(reps):
        stats[i] = np.sqrt(err2[rng.integers(0, len(err2), len(err2))].mean())
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def user_view(matrix: RatingMatrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validation as (user index, item index, rating) whatever the matrix orientation."""
    return matrix.user_view()


def ranking_metrics(
    scores: np.ndarray,
    users: np.ndarray,
    matrix: RatingMatrix,
    k: int = 10,
    relevant_at: float = 4.0,
) -> dict[str, float]:
    """Mean Precision@k, Recall@k and NDCG@k over users with a relevant validation item.

    scores: (len(users), n_items); items a user rated in training are never recommended.
    """
    v_user, v_item, v_rating = user_view(matrix)
    train_by_user = matrix.by_user()
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    precision, recall, ndcg = [], [], []
    for row, u in enumerate(users):
        relevant = set(v_item[(v_user == u) & (v_rating >= relevant_at)].tolist())
        if not relevant:
            continue
        s = scores[row].copy()
        s[train_by_user[u].indices] = -np.inf
        top = np.argpartition(-s, k)[:k] if len(s) > k else np.arange(len(s))
        top = top[np.argsort(-s[top], kind="stable")]
        hits = np.array([i in relevant for i in top], dtype=float)
        precision.append(hits.sum() / k)
        recall.append(hits.sum() / len(relevant))
        ideal = discounts[: min(len(relevant), k)].sum()
        ndcg.append((hits * discounts[: len(hits)]).sum() / ideal)
    if not precision:
        return {
            "precision@10": float("nan"),
            "recall@10": float("nan"),
            "ndcg@10": float("nan"),
            "users": 0,
        }
    return {
        "precision@10": float(np.mean(precision)),
        "recall@10": float(np.mean(recall)),
        "ndcg@10": float(np.mean(ndcg)),
        "users": len(precision),
    }


def evaluate(
    run: Trained, device: torch.device | str = "cpu", ranking: bool = True
) -> dict[str, dict]:
    """Accuracy (RMSE with 95% interval, MAE) and ranking metrics of the model and baselines."""
    m = run.matrix
    lo, hi = m.scale
    fitted = baseline.fit(m.train, m.by)
    preds = {
        "deeprec": predict_entries(
            run.model, run.inputs, m.val_rows, m.val_cols, device, offsets=run.offsets
        ),
        "global mean": np.full(len(m.val_rows), float(m.train.data.mean())),
        "user+item bias": fitted.at(m.val_rows, m.val_cols),
    }
    table: dict[str, dict] = {}
    for name, pred in preds.items():
        clipped = np.clip(pred, lo, hi)
        rmse, mae = rmse_mae(clipped, m.val_ratings)
        ci = bootstrap_rmse(clipped, m.val_ratings)
        table[name] = {"rmse": rmse, "rmse_ci95": ci, "mae": mae}
    if ranking:
        users = np.unique(user_view(m)[0])
        scores = score_items(run.model, run.inputs, users, device, offsets=run.offsets)
        table["deeprec"].update(ranking_metrics(scores, users, m))
        counts = np.bincount(m.by_user().indices, minlength=m.n_items).astype(float)
        popularity = np.broadcast_to(counts, (len(users), m.n_items))
        table["popularity"] = ranking_metrics(popularity, users, m)
    return table
