"""Top-k recommendations from a trained model: for a user of the training data, for a new
user folded in from a few ratings (no retraining), or for every user (deeprec.inference.ranking)."""

from __future__ import annotations

import numpy as np
import torch

from deeprec.config import ConfigError
from deeprec.inference.ranking import new_user_row, rows_of, user_position
from deeprec.scoring.predict import predict_vector, score_items
from deeprec.top_items import top_k
from deeprec.training.assembly import ModelOnData


class TrainedScorer:
    """A trained model as a ranking.Scorer: scores from the torch model on the run's device."""

    def __init__(self, run: ModelOnData) -> None:
        self.run = run
        matrix = run.matrix
        self.user_ids, self.item_ids = matrix.user_ids(), matrix.item_ids()
        self.titles, self.scale = run.titles, matrix.scale
        if run.plan.objective == "multinomial":  # scores are log-probabilities, not ratings
            self.scale = (-np.inf, np.inf)
        # each user's training items, as item positions (a CSR by user in either orientation)
        self._by_user = matrix.by_user()

    def score_users(self, users: np.ndarray) -> np.ndarray:
        """Predicted ratings of every item; for a ranking (multinomial) model the log of
        the probability it gives each item (the same order as its raw scores)."""
        run = self.run
        scores = score_items(run.model, run.inputs, users, run.plan, run.device, run.offsets)
        if run.plan.objective == "multinomial":
            scores = torch.from_numpy(scores).log_softmax(1).numpy()
        return scores

    def rated(self, user: int) -> np.ndarray:
        return self._by_user.indices[self._by_user.indptr[user] : self._by_user.indptr[user + 1]]


def known_user(run: ModelOnData, user_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores of every item, positions of the items the user rated in training)."""
    scorer = TrainedScorer(run)
    try:
        u = user_position(scorer, user_id)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return scorer.score_users(np.array([u]))[0], scorer.rated(u)


def new_user(run: ModelOnData, given: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """(scores of every item, positions of the given items) for a user the model never saw:
    the autoencoder reads the given ratings as that user's row (user-based models only)."""
    matrix, device = run.matrix, run.device
    if not matrix.rows_are_users:
        raise ConfigError("--ratings needs a user-based model (trained with --by user)")
    try:
        pos, inputs, offset = new_user_row(matrix.item_ids(), given, run.offsets)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if run.config.liked_at:  # the model reads the liked items only, as it learned
        keep = np.asarray(list(given.values())) >= run.config.liked_at
        pos_in, inputs = pos[keep], inputs[keep]
    else:
        pos_in = pos
    x = torch.zeros(1, matrix.n_cols, device=device)
    x[0, torch.as_tensor(pos_in, device=device)] = torch.as_tensor(
        inputs, dtype=torch.float32, device=device
    )
    out = predict_vector(run.model, x)
    if run.plan.objective == "multinomial":  # log-probabilities, as TrainedScorer gives
        out = out.double().log_softmax(1)
    scores = out[0].double().cpu().numpy() + offset
    return scores, pos


def best(
    run: ModelOnData, scores: np.ndarray, rated: np.ndarray, k: int
) -> list[tuple[int, float, str]]:
    """The k best unrated items as (item id, predicted rating clipped to the scale, title)."""
    return rows_of(TrainedScorer(run), top_k(scores, rated, k), scores)
