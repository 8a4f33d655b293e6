"""Quality machinery: residual learning, input dropout, ranking metrics, bootstrap intervals."""

from __future__ import annotations

import json
from itertools import pairwise

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import random_csr
from datasets import write_movielens_csv

from deeprec.config import Config
from deeprec.data import RatingMatrix
from deeprec.evaluate import cli_main as evaluate_main
from deeprec.model import AutoEncoder
from deeprec.ops import masked_mse
from deeprec.quality.evaluation import bootstrap_rmse, ranking_metrics
from deeprec.recommend import cli_main as recommend_main
from deeprec.scoring import baseline
from deeprec.scoring.metrics import paired_difference
from deeprec.scoring.predict import predict_entries, score_items
from deeprec.train import cli_main as train_main
from deeprec.training import TrainingPlan, model_inputs


def toy_matrix(by="user"):
    rng = np.random.default_rng(0)
    rows = [
        (u, i, float(rng.integers(1, 6)), u * 100 + i)
        for u in range(12)
        for i in rng.choice(15, 6, replace=False)
    ]
    df = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    m = RatingMatrix.from_split(df.iloc[:-10], df.iloc[-10:], by, (1.0, 5.0))
    assert len(m.val_ratings) > 0
    return m


@pytest.mark.parametrize("by", ["user", "item"])
def test_residual_model_that_outputs_zero_predicts_the_bias_baseline(by):
    m = toy_matrix(by)
    inputs, offsets = model_inputs(Config(residual=True), m)
    fitted = baseline.fit(m.train, m.by)
    np.testing.assert_allclose(
        inputs.train.data, m.train.data - fitted.at(*m.train.nonzero()), atol=1e-5
    )
    model = AutoEncoder(m.n_cols, (4,))
    with torch.no_grad():
        last = model.decoder[-1]
        last.weight.zero_()
        last.bias.zero_()
    plan = TrainingPlan("sparse")
    pred = predict_entries(model, inputs, m.val_rows, m.val_cols, plan, offsets=offsets)
    np.testing.assert_allclose(pred, fitted.at(m.val_rows, m.val_cols), atol=1e-6)
    # score_items agrees with predict_entries in either orientation
    users = np.unique(m.val_rows if by == "user" else m.val_cols)
    scores = score_items(model, inputs, users, plan, offsets=offsets)
    for u in users[:3]:
        items = np.arange(m.n_items)
        r, c = (np.full_like(items, u), items) if by == "user" else (items, np.full_like(items, u))
        np.testing.assert_allclose(
            scores[list(users).index(u)],
            predict_entries(model, inputs, r, c, plan, offsets=offsets),
            atol=1e-6,
        )


def test_input_dropout_is_training_only_and_the_sparse_path_matches_the_dense_one_in_eval():
    crow, col, val = random_csr(6, 30, 0.3, seed=1)
    model = AutoEncoder(30, (8,), input_dropout=0.5).double()
    dense = torch.zeros(6, 30, dtype=torch.float64)
    dense[torch.repeat_interleave(torch.arange(6), crow.diff()), col] = val
    model.eval()
    torch.testing.assert_close(
        model.sparse_loss(crow, col, val, impl="fused", backend="native"),
        masked_mse(model(dense), (crow, col, val)),
        rtol=1e-10,
        atol=1e-10,
    )
    model.train()
    torch.manual_seed(0)
    a = model.sparse_loss(crow, col, val, impl="fused", backend="native")
    torch.manual_seed(1)
    b = model.sparse_loss(crow, col, val, impl="fused", backend="native")
    assert a.item() != b.item()  # different masks -> different losses


def _frame(rows):
    return pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])


