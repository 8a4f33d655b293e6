"""Strong generalization (Liang et al., WWW 2018): top-k lists for users no model trained on.

The users are split at random into training, validation and test users (``HELD_OUT`` of
them each held out). Models learn from the training users' ratings only. Each held-out
user's ratings are split at random: ``FOLD_IN`` of them are folded in (the model's input,
no retraining), the rest are the targets, scored with evaluate's rule (relevant = a rating
>= 4; folded-in items are never recommended). Held-out ratings of items no training user
rated are dropped (no model can score them), as Liang et al. do.

Every member of the top-k blend folds in except the item-based rating recipe (I-AutoRec,
``--preset best``: a new user would be a new input coordinate it has no weights for); here
the rating member is the same recipe by user (U-AutoRec on the residuals over the bias
baseline, the new user's bias folded in too). EASE's form and lambda, the ranking
autoencoder and the blend's weights are chosen on the validation users from topk_blend.GRID,
and everything is reported once on the test users.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from deeprec.config import Config
from deeprec.data import DataError, RatingMatrix, load
from deeprec.data.ids import contained
from deeprec.data.splits import rows_where
from deeprec.quality.topk_blend import (
    EMPTY,
    RANKING_PRESETS,
    RATING_PRESET,
    Recipe,
    blended,
    chosen,
    ease_fits,
    ease_form,
    ease_members,
    grid_choice,
    member_config,
    ranking_configs,
    ranking_name,
    standardised,
    versus_ease,
)
from deeprec.scoring import ease
from deeprec.scoring.metrics import popularity, ranking_metrics
from deeprec.scoring.predict import fold_in_scores

HELD_OUT = 0.2  # of the users, for validation and again for test
FOLD_IN = 0.8  # of each held-out user's ratings


@dataclass(frozen=True)
class HeldOut:
    """Users no model trains on: the ratings folded in, and the targets to predict."""

    fold_in: pd.DataFrame
    targets: pd.DataFrame


@dataclass(frozen=True)
class UserSplit:
    """The training users' ratings, and the validation and test users'."""

    train: pd.DataFrame
    val: HeldOut
    test: HeldOut


def split_users(
    ratings: pd.DataFrame, held_out: float = HELD_OUT, fold_in: float = FOLD_IN, seed: int = 0
) -> UserSplit:
    """Users at random into training, validation and test (``held_out`` of them each); each
    held-out user's ratings at random into fold-in (``fold_in`` of them, at least one) and
    targets (the rest, floor((1 - fold_in) n))."""
    if not 0.0 < held_out < 0.5:
        raise DataError(f"the held-out share of users must be in (0, 0.5), got {held_out}")
    if not 0.0 < fold_in < 1.0:
        raise DataError(f"the fold-in share must be in (0, 1), got {fold_in}")
    rng = np.random.default_rng(seed)
    users = rng.permutation(np.unique(ratings["user"].to_numpy()))
    n = round(held_out * len(users))
    if n < 1 or len(users) - 2 * n < 1:
        raise DataError(
            f"{len(users)} users are too few to hold out {held_out:g} of them twice and train "
            "on the rest"
        )
    user = ratings["user"].to_numpy()
    is_val, is_test = contained(user, users[:n]), contained(user, users[n : 2 * n])
    train = rows_where(ratings, ~(is_val | is_test))
    known = train["item"].to_numpy()

    def held(mask: np.ndarray) -> HeldOut:
        frame = rows_where(ratings, mask & contained(ratings["item"].to_numpy(), known))
        # per user: a random order, the last floor((1 - fold_in) n) ratings are targets
        order = rng.permutation(len(frame))
        shuffled = frame.iloc[order]
        rank = shuffled.groupby("user").cumcount().to_numpy()
        size = shuffled.groupby("user")["user"].transform("size").to_numpy()
        target = rank >= size - np.floor((1.0 - fold_in) * size)
        target &= size > 1  # a user keeps at least one rating to fold in
        return HeldOut(
            shuffled[~target].reset_index(drop=True), shuffled[target].reset_index(drop=True)
        )

    return UserSplit(train, held(is_val), held(is_test))


def held_out_matrix(
    split: UserSplit, held: HeldOut, scale: tuple[float, float]
) -> tuple[RatingMatrix, np.ndarray, sp.csr_matrix]:
    """(a users-as-rows matrix of the training users' ratings and the held-out users'
    fold-in, with the targets as its validation; the held-out users' positions in it; their
    fold-in rows). Its items are the training users' items, in the training matrix's order."""
    both = pd.concat([split.train, held.fold_in], ignore_index=True)
    matrix = RatingMatrix.from_split(both, held.targets, "user", scale)
    users = np.unique(matrix.user_view()[0])
    return matrix, users, matrix.by_user()[users]


_NONE_RELEVANT = (
    "strong generalization on {data}: no {who} user has a held-out rating >= 4 to predict "
    "(too few users or ratings); use a larger set"
)


@dataclass
class StrongResult:
    """The recipe chosen on the validation users, and every model's metrics on the test
    users (deeprec.scoring.metrics.ranking_metrics)."""

    recipe: Recipe
    val_ndcg: float
    table: dict[str, dict]
    n_train_users: int


def evaluate(
    base: Config,
    data_dir: str | None,
    progress: bool = False,
    report: Callable[[str], None] = lambda _line: None,
    overrides: Mapping[str, Any] = EMPTY,
) -> StrongResult:
    """Popularity, EASE, the rating recipe by user, each ranking autoencoder the blend
    chooses from (topk_blend.RANKING_PRESETS) and their top-k blend under strong
    generalization on ``base``'s data (the split options are not used: the users are split
    instead, seeded by ``base.seed``); ``overrides``: options set explicitly for every
    member (topk_blend.member_config)."""
    from deeprec.training import Trainer, fit

    dataset = load(base.data, data_dir, base.scale_range())
    split = split_users(dataset.ratings, seed=base.seed)
    train = RatingMatrix.from_split(split.train, split.train.iloc[:0], "user", dataset.scale)
    ease.check_fits(train.n_items)  # EASE is the blend's base: refuse before training
    report(
        f"{train.n_users} training users; {split.val.targets['user'].nunique()} validation "
        f"and {split.test.targets['user'].nunique()} test users, {FOLD_IN:g} of each folded in"
    )
    configs = {"rating": member_config(base, RATING_PRESET, overrides).replace(by="user")}
    configs |= ranking_configs(base, overrides)
    trained = {}
    for name, config in configs.items():
        trainer = Trainer.assemble(config, train, torch.device("cpu"))
        label = f"{RANKING_PRESETS.get(name, name)} member on the training users"
        label = label if progress else ""
        fit(trainer, quiet=not progress, label=label, evaluate=False)
        trained[name] = trainer
    rated = train.by_user()
    fits = ease_fits(rated)

    def scores(held: HeldOut) -> tuple[RatingMatrix, np.ndarray, dict]:
        matrix, users, rows = held_out_matrix(split, held, dataset.scale)
        if not np.array_equal(matrix.item_ids(), train.item_ids()):
            raise AssertionError("the held-out matrix's items differ from the training users'")
        out = {"popularity": popularity(rated, len(users))}
        out |= {name: fold_in_scores(t.model, t.offsets, rows, liked_at=t.config.liked_at)
                for name, t in trained.items()}  # fmt: skip
        out["EASE"] = ease_members(fits, rows)  # standardised, every form in the grid
        return matrix, users, out

    matrix, users, s = scores(split.val)
    rankings = {preset: standardised(s[preset]) for preset in configs if preset != "rating"}
    grid = grid_choice(s["EASE"], standardised(s["rating"]), rankings, users, matrix)
    if all(np.isnan(v) for v in grid.values()):
        raise DataError(_NONE_RELEVANT.format(who="validation", data=base.data))
    best, alone = chosen(grid)
    matrix, users, s = scores(split.test)
    rows = {"popularity": s["popularity"], f"EASE (lambda {alone:g})": s["EASE"][None, alone]}
    if (best.ease_liked_at, best.ease_lambda) != (None, alone):
        rows[f"the blend's EASE ({ease_form(best)})"] = s["EASE"][
            best.ease_liked_at, best.ease_lambda
        ]
    rows |= {
        "rating model (--preset best --by user)": s["rating"],
        **{ranking_name(preset): s[preset] for preset in rankings},
        "top-k blend": blended(
            best,
            s["EASE"][best.ease_liked_at, best.ease_lambda],
            standardised(s["rating"]),
            standardised(s[best.ranking_preset]),
        ),
    }
    table = {name: ranking_metrics(v, users, matrix) for name, v in rows.items()}
    if not table["top-k blend"]["users"]:
        raise DataError(_NONE_RELEVANT.format(who="test", data=base.data))
    anchor = s["EASE"][None, alone]
    table["top-k blend"] |= versus_ease(rows["top-k blend"], anchor, users, matrix)
    return StrongResult(best, grid[best], table, train.n_users)
