"""The top-k blend: lists worth showing a user.

Three members, each user's scores standardised (zero mean, unit spread over the items) and
summed with fixed weights:
- EASE (deeprec.scoring.ease), which ranks what a user will rate, fitted either on every
  rated item (as published) or only on the liked ones (rated >= 4, the ratings evaluate
  counts as relevant), which ranks what a user will like;
- the rating recipe (``--preset best``: I-AutoRec on the residuals over the bias baseline),
  which predicts how much they will like it ("relevant" asks for both);
- a ranking autoencoder: Mult-DAE (``--preset topk``) or Mult-VAE on the liked items
  (``--preset topk-liked``).

EASE's form and lambda, the ranking autoencoder and the two weights are chosen on the inner
split of the training ratings of whatever data and split the blend is built for (the split's
rule applied again to its training part), as the rating blend fits its weights; the members
are then trained on the whole training part (experiments/results/topk.md and
topk-members.md have the choices on ml-latest-small).
``python -m deeprec.blend --topk --data SET --split SPLIT``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from deeprec.config import SHARED, Config, ConfigError, load_preset
from deeprec.data import DataError, RatingMatrix, load, split
from deeprec.inference.recommendation import TrainedScorer
from deeprec.inference.trained import load_trained
from deeprec.scoring import ease
from deeprec.scoring.metrics import RELEVANT_AT, paired_difference, ranking_metrics
from deeprec.scoring.predict import score_items
from deeprec.training import lifecycle


@dataclass(frozen=True)
class Recipe:
    """How the members are summed: EASE's L2 weight and form (``ease_liked_at``: fitted on
    the items rated at least this; None: every rated item), then the weights of the rating
    recipe's and the ranking autoencoder's standardised scores; ``ranking_preset`` names
    that autoencoder (a key of RANKING_PRESETS)."""

    ease_lambda: float = 100.0
    rating_weight: float = 0.5
    ranking_weight: float = 0.25
    ease_liked_at: float | None = None
    ranking_preset: str = "topk"

    @classmethod
    def from_doc(cls, doc: object, where: str) -> Recipe:
        """A recipe from saved JSON, or DataError naming the field that is wrong."""
        if not isinstance(doc, dict) or set(doc) - {f.name for f in fields(cls)}:
            names = ", ".join(f.name for f in fields(cls))
            raise DataError(f"{where}: the recipe is not a mapping of {names}")
        recipe = cls(**doc)
        if not isinstance(recipe.ranking_preset, str) or (
            recipe.ranking_preset not in RANKING_PRESETS
        ):
            raise DataError(
                f"{where}: recipe ranking_preset must be one of {', '.join(RANKING_PRESETS)}, "
                f"got {recipe.ranking_preset!r}"
            )
        numbers = {
            f.name: getattr(recipe, f.name) for f in fields(cls) if f.name != "ranking_preset"
        }
        for name, value in numbers.items():
            if value is None and name == "ease_liked_at":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DataError(f"{where}: recipe {name} must be a number, got {value!r}")
            if not np.isfinite(value) or (name == "ease_lambda" and value <= 0):
                raise DataError(f"{where}: recipe {name} = {value!r} is out of range")
        return recipe


EMPTY: Mapping[str, Any] = MappingProxyType({})
MEMBERS = ("rating", "ranking")  # run folders: RATING_PRESET, the recipe's ranking_preset
RATING_PRESET = "best"
# The ranking autoencoders a blend may take, by preset, with the name its tables show: Mult-DAE,
# and Mult-VAE on the liked items (the best autoencoder alone on ml-latest-small,
# docs/quality.md). RecVAE is left out: it ranks below Mult-VAE on liked items there
# (experiments/results/liked-recvae.md) at several times its training time.
RANKING_PRESETS = MappingProxyType({"topk": "Mult-DAE", "topk-liked": "Mult-VAE on liked items"})
# The options that tell those models apart (a saved ranking member is checked against them).
MODEL_KINDS = ("objective", "variational", "recvae", "liked_at")
# What the inner split chooses from.
GRID = {
    "ease_liked_at": (None, RELEVANT_AT),
    "ease_lambda": (50.0, 100.0, 250.0, 500.0, 1000.0),
    "rating_weight": (0.0, 0.25, 0.5, 0.75),
    "ranking_weight": (0.0, 0.1, 0.25, 0.5),
}
EASE_FORMS = [(liked, lam) for liked in GRID["ease_liked_at"] for lam in GRID["ease_lambda"]]


def blended(recipe: Recipe, ease_scores: np.ndarray, rating: np.ndarray, ranking: np.ndarray):
    """The recipe applied to its members' standardised scores (EASE's in the recipe's form,
    ``ranking`` the recipe's ranking autoencoder's)."""
    return ease_scores + recipe.rating_weight * rating + recipe.ranking_weight * ranking


def grid_choice(
    ease_scores: Mapping[tuple[float | None, float], np.ndarray],
    rating: np.ndarray,
    rankings: Mapping[str, np.ndarray],
    users: np.ndarray,
    matrix: RatingMatrix,
) -> dict[Recipe, float]:
    """NDCG@10 of every GRID point on ``matrix``'s validation ratings for ``users``, from
    standardised member scores (``ease_scores`` by (liked_at, lambda), ``rankings`` by
    ranking preset, the ones to choose from), in the grid's order (max() then picks the
    first of equals). A ranking weight of 0 is scored once, with the first preset: the
    others would give the same lists."""
    out = {}
    for liked, lam in EASE_FORMS:
        for w1 in GRID["rating_weight"]:
            for k, (preset, ranking) in enumerate(rankings.items()):
                for w2 in GRID["ranking_weight"]:
                    if w2 == 0 and k > 0:
                        continue
                    recipe = Recipe(lam, w1, w2, liked, preset)
                    mix = blended(recipe, ease_scores[liked, lam], rating, ranking)
                    out[recipe] = ranking_metrics(mix, users, matrix, reps=0)["ndcg@10"]
    return out


def ease_fits(rated) -> dict[tuple[float | None, float], ease.Ease]:
    """EASE in every form and lambda of the grid, fitted on the users x items ``rated``."""
    return {(liked, lam): ease.fit(rated, lam, liked) for liked, lam in EASE_FORMS}


def ease_members(fits: Mapping, rows) -> dict[tuple[float | None, float], np.ndarray]:
    """Standardised scores of ``rows`` (users x items ratings) under each of ``fits``."""
    return {form: standardised(model.scores(rows)) for form, model in fits.items()}


def member_configs(
    base: Config, overrides: Mapping[str, Any] = EMPTY, ranking: str = "topk"
) -> dict[str, Config]:
    """The two trained members on ``base``'s data and split (the ranking one from preset
    ``ranking``), each its own recipe with the options a caller set explicitly
    (``overrides``, e.g. --epochs) over both."""
    return {
        "rating": member_config(base, RATING_PRESET, overrides),
        "ranking": member_config(base, ranking, overrides),
    }


def ranking_configs(base: Config, overrides: Mapping[str, Any] = EMPTY) -> dict[str, Config]:
    """Every ranking autoencoder the blend chooses from (RANKING_PRESETS), by preset, on
    ``base``'s data and split with ``overrides`` over each (as member_configs)."""
    return {preset: member_config(base, preset, overrides) for preset in RANKING_PRESETS}