def test_ranking_metrics_on_a_hand_example():
    # user 1: item 0 in training; validation item 3 (5 stars, relevant), item 4 (2 stars).
    # user 3: item 1 in training; validation items 0 and 2 (relevant). user 2: no validation.
    train = _frame([(1, 0, 4.0, 0), (2, 1, 3.0, 0), (2, 2, 3.0, 0), (2, 3, 3.0, 0),
                    (2, 4, 3.0, 0), (3, 1, 3.0, 0)])  # fmt: skip
    val = _frame([(1, 3, 5.0, 1), (1, 4, 2.0, 1), (3, 0, 4.0, 1), (3, 2, 4.5, 1)])
    m = RatingMatrix.from_split(train, val, "user")
    scores = np.array(
        [
            [9.0, 1.0, 2.0, 3.0, 8.0],  # user 1: item 0 excluded; 4, 3, 2, 1
            [0.0, 0.0, 0.0, 0.0, 0.0],  # user 2 (no relevant item: skipped)
            [1.0, 5.0, 0.0, 4.0, 3.0],
        ]
    )  # user 3: item 1 excluded; 3, 4, 0, 2
    got = ranking_metrics(scores, np.array([0, 1, 2]), m)  # fmt: skip
    assert got["users"] == 2
    u1_ndcg = 1 / np.log2(3)  # one relevant item, hit at rank 2
    u3_ndcg = (1 / np.log2(4) + 1 / np.log2(5)) / (1 + 1 / np.log2(3))  # hits at 3 and 4
    assert got["precision@10"] == pytest.approx((1 / 10 + 2 / 10) / 2)
    assert got["recall@10"] == pytest.approx(1.0)
    assert got["recall@20"] == pytest.approx(1.0)  # hits / min(20, relevant)
    assert got["ndcg@10"] == pytest.approx((u1_ndcg + u3_ndcg) / 2)
    assert got["ndcg@100"] == pytest.approx(got["ndcg@10"])  # every list is shorter than 10
    lo, hi = got["ndcg@10_ci95"]
    assert min(u1_ndcg, u3_ndcg) - 1e-12 <= lo <= got["ndcg@10"] <= hi <= max(u1_ndcg, u3_ndcg)


def test_paired_difference_on_a_hand_example():
    # the hand example above, against scores that put every relevant item first
    train = _frame([(1, 0, 4.0, 0), (2, 1, 3.0, 0), (2, 2, 3.0, 0), (2, 3, 3.0, 0),
                    (2, 4, 3.0, 0), (3, 1, 3.0, 0)])  # fmt: skip
    val = _frame([(1, 3, 5.0, 1), (1, 4, 2.0, 1), (3, 0, 4.0, 1), (3, 2, 4.5, 1)])
    m = RatingMatrix.from_split(train, val, "user")
    users = np.array([0, 1, 2])
    scores = np.array([[9.0, 1.0, 2.0, 3.0, 8.0], [0.0] * 5, [1.0, 5.0, 0.0, 4.0, 3.0]])
    ideal = np.array([[0.0, 0.0, 0.0, 9.0, 0.0], [0.0] * 5, [9.0, 0.0, 8.0, 0.0, 0.0]])
    u1 = 1 / np.log2(3) - 1.0
    u3 = (1 / np.log2(4) + 1 / np.log2(5)) / (1 + 1 / np.log2(3)) - 1.0
    diff, (lo, hi) = paired_difference(scores, ideal, users, m)
    assert diff == pytest.approx((u1 + u3) / 2)
    assert min(u1, u3) - 1e-12 <= lo <= diff <= hi <= max(u1, u3) + 1e-12
    same, (lo, hi) = paired_difference(scores, scores, users, m)
    assert same == lo == hi == 0.0  # the same users resampled together: no spread at all
    a, b = ranking_metrics(scores, users, m), ranking_metrics(ideal, users, m)
    assert diff == pytest.approx(a["ndcg@10"] - b["ndcg@10"])


def test_coverage_and_popularity_rank_on_a_hand_example():
    # 12 items; user 2 rated all of them, user 1 only item 0, so item 0 is the most rated
    # (popularity rank 1) and items 1..11 follow in index order (ranks 2..12).
    train = _frame([(1, 0, 4.0, 0), *((2, i, 3.0, 0) for i in range(12))])
    m = RatingMatrix.from_split(train, _frame([(1, 5, 5.0, 1)]), "user")
    scores = np.arange(12.0)[::-1][None, :]  # item 0 best (excluded), then 1, 2, ...
    got = ranking_metrics(scores, np.array([0]), m)
    assert got["coverage@10"] == pytest.approx(10 / 12)  # items 1..10 shown
    assert got["popularity_rank@10"] == pytest.approx(np.mean(np.arange(2, 12)))
    assert got["ndcg@10"] == pytest.approx(1 / np.log2(6))  # item 5 at rank 5
    assert got["precision@10"] == pytest.approx(0.1) and got["recall@20"] == 1.0


