"""Strong generalization: held-out users split apart, folded in without retraining, and the
top-k blend scored on them (blend --topk --protocol strong)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from datasets import synthetic_ratings, write_movielens_csv

from deeprec.blend import cli_main as blend_main
from deeprec.config import Config
from deeprec.data import DataError, RatingMatrix
from deeprec.quality.strong_generalization import held_out_matrix, split_users
from deeprec.scoring import baseline
from deeprec.scoring.predict import fold_in_scores, score_items
from deeprec.training import Trainer


def frame(n_users: int = 50, n_items: int = 40, per_user: int = 12, seed: int = 0) -> pd.DataFrame:
    rows = synthetic_ratings(n_users, n_items, per_user, seed)
    return pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])


def test_users_are_held_out_whole_and_their_ratings_split_at_random():
    ratings = frame()
    s = split_users(ratings, held_out=0.2, fold_in=0.8, seed=3)
    train_users = set(s.train["user"])
    val_users = set(s.val.fold_in["user"]) | set(s.val.targets["user"])
    test_users = set(s.test.fold_in["user"]) | set(s.test.targets["user"])
    assert not train_users & val_users and not train_users & test_users
    assert not val_users & test_users
    assert len(val_users) == len(test_users) == 10
    known = set(s.train["item"])
    for held in (s.val, s.test):
        both = pd.concat([held.fold_in, held.targets])
        assert set(both["item"]) <= known  # no item only held-out users rated
        for user, mine in both.groupby("user"):
            original = ratings[(ratings["user"] == user) & ratings["item"].isin(known)]
            assert sorted(mine["item"]) == sorted(original["item"])  # nothing lost or doubled
            n_target = int((held.targets["user"] == user).sum())
            assert n_target == int(np.floor(0.2 * len(original)))
            assert not set(held.targets[held.targets["user"] == user]["item"]) & set(
                held.fold_in[held.fold_in["user"] == user]["item"]
            )
    again = split_users(ratings, held_out=0.2, fold_in=0.8, seed=3)
    pd.testing.assert_frame_equal(again.test.targets, s.test.targets)
    other = split_users(ratings, held_out=0.2, fold_in=0.8, seed=4)
    assert set(other.test.targets["user"]) != set(s.test.targets["user"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(held_out=0.5), "held-out share of users must be in (0, 0.5)"),
        (dict(held_out=0.0), "held-out share of users must be in (0, 0.5)"),
        (dict(fold_in=1.0), "fold-in share must be in (0, 1)"),
        (dict(held_out=0.01), "too few to hold out"),
    ],
)
def test_bad_user_split_options_are_refused(kwargs, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        split_users(frame(n_users=20), **kwargs)


def test_the_held_out_matrix_keeps_the_training_items_and_folds_in_only_the_fold_in():
    ratings = frame()
    s = split_users(ratings, seed=1)
    train = RatingMatrix.from_split(s.train, s.train.iloc[:0], "user")
    matrix, users, rows = held_out_matrix(s, s.test, (0.5, 5.0))
    np.testing.assert_array_equal(matrix.item_ids(), train.item_ids())
    held = set(s.test.targets["user"])
    assert set(matrix.user_ids()[users]) == held
    for row, u in enumerate(users):
        uid = matrix.user_ids()[u]
        fold = s.test.fold_in[s.test.fold_in["user"] == uid]
        assert sorted(matrix.item_ids()[rows[row].indices]) == sorted(fold["item"])


@pytest.mark.parametrize("residual", [False, True])
def test_folding_in_a_training_users_row_is_scoring_that_user(residual):
    # a user-based model reads a folded-in row as it reads a training row
    ratings = frame(n_users=30)
    matrix = RatingMatrix.from_split(ratings, ratings.iloc[:0], "user", (0.5, 5.0))
    config = Config(hidden=[8], epochs=1, residual=residual, by="user")
    trainer = Trainer.assemble(config, matrix, torch.device("cpu"))
    users = np.array([0, 3, 7])
    got = fold_in_scores(trainer.model, trainer.offsets, matrix.train[users])
    if residual:
        # the folded-in user bias replaces the fitted one: the same scores up to that shift
        offsets = trainer.offsets
        b_new = baseline.fold_in_rows(offsets, matrix.train[users])
        for k, u in enumerate(users):
            want_bias = baseline.fold_in_row(offsets, matrix.train[u].indices, matrix.train[u].data)
            assert b_new[k] == pytest.approx(want_bias)
        x = np.zeros((len(users), matrix.n_cols), dtype=np.float32)
        coo = matrix.train[users].tocoo()
        base = offsets.mu + b_new[:, None] + offsets.cols[None, :]
        x[coo.row, coo.col] = coo.data - base[coo.row, coo.col]
        trainer.model.eval()
        want = trainer.model(torch.from_numpy(x)).double().detach().numpy() + base
    else:
        want = score_items(trainer.model, trainer.inputs, users, trainer.plan)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fold_in_rows_is_one_als_row_step():
    biases = baseline.Biases(3.5, np.zeros(2), np.array([0.5, -0.5, 0.0]))
    rows = sp.csr_matrix(np.array([[4.0, 0.0, 3.0], [0.0, 0.0, 0.0]]))
    got = baseline.fold_in_rows(biases, rows, reg=2.0)
    np.testing.assert_allclose(got, [((4 - 3.5 - 0.5) + (3 - 3.5 - 0.0)) / (2 + 2), 0.0])


def test_blend_strong_protocol_reports_every_model_on_the_test_users(tmp_path, capsys):
    data = write_movielens_csv(tmp_path / "toy", synthetic_ratings(60, 50, 15, seed=2))
    code = blend_main(["--topk", "--protocol", "strong", "--data", str(data), "--epochs", "2",
                       "--quiet"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    for name in ("popularity", "EASE", "rating model", "Mult-DAE (--preset topk)",
                 "Mult-VAE on liked items (--preset topk-liked)", "top-k blend"):  # fmt: skip
        assert name in out
    assert "36 training users; 12 validation and 12 test users" in out
    assert "top-k blend - EASE: NDCG@10" in out and "(paired over the same users)" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--protocol", "strong"], "--protocol strong goes with --topk"),
        (["--topk", "--protocol", "strong", "--save", "x"], "--protocol strong goes with --topk"),
        (["--topk", "--preset", "best"], "--topk trains its own members"),
        (["--topk", "--protocol", "strong", "--split", "random"], "drop --split"),
        (["--topk", "--protocol", "strong", "--val-frac", "0.1"], "drop --val-frac"),
    ],
)
def test_blend_refuses_protocol_misuse(tmp_path, capsys, extra, message):
    data = write_movielens_csv(tmp_path / "toy")
    extra = [str(tmp_path / e) if e == "x" else e for e in extra]
    assert blend_main(["--data", str(data), "--quiet", *extra]) == 2
    assert message in capsys.readouterr().err


def test_an_unknown_protocol_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        blend_main(["--topk", "--protocol", "weak"])
    assert exc.value.code == 2 and "invalid choice: 'weak'" in capsys.readouterr().err


def test_a_set_with_nothing_relevant_to_predict_is_refused_in_one_line(tmp_path, capsys):
    rows = [(u, i, 3.0, t) for u, i, _, t in synthetic_ratings(30, 40, 10, seed=3)]
    data = write_movielens_csv(tmp_path / "flat", rows)  # every rating 3: nothing relevant
    code = blend_main(["--topk", "--protocol", "strong", "--data", str(data), "--epochs", "1",
                       "--quiet"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no validation user has a held-out rating >= 4" in err, err
    assert len(err.splitlines()) == 1