def member_config(base: Config, preset: str, overrides: Mapping[str, Any] = EMPTY) -> Config:
    """Member ``preset`` on ``base``'s data and split, with ``overrides`` over it."""
    keep = {k: getattr(base, k) for k in SHARED}
    return load_preset(preset).replace(**keep, **overrides)


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
    s = score_items(trainer.model, trainer.inputs, rows, trainer.plan, offsets=trainer.offsets)
    return s[:, cols]


def choose_recipe(
    base: Config,
    data_dir: str | None,
    progress: bool = False,
    overrides: Mapping[str, Any] = EMPTY,
) -> dict[Recipe, float]:
    """NDCG@10 of every GRID point on the inner split of ``base``'s training ratings
    (members trained on the inner training part); see chosen()."""
    dataset = load(base.data, data_dir, base.scale_range())
    train, _ = split(dataset.ratings, **base.split_options())
    ease.check_fits(train["item"].nunique())  # EASE is the blend's base: refuse before training
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
    stage = "choosing on the inner split: " if progress else None
    rating = standardised(member_scores(
        member_config(base, RATING_PRESET, overrides), by_item, by_user, users,
        stage and stage + "rating model ",
    ))  # fmt: skip
    rankings = {}
    for preset, config in ranking_configs(base, overrides).items():
        label = stage and f"{stage}{RANKING_PRESETS[preset]} "
        rankings[preset] = standardised(member_scores(config, by_user, by_user, users, label))
    rated = by_user.by_user()
    members = ease_members(ease_fits(rated), rated[users])
    scores = grid_choice(members, rating, rankings, users, by_user)
    if all(np.isnan(v) for v in scores.values()):
        raise DataError(
            f"the inner {base.split} split of {base.data} has no validation rating >= 4 to "
            "choose the top-k blend's weights on; use more data or another --split"
        )
    return scores