def test_bootstrap_interval_contains_the_estimate_and_shrinks_with_more_data():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=4000)
    pred = truth + rng.normal(scale=0.9, size=4000)
    rmse = float(np.sqrt(np.mean((pred - truth) ** 2)))
    lo, hi = bootstrap_rmse(pred, truth)
    lo_s, hi_s = bootstrap_rmse(pred[:200], truth[:200])
    assert lo < rmse < hi and (hi - lo) < (hi_s - lo_s)


def test_residual_and_input_dropout_runs_end_to_end(tmp_path, capsys):
    data = write_movielens_csv(tmp_path / "toy")
    out = tmp_path / "run"
    args = [
        "--data",
        str(data),
        "--out",
        str(out),
        "--hidden",
        "8",
        "--batch-size",
        "8",
        "--quiet",
        "--split",
        "user-time",
        "--epochs",
        "2",
        "--residual",
        "--input-dropout",
        "0.2",
        "--fused",
    ]
    assert train_main(args) == 0
    capsys.readouterr()
    assert evaluate_main(["--checkpoint", str(out)]) == 0
    text = capsys.readouterr().out
    assert "popularity" in text and "95% interval" in text
    assert recommend_main(["--checkpoint", str(out), "--ratings", "3=5,4=1", "-k", "3"]) == 0
    assert "Top 3" in capsys.readouterr().out


def test_best_preset_exists_and_loads():
    from deeprec.config import load_preset

    best = load_preset("best")
    assert best.residual is True and best.by in ("user", "item")


def test_cosine_schedule_and_set_lr_reach_every_parameter_group():
    from deeprec.training import TrainingPlan, epoch_lr, set_lr
    from deeprec.training.optim import build

    config = Config(lr=0.01, epochs=5, lr_schedule="cosine")
    lrs = [epoch_lr(config, e) for e in range(1, 6)]
    assert lrs[0] == pytest.approx(0.01) and all(a > b for a, b in pairwise(lrs))
    assert epoch_lr(config.replace(lr_schedule="constant"), 4) == 0.01
    model = AutoEncoder(20, (4,))
    for sparse_path in (False, True):
        opt = build(config, model, TrainingPlan("sparse", sparse_grad=sparse_path))
        set_lr(opt, 0.123)
        assert all(g["lr"] == 0.123 for g in opt.param_groups)


def test_refeed_step_fits_the_models_own_output():
    from deeprec.training import refeed_step

    m = toy_matrix("user")
    torch.manual_seed(0)
    model = AutoEncoder(m.n_cols, (6,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = m.batch(np.arange(m.n_rows))

    def refeed_loss():
        with torch.no_grad():
            y = model(batch.dense())
            return torch.nn.functional.mse_loss(model(y), y).item()

    before = refeed_loss()
    for _ in range(20):
        refeed_step(model, opt, batch)
    assert refeed_loss() < before


def test_interrupted_schedule_and_refeed_run_resumes_exactly(tmp_path, monkeypatch):
    import json

    from deeprec.training import loop as train_mod

    data = write_movielens_csv(tmp_path / "toy")
    common = [
        "--data",
        str(data),
        "--hidden",
        "8",
        "--batch-size",
        "8",
        "--quiet",
        "--split",
        "user-time",
        "--fused",
        "--lr-schedule",
        "cosine",
        "--refeed",
        "--residual",
        "--epochs",
        "4",
    ]
    assert train_main([*common, "--out", str(tmp_path / "a")]) == 0
    real, calls = train_mod.run_epoch, {"n": 0}

    def stop_in_epoch_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "run_epoch", stop_in_epoch_3)
    assert train_main([*common, "--out", str(tmp_path / "b")]) == 130
    monkeypatch.setattr(train_mod, "run_epoch", real)
    assert train_main(["--resume", str(tmp_path / "b"), "--quiet"]) == 0
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())["epochs"]
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())["epochs"]
    assert len(a) == len(b) == 4
    for x, y in zip(a, b, strict=True):
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=1e-6)
        assert x["val_rmse"] == pytest.approx(y["val_rmse"], abs=1e-6)


