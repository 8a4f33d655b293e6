"""Top-k recommendations from a trained Run: for a user of the training data, or for a new
user folded in from a few ratings (no retraining)."""

from __future__ import annotations

import numpy as np
import torch

from deeprec import baseline
from deeprec.config import ConfigError
from deeprec.predict import predict_vector, score_items
from deeprec.run import Run


def known_user(run: Run, user_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores of every item, positions of the items the user rated in training)."""
    matrix = run.matrix
    users = matrix.user_ids()
    u = int(np.searchsorted(users, user_id))
    if u >= len(users) or users[u] != user_id:
        raise ConfigError(f"--user {user_id} is not in the training data ({len(users)} users)")
    rated = matrix.train[u].indices if matrix.by == "user" else matrix.train[:, u].nonzero()[0]
    scores = score_items(run.model, run.inputs, np.array([u]), run.device, run.offsets)[0]
    return scores, rated


def new_user(run: Run, given: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """(scores of every item, positions of the given items) for a user the model never saw:
    the autoencoder reads the given ratings as that user's row (user-based models only)."""
    matrix, items, device = run.matrix, run.matrix.item_ids(), run.device
    if matrix.by != "user":
        raise ConfigError("--ratings needs a user-based model (trained with --by user)")
    pos = np.searchsorted(items, list(given))
    unknown = [i for i, p in zip(given, pos, strict=True) if p >= len(items) or items[p] != i]
    if unknown:
        raise ConfigError(f"--ratings: item ids not in the training data: {unknown[:10]}")
    values = np.array(list(given.values()))
    offset = np.zeros(len(items))
    if run.offsets is not None:  # --residual: the new user's bias, folded in like the rest
        b_user = baseline.fold_in_row(run.offsets, pos, values)
        offset = run.offsets.mu + b_user + run.offsets.cols
    x = torch.zeros(1, len(items), device=device)
    x[0, torch.as_tensor(pos, device=device)] = torch.as_tensor(
        values - offset[pos], dtype=torch.float32, device=device
    )
    scores = predict_vector(run.model, x)[0].double().cpu().numpy() + offset
    return scores, pos


def top_k(run: Run, scores: np.ndarray, rated: np.ndarray, k: int) -> list[tuple[int, float, str]]:
    """The k best unrated items as (item id, predicted rating clipped to the scale, title).

    Ranked by the raw score: clipping first would tie everything above the scale's top.
    """
    scores = scores.copy()
    scores[rated] = -np.inf
    top = np.argsort(-scores, kind="stable")[:k]
    top = top[np.isfinite(scores[top])]
    items = run.matrix.item_ids()
    shown = np.clip(scores[top], *run.matrix.scale)
    return [
        (int(items[j]), float(s), run.dataset.titles.get(int(items[j]), f"item {items[j]}"))
        for j, s in zip(top, shown, strict=True)
    ]
