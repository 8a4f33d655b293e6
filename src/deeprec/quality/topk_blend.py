"""The top-k blend: lists worth showing a user.

Three members, each user's scores standardised (zero mean, unit spread over the items) and
summed with fixed weights:
- EASE (deeprec.quality.ease), which ranks what a user will rate;
- the rating recipe (``--preset best``: I-AutoRec on the residuals over the bias baseline),
  which predicts how much they will like it ("relevant" asks for both);
- Mult-DAE (``--preset topk``), an autoencoder trained to rank.

The weights and EASE's lambda were chosen on the inner split of ml-latest-small's user-time
training ratings (experiments/topk.py, experiments/results/topk.md) and are the recipe: to
re-run it on another set, ``python -m deeprec.blend --topk --data SET --split SPLIT``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from deeprec import run
from deeprec.config import Config, load_preset
from deeprec.data import DataError
from deeprec.inference.recommendation import TrainedScorer
from deeprec.quality import ease


@dataclass(frozen=True)
class Recipe:
    ease_lambda: float = 100.0
    rating_weight: float = 0.5
    ranking_weight: float = 0.25


MEMBERS = ("rating", "ranking")  # run folders: --preset best, --preset topk


def member_configs(base: Config) -> dict[str, Config]:
    """The two trained members on ``base``'s data and split (their own recipes otherwise)."""
    keep = {k: getattr(base, k) for k in ("data", "split", "quantile", "val_frac", "seed", "fused")}
    return {
        "rating": load_preset("best").replace(**keep),
        "ranking": load_preset("topk").replace(**keep),
    }


def standardised(scores: np.ndarray) -> np.ndarray:
    """Each row minus its mean, over its standard deviation (rows that are flat stay 0)."""
    scores = np.asarray(scores, dtype=np.float64)
    mu = scores.mean(1, keepdims=True)
    sd = scores.std(1, keepdims=True)
    return (scores - mu) / np.where(sd > 0, sd, 1.0)


def save(
    base: Config, folder: Path, data_dir: str | None, recipe: Recipe = Recipe(), progress=False
) -> None:
    """Train both members on the whole training part into folder/rating and folder/ranking
    (run folders) and write folder/topk.json, for ``recommend --blend folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, config in member_configs(base).items():
        job = run.start(config, data_dir, torch.device("cpu"), folder / name)
        run.train(job, quiet=not progress, report=lambda _line: None)
    doc = {"kind": "topk", "recipe": asdict(recipe), "base": base.to_dict()}
    (folder / "topk.json").write_text(json.dumps(doc, indent=1))


class TopkScorer:
    """A saved top-k blend as a ranking.Scorer. EASE is refit from the members' training
    matrix (deterministic); the scores are standardised sums, for ranking only."""

    def __init__(self, folder: Path, data_dir: str | None, device: torch.device) -> None:
        try:
            doc = json.loads((folder / "topk.json").read_text())
            self.recipe = Recipe(**doc["recipe"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"{folder}/topk.json: not a saved top-k blend ({type(exc).__name__})"
            ) from None
        self.parts = {
            name: TrainedScorer(run.load_trained(folder / name, data_dir, device))
            for name in MEMBERS
        }
        rating, ranking = self.parts["rating"], self.parts["ranking"]
        if not (np.array_equal(rating.user_ids, ranking.user_ids)
                and np.array_equal(rating.item_ids, ranking.item_ids)):  # fmt: skip
            raise DataError(f"{folder}: the blend's members were trained on different data")
        self.user_ids, self.item_ids = ranking.user_ids, ranking.item_ids
        self.titles = ranking.titles
        self.scale = (-np.inf, np.inf)  # standardised scores, not ratings
        self._by_user = ranking.run.matrix.by_user()
        self.ease = ease.fit(self._by_user, self.recipe.ease_lambda)

    def score_users(self, users: np.ndarray) -> np.ndarray:
        r = self.recipe
        return (
            standardised(self.ease.scores(self._by_user[users]))
            + r.rating_weight * standardised(self.parts["rating"].score_users(users))
            + r.ranking_weight * standardised(self.parts["ranking"].score_users(users))
        )

    def rated(self, user: int) -> np.ndarray:
        return self.parts["ranking"].rated(user)


def evaluate_saved(folder: Path, data_dir: str | None) -> dict[str, dict]:
    """Top-k metrics (deeprec.quality.metrics) of the saved blend and of each member alone,
    over the validation users of its split."""
    from deeprec.quality.metrics import ranking_metrics

    scorer = TopkScorer(folder, data_dir, torch.device("cpu"))
    matrix = scorer.parts["ranking"].run.matrix
    users = np.unique(matrix.user_view()[0])
    rows = {
        f"EASE (lambda {scorer.recipe.ease_lambda:g})": scorer.ease.scores(scorer._by_user[users]),
        "rating model (--preset best)": scorer.parts["rating"].score_users(users),
        "Mult-DAE (--preset topk)": scorer.parts["ranking"].score_users(users),
        "top-k blend": scorer.score_users(users),
    }
    return {name: ranking_metrics(s, users, matrix) for name, s in rows.items()}