def test_ease_equals_its_definition_solved_column_by_column():
    """EASE's closed form against the problem it solves: for each item j, the ridge
    regression of column j of X on the other columns (the zero-diagonal constraint)."""
    import scipy.sparse as sp

    from deeprec.scoring import ease

    rng = np.random.default_rng(0)
    X = (rng.random((30, 8)) < 0.35).astype(float)
    lam = 2.5
    got = ease.fit(sp.csr_matrix(X * rng.uniform(1, 5, X.shape)), lam)  # values are ignored
    for j in range(X.shape[1]):
        others = [i for i in range(X.shape[1]) if i != j]
        A = X[:, others]
        b = np.linalg.solve(A.T @ A + lam * np.eye(len(others)), A.T @ X[:, j])
        np.testing.assert_allclose(got.weights[others, j], b, rtol=1e-4, atol=1e-6)
        assert got.weights[j, j] == 0.0
    np.testing.assert_allclose(got.scores(sp.csr_matrix(X)), X @ got.weights, rtol=1e-5)
    # a user's scores read who rated what, whatever the rating values
    valued = sp.csr_matrix(X * rng.uniform(0.5, 5, X.shape))
    np.testing.assert_allclose(got.scores(valued), X @ got.weights, rtol=1e-5)
    with pytest.raises(ValueError, match="lam > 0"):
        ease.fit(sp.csr_matrix(X), 0.0)


def test_ease_on_liked_items_is_ease_on_the_ratings_at_or_above_the_threshold():
    import scipy.sparse as sp

    from deeprec.scoring import ease

    rng = np.random.default_rng(1)
    R = (rng.random((40, 9)) < 0.4) * rng.choice([1.0, 2.5, 3.5, 4.0, 5.0], (40, 9))
    liked = (R >= 4.0).astype(float)
    got = ease.fit(sp.csr_matrix(R), 3.0, liked_at=4.0)
    want = ease.fit(sp.csr_matrix(liked), 3.0)
    np.testing.assert_allclose(got.weights, want.weights, rtol=1e-6, atol=1e-7)
    # scoring reads only the liked items too: a disliked rating changes nothing
    np.testing.assert_allclose(got.scores(sp.csr_matrix(R)), liked @ got.weights, rtol=1e-5)
    assert not np.allclose(got.weights, ease.fit(sp.csr_matrix(R), 3.0).weights)


def test_evaluate_writes_every_metric_as_json(tmp_path, capsys):
    data = write_movielens_csv(tmp_path / "toy")
    out = tmp_path / "run"
    assert train_main(["--data", str(data), "--out", str(out), "--hidden", "8", "--epochs", "2",
                       "--split", "user-time", "--quiet"]) == 0  # fmt: skip
    report = tmp_path / "metrics" / "eval.json"
    assert evaluate_main(["--checkpoint", str(out), "--out", str(report)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(report.read_text())
    assert set(doc["models"]) == {"deeprec", "global mean", "user+item bias", "popularity", "EASE"}
    for name in ("deeprec", "popularity", "EASE"):
        row = doc["models"][name]
        for key in ("precision@10", "recall@10", "ndcg@10", "recall@20", "ndcg@100",
                    "coverage@10", "popularity_rank@10"):  # fmt: skip
            assert np.isfinite(row[key]), (name, key)
        lo, hi = row["ndcg@10_ci95"]
        assert lo <= row["ndcg@10"] <= hi
        assert f"{row['ndcg@10']:.4f}" in printed
    assert evaluate_main(["--checkpoint", str(out), "--out", str(tmp_path / "e.txt")]) == 2
    assert evaluate_main(["--checkpoint", str(out), "--ease-lambda", "-1"]) == 2
