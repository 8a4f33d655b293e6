"""The top-k blend: lists worth showing a user.

Three members, each user's scores standardised (zero mean, unit spread over the items) and
summed with fixed weights:
- EASE (deeprec.quality.ease), which ranks what a user will rate;
- the rating recipe (``--preset best``: I-AutoRec on the residuals over the bias baseline),
  which predicts how much they will like it ("relevant" asks for both);
- Mult-DAE (``--preset topk``), an autoencoder trained to rank.

EASE's lambda and the two weights are chosen on the inner split of the training ratings of
whatever data and split the blend is built for (the split's rule applied again to its
training part), as the rating blend fits its weights; the members are then trained on the
whole training part. On ml-latest-small's user-time split the choice is lambda 100, 0.5 and
0.25 (experiments/results/topk.md). ``python -m deeprec.blend --topk --data SET --split SPLIT``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from deeprec import run
from deeprec.config import Config, load_preset
from deeprec.data import DataError, RatingMatrix, load, split
from deeprec.inference.predict import score_items
from deeprec.inference.recommendation import TrainedScorer
from deeprec.quality import ease


@dataclass(frozen=True)
class Recipe:
    ease_lambda: float = 100.0
    rating_weight: float = 0.5
    ranking_weight: float = 0.25


EMPTY: Mapping[str, Any] = MappingProxyType({})
MEMBERS = ("rating", "ranking")  # run folders: --preset best, --preset topk
# What the inner split chooses from.
GRID = {
    "ease_lambda": (100.0, 250.0, 500.0, 1000.0),
    "rating_weight": (0.0, 0.25, 0.5, 0.75),
    "ranking_weight": (0.0, 0.1, 0.25, 0.5),
}


def member_configs(base: Config, overrides: Mapping[str, Any] = EMPTY) -> dict[str, Config]:
    """The two trained members on ``base``'s data and split, each its own recipe with the
    options a caller set explicitly (``overrides``, e.g. --epochs) over both."""
    keep = {k: getattr(base, k) for k in ("data", "split", "quantile", "val_frac", "seed", "fused")}
    return {
        "rating": load_preset("best").replace(**keep, **overrides),
        "ranking": load_preset("topk").replace(**keep, **overrides),
    }


def standardised(scores: np.ndarray) -> np.ndarray:
    """Each row minus its mean, over its standard deviation (rows that are flat stay 0)."""
    scores = np.asarray(scores, dtype=np.float64)
    mu = scores.mean(1, keepdims=True)
    sd = scores.std(1, keepdims=True)
    return (scores - mu) / np.where(sd > 0, sd, 1.0)


def member_scores(
    config: Config, matrix: RatingMatrix, users_matrix: RatingMatrix, users: np.ndarray, label
) -> np.ndarray:
    """Scores of a member trained on ``matrix`` for ``users`` (positions in users_matrix, users
    as rows), columns in users_matrix's item order, whatever the member's orientation."""
    from deeprec.training import Trainer, fit

    trainer = Trainer.assemble(config, matrix, torch.device("cpu"))
    fit(trainer, quiet=label is None, label=label or "", evaluate=False)
    if matrix.rows_are_users:
        rows, cols = users, np.arange(users_matrix.n_items)
    else:  # item-based: the users are its columns, the items its rows
        rows = np.searchsorted(matrix.user_ids(), users_matrix.user_ids()[users])
        cols = np.searchsorted(matrix.item_ids(), users_matrix.item_ids())
    s = score_items(trainer.model, trainer.inputs, rows, "cpu", offsets=trainer.offsets)
    return s[:, cols]


def choose_recipe(
    base: Config,
    data_dir: str | None,
    progress: bool = False,
    overrides: Mapping[str, Any] = EMPTY,
) -> tuple[Recipe, float]:
    """The GRID point with the best NDCG@10 on the inner split of ``base``'s training ratings
    (members trained on the inner training part), and that NDCG@10."""
    from deeprec.quality.metrics import ranking_metrics

    dataset = load(base.data, data_dir)
    train, _ = split(dataset.ratings, **base.split_options())
    inner_train, inner_val = split(train, **base.split_options())
    by_user, by_item = (
        RatingMatrix.from_split(inner_train, inner_val, by, dataset.scale)
        for by in ("user", "item")
    )
    users = np.unique(by_user.user_view()[0])
    if len(users) == 0:
        raise DataError(
            f"the inner {base.split} split of {base.data} leaves no validation user to choose "
            "the top-k blend's weights on; use more data or another --split"
        )
    configs = member_configs(base, overrides)
    stage = "choosing on the inner split: " if progress else None
    rating = standardised(member_scores(
        configs["rating"], by_item, by_user, users, stage and stage + "rating model "
    ))  # fmt: skip
    ranking = standardised(member_scores(
        configs["ranking"], by_user, by_user, users, stage and stage + "Mult-DAE "
    ))  # fmt: skip
    rated = by_user.by_user()
    best, best_ndcg = Recipe(), -1.0
    for lam in GRID["ease_lambda"]:
        base_scores = standardised(ease.fit(rated, lam).scores(rated[users]))
        for w1 in GRID["rating_weight"]:
            for w2 in GRID["ranking_weight"]:
                mix = base_scores + w1 * rating + w2 * ranking
                ndcg = ranking_metrics(mix, users, by_user, reps=0)["ndcg@10"]
                if ndcg > best_ndcg:
                    best, best_ndcg = Recipe(lam, w1, w2), ndcg
    return best, best_ndcg


def save(
    base: Config,
    folder: Path,
    data_dir: str | None,
    recipe: Recipe | None = None,
    progress: bool = False,
    overrides: Mapping[str, Any] = EMPTY,
) -> Recipe:
    """Choose the recipe on the inner split (unless given), train both members on the whole
    training part into folder/rating and folder/ranking (run folders) and write
    folder/topk.json, for ``recommend --blend folder``. Returns the recipe."""
    inner_ndcg = None
    if recipe is None:
        recipe, inner_ndcg = choose_recipe(base, data_dir, progress, overrides)
    folder.mkdir(parents=True, exist_ok=True)
    for name, config in member_configs(base, overrides).items():
        job = run.start(config, data_dir, torch.device("cpu"), folder / name)
        run.train(job, quiet=not progress, report=lambda _line: None)
    doc = {
        "kind": "topk",
        "recipe": asdict(recipe),
        "member_overrides": dict(overrides),
        "inner_ndcg@10": inner_ndcg,
        "base": base.to_dict(),
    }
    (folder / "topk.json").write_text(json.dumps(doc, indent=1))
    return recipe


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
