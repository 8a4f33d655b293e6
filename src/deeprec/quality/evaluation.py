"""Evaluating a trained model against classical baselines on the same split.

Rating accuracy: RMSE (with a bootstrap 95% interval over the validation ratings) and MAE
of the model, the global mean and the regularized user+item bias model (deeprec.scoring.baseline),
all clipped to the rating scale. Ranking: Precision@10, Recall@10, NDCG@10 (with a
bootstrap 95% interval over users), Recall@20 and NDCG@100 of each user's top unrated
items, an item being relevant when the user rated it >= 4 in validation, the catalog
coverage and mean popularity rank of the top 10s, against ranking by popularity (training
rating count) and EASE (deeprec.scoring.ease, the strongest simple top-k anchor).
"""

from __future__ import annotations

import numpy as np
import torch

from deeprec.scoring import baseline, ease
from deeprec.scoring.metrics import popularity, ranking_metrics
from deeprec.scoring.predict import predict_entries, rmse_mae, score_items
from deeprec.training.assembly import ModelOnData


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


def evaluate(
    run: ModelOnData,
    device: torch.device | str = "cpu",
    ranking: bool = True,
    ease_lambda: float | None = 250.0,
) -> dict[str, dict]:
    """Accuracy (RMSE with 95% interval, MAE) and ranking metrics of the model and baselines
    (a ranking model, objective multinomial, has no RMSE: its scores are not ratings).

    ease_lambda: EASE's L2 weight for the EASE ranking anchor (None: no EASE row; a
    catalogue too large for EASE's solve gets a row holding only ``left_out``, the reason).
    Scores are computed for a slice of the users at a time (bounded memory at any size)."""
    m = run.matrix
    lo, hi = m.scale
    fitted = baseline.fit(m.train, m.by)
    preds = {
        "global mean": np.full(len(m.val_rows), float(m.train.data.mean())),
        "user+item bias": fitted.at(m.val_rows, m.val_cols),
    }
    table: dict[str, dict] = {"deeprec": {}}
    if run.plan.objective != "multinomial":  # a ranking model's scores are not ratings
        model = predict_entries(
            run.model, run.inputs, m.val_rows, m.val_cols, run.plan, device, offsets=run.offsets
        )
        preds = {"deeprec": model, **preds}
    for name, pred in preds.items():
        clipped = np.clip(pred, lo, hi)
        rmse, mae = rmse_mae(clipped, m.val_ratings)
        ci = bootstrap_rmse(clipped, m.val_ratings)
        table[name] = {"rmse": rmse, "rmse_ci95": ci, "mae": mae}
    if ranking:
        users = np.unique(m.user_view()[0])

        def scores(part: np.ndarray) -> np.ndarray:
            return score_items(run.model, run.inputs, part, run.plan, device, offsets=run.offsets)

        table["deeprec"].update(ranking_metrics(scores, users, m))
        table["popularity"] = ranking_metrics(popularity(m.by_user(), len(users)), users, m)
        if ease_lambda is not None:
            try:
                ease.check_fits(m.n_items)
            except ease.TooLarge as exc:
                table["EASE"] = {"left_out": str(exc)}
            else:
                by_user = m.by_user()
                anchor = ease.fit(by_user, ease_lambda)
                table["EASE"] = ranking_metrics(lambda u: anchor.scores(by_user[u]), users, m)
    return table
