"""Ranking models that learn from the liked items (--liked-at): the model reads and learns
only the ratings at or above the threshold, while lists, validation and evaluation still
leave out every item the user rated."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import deeprec
from deeprec.config import Config, ConfigError
from deeprec.data import RatingMatrix
from deeprec.training import Trainer, model_inputs

FAST = {"epochs": 1, "hidden": [8], "fused": True, "progress": False}


@pytest.fixture(scope="module")
def ratings():
    return deeprec.load_ratings("ml-latest-small")[0]


@pytest.fixture(scope="module")
def liked(ratings):
    return deeprec.Recommender("topk", liked_at=4.0, **FAST).fit(ratings)


def test_a_rating_model_cannot_learn_from_liked_items_only():
    with pytest.raises(ConfigError, match="--liked-at"):
        Config(liked_at=4.0).check()
    Config(objective="multinomial", liked_at=4.0).check()


def test_at_least_keeps_exactly_the_ratings_at_or_above(ratings):
    rng = np.random.default_rng(0)
    values = rng.choice([0.5, 1.0, 3.5, 4.0, 4.5, 5.0], size=(40, 30))
    values[rng.random(values.shape) < 0.6] = 0
    train = sp.csr_matrix(values.astype(np.float32))
    m = RatingMatrix(train, np.arange(40), np.arange(30), "user", np.array([0]), np.array([0]),
                     np.array([4.0], np.float32), (0.5, 5.0))  # fmt: skip
    kept = m.at_least(4.0)
    assert kept.train.shape == train.shape
    np.testing.assert_array_equal(kept.train.toarray(), np.where(values >= 4.0, values, 0))
    assert kept.val_ratings is m.val_ratings


def test_the_model_reads_the_liked_items_and_lists_leave_out_every_rated_one(liked, ratings):
    trainer = liked._fitted("test")
    assert isinstance(trainer, Trainer)
    inputs, _ = model_inputs(trainer.config, trainer.matrix)
    assert trainer.inputs.train.nnz == inputs.train.nnz < trainer.matrix.train.nnz
    assert (trainer.inputs.train.data >= 4.0).all()
    by_user = trainer.matrix.by_user()
    users = liked.users[:20]
    top = liked.recommend(users, k=50)
    for u, group in top.groupby("user"):
        p = int(np.searchsorted(liked.users, u))
        rated = set(liked.items[by_user.indices[by_user.indptr[p] : by_user.indptr[p + 1]]])
        assert rated and not rated & set(group["item"]), u  # low-rated items too


def test_fold_in_reads_the_liked_ratings_and_leaves_out_all_given(liked):
    a, b, c = (int(i) for i in liked.items[:3])
    both = liked.recommend_new({a: 5.0, b: 2.0, c: 4.5}, k=len(liked.items) - 3)
    only = liked.recommend_new({a: 5.0, c: 4.5}, k=len(liked.items) - 3)
    assert b not in set(both["item"])  # given, so left out
    shared = both.merge(only, on="item")
    np.testing.assert_array_equal(shared["score_x"], shared["score_y"])  # b never read


def test_validation_leaves_out_every_rated_item(liked):
    """The per-epoch validation and evaluate agree: both leave out every training item."""
    epoch = liked.history["val_ndcg@10"].iloc[-1]
    evaluated = liked.evaluate(ease_lambda=None).loc["deeprec", "ndcg@10"]
    assert epoch == pytest.approx(evaluated, abs=1e-12)


@pytest.mark.parametrize("name", ["topk-liked", "topk-recvae"])
def test_the_liked_presets_train_from_the_command_line(name, tmp_path, capsys):
    """The presets chosen on the inner split load, train (one short epoch) and rank."""
    from deeprec.config import load_preset
    from deeprec.train import cli_main as train_main

    config = load_preset(name)
    assert config.liked_at == 4.0 and config.objective == "multinomial"
    out = tmp_path / name
    args = ["--preset", name, "--epochs", "1", "--max-batches", "2", "--quiet", "--out", str(out)]
    assert train_main(args) == 0
    assert "val NDCG@10" in capsys.readouterr().out
    rec = deeprec.Recommender.load(out)
    assert len(rec.recommend(1, k=10)) == 10


def test_a_ranking_model_has_no_rmse_row(liked):
    """Its scores are log-probabilities, not ratings: evaluate leaves its RMSE and MAE out
    (the baselines keep theirs) and ranks it."""
    table = liked.evaluate(ease_lambda=None)
    assert np.isnan(table.loc["deeprec", "rmse"]) and np.isnan(table.loc["deeprec", "mae"])
    assert table.loc["user+item bias", "rmse"] > 0
    assert table.loc["deeprec", "ndcg@10"] > 0