def chosen(scores: Mapping[Recipe, float]) -> tuple[Recipe, float]:
    """(the best recipe of a grid_choice, the lambda EASE alone scores best with there:
    the published form, the other members' weights 0)."""
    best = max(scores, key=scores.get)
    alone = max(GRID["ease_lambda"], key=lambda lam: scores[Recipe(lam, 0.0, 0.0, None)])
    return best, alone


def save(
    base: Config,
    folder: Path,
    data_dir: str | None,
    recipe: Recipe | None = None,
    progress: bool = False,
    overrides: Mapping[str, Any] = EMPTY,
) -> Recipe:
    """Choose the recipe on the inner split (unless given), train both members (the ranking
    one the recipe names) on the whole training part into folder/rating and folder/ranking
    (run folders) and write folder/topk.json, for ``recommend --blend folder``: the recipe,
    its inner NDCG@10 and the lambda EASE alone chose there (the anchor evaluate_saved
    compares with). Returns the recipe."""
    inner_ndcg, anchor_lambda = None, None
    if recipe is None:
        scores = choose_recipe(base, data_dir, progress, overrides)
        recipe, anchor_lambda = chosen(scores)
        inner_ndcg = scores[recipe]
    folder.mkdir(parents=True, exist_ok=True)
    for name, config in member_configs(base, overrides, recipe.ranking_preset).items():
        job = lifecycle.start(config, data_dir, torch.device("cpu"), folder / name)
        lifecycle.train(job, quiet=not progress, report=lambda _line: None)
    doc = {
        "kind": "topk",
        "recipe": asdict(recipe),
        "member_overrides": dict(overrides),
        "inner_ndcg@10": inner_ndcg,
        "ease_alone_lambda": anchor_lambda,
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
            self.recipe = Recipe.from_doc(doc["recipe"], f"{folder}/topk.json")
            self.anchor_lambda = doc.get("ease_alone_lambda")
            if self.anchor_lambda is not None:
                self.anchor_lambda = Recipe.from_doc(
                    {"ease_lambda": self.anchor_lambda}, f"{folder}/topk.json ease_alone_lambda"
                ).ease_lambda
        except DataError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"{folder}/topk.json: not a saved top-k blend ({type(exc).__name__})"
            ) from None
        self.parts = {
            name: TrainedScorer(load_trained(folder / name, data_dir, device)) for name in MEMBERS
        }
        rating, ranking = self.parts["rating"], self.parts["ranking"]
        if not (np.array_equal(rating.user_ids, ranking.user_ids)
                and np.array_equal(rating.item_ids, ranking.item_ids)):  # fmt: skip
            raise DataError(f"{folder}: the blend's members were trained on different data")
        overrides = doc.get("member_overrides") or {}
        if not isinstance(overrides, dict):
            raise DataError(f"{folder}/topk.json: member_overrides is not a mapping")
        try:
            model = load_preset(self.recipe.ranking_preset).replace(**overrides)
        except ConfigError as exc:
            raise DataError(f"{folder}/topk.json: member_overrides: {exc}") from None
        if any(getattr(ranking.run.config, k) != getattr(model, k) for k in MODEL_KINDS):
            raise DataError(
                f"{folder}/ranking: not the {ranking_name(self.recipe.ranking_preset)} model "
                "topk.json names"
            )
        self.user_ids, self.item_ids = ranking.user_ids, ranking.item_ids
        self.titles = ranking.titles
        self.scale = (-np.inf, np.inf)  # standardised scores, not ratings
        self._by_user = ranking.run.matrix.by_user()
        self.ease = ease.fit(self._by_user, self.recipe.ease_lambda, self.recipe.ease_liked_at)

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return blended(
            self.recipe,
            standardised(self.ease.scores(self._by_user[users])),
            standardised(self.parts["rating"].score_users(users)),
            standardised(self.parts["ranking"].score_users(users)),
        )

    def rated(self, user: int) -> np.ndarray:
        return self.parts["ranking"].rated(user)


def evaluate_saved(folder: Path, data_dir: str | None) -> dict[str, dict]:
    """Top-k metrics (deeprec.scoring.metrics) of the saved blend, of each member alone and
    of EASE as published (the lambda it chose alone on the inner split), over the validation
    users of its split; the blend's row also holds its paired gain over that EASE."""
    scorer = TopkScorer(folder, data_dir, torch.device("cpu"))
    matrix = scorer.parts["ranking"].run.matrix
    users = np.unique(matrix.user_view()[0])
    rows_in = scorer._by_user[users]
    r = scorer.recipe
    lam = scorer.anchor_lambda or r.ease_lambda
    anchor = ease.fit(scorer._by_user, lam).scores(rows_in)
    rows = {f"EASE (lambda {lam:g})": anchor}
    if (r.ease_liked_at, r.ease_lambda) != (None, lam):
        rows[f"the blend's EASE ({ease_form(r)})"] = scorer.ease.scores(rows_in)
    rows |= {
        "rating model (--preset best)": scorer.parts["rating"].score_users(users),
        ranking_name(r.ranking_preset): scorer.parts["ranking"].score_users(users),
        "top-k blend": scorer.score_users(users),
    }
    table = {name: ranking_metrics(s, users, matrix) for name, s in rows.items()}
    if not table["top-k blend"]["users"]:
        raise DataError(f"{folder}: no validation rating >= 4 to score the top-k blend on")
    table["top-k blend"] |= versus_ease(rows["top-k blend"], anchor, users, matrix)
    return table


def ranking_name(preset: str) -> str:
    """A ranking member's row name in the tables: its model and preset."""
    return f"{RANKING_PRESETS[preset]} (--preset {preset})"


def ease_form(recipe: Recipe) -> str:
    """The blend's EASE in words: its lambda and which ratings it reads."""
    if recipe.ease_liked_at is None:
        return f"lambda {recipe.ease_lambda:g}, every rating"
    return f"lambda {recipe.ease_lambda:g}, ratings >= {recipe.ease_liked_at:g}"


def versus_ease(
    blend: np.ndarray, anchor: np.ndarray, users: np.ndarray, matrix: RatingMatrix
) -> dict:
    """The blend's NDCG@10 gain over EASE on the same users, with a paired bootstrap 95%
    interval (keys ``ndcg@10_minus_ease``, ``ndcg@10_minus_ease_ci95``)."""
    gain, ci = paired_difference(blend, anchor, users, matrix)
    return {"ndcg@10_minus_ease": gain, "ndcg@10_minus_ease_ci95": ci}
