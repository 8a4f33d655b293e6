"""The blend of I-AutoRec, U-AutoRec and the bias baseline (python -m deeprec.blend)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from datasets import write_movielens_csv

from deeprec.blend import cli_main as blend_main
from deeprec.config import Config
from deeprec.data import RatingMatrix, split
from deeprec.quality import blending
from deeprec.quality.evaluation import bootstrap_rmse
from deeprec.scoring import baseline

RECIPE = dict(hidden=[16], activation="sigmoid", residual=True, epochs=3, batch_size=16,
              split="user-time", fused=True)  # fmt: skip


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_movielens_csv(tmp_path_factory.mktemp("blend") / "toy")


def test_the_blend_scores_every_model_and_itself(toy):
    result = blending.blend(Config(data=str(toy), **RECIPE))
    assert len(result.weights) == blending.n_weights(len(blending.MODELS)) and all(
        np.isfinite(result.weights)
    )
    assert set(result.rmse) == {*blending.MODELS, "blend"}
    for rmse, lo, hi in result.rmse.values():
        assert lo < rmse < hi
    assert result.n_val > 0 and result.n_inner_val > 0
    # The bias member's score, recomputed from its definition on the same split: the
    # clipped regularized user+item biases fit on the outer training ratings.
    frame = pd.read_csv(toy / "ratings.csv").rename(columns={"userId": "user", "movieId": "item"})
    train, val = split(frame, "user-time")
    m = RatingMatrix.from_split(train, val, "user", (0.5, 5.0))
    pred = np.clip(baseline.fit(m.train, "user").at(m.val_rows, m.val_cols), 0.5, 5.0)
    truth = m.val_ratings.astype(np.float64)
    assert len(truth) == result.n_val
    want = float(np.sqrt(np.mean((pred - truth) ** 2)))
    got = result.rmse["bias baseline"]
    assert got[0] == pytest.approx(want, rel=1e-9)
    assert got[1:] == pytest.approx(bootstrap_rmse(pred, truth), rel=1e-9)


def test_the_blend_never_reads_the_reported_validation_ratings(toy, tmp_path):
    """Change every outer-validation rating (the split never looks at rating values): the
    weights, fit on the nested split, come out bit for bit the same."""
    ratings = pd.read_csv(toy / "ratings.csv")
    frame = ratings.rename(columns={"userId": "user", "movieId": "item"})
    _, val = split(frame, "user-time")
    hit = ratings.set_index(["userId", "movieId"]).index.isin(
        list(zip(val["user"], val["item"], strict=True))
    )
    assert hit.sum() == len(val) > 0
    ratings.loc[hit, "rating"] = 5.5 - ratings.loc[hit, "rating"]
    poisoned = tmp_path / "poisoned"
    poisoned.mkdir()
    ratings.to_csv(poisoned / "ratings.csv", index=False)
    (poisoned / "movies.csv").write_bytes((toy / "movies.csv").read_bytes())
    a = blending.blend(Config(data=str(toy), **RECIPE))
    b = blending.blend(Config(data=str(poisoned), **RECIPE))
    assert a.weights == b.weights
    assert a.rmse["blend"][0] != b.rmse["blend"][0]  # the scores did read them, once


def test_blend_command_prints_and_writes(toy, tmp_path, capsys):
    out = tmp_path / "blend.json"
    args = ["--data", str(toy), "--hidden", "16", "--epochs", "2", "--split", "user-time",
            "--fused", "--out", str(out)]  # fmt: skip
    assert blend_main(args) == 0
    printed = capsys.readouterr().out
    assert "blend" in printed and "weight" in printed
    doc = json.loads(out.read_text())
    assert len(doc["weights"]) == blending.n_weights(len(blending.MODELS)) and doc["config"][
        "hidden"
    ] == [16]
    assert blend_main(["--data", str(toy), "--preset", "nope"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_saved_blend_recommends_and_scores_as_it_was_measured(toy, tmp_path, capsys):
    from deeprec.data import load
    from deeprec.data.splits import known_users_items
    from deeprec.quality.blending import BlendScorer
    from deeprec.recommend import cli_main as recommend_main
    from deeprec.training.lifecycle import resolve_device

    config = Config(data=str(toy), **RECIPE)
    result = blending.blend(config)
    blending.save(config, result, tmp_path / "b", None)
    scorer = BlendScorer(tmp_path / "b", None, resolve_device("cpu"))
    # the saved models, blended, give the validation RMSE the blend reported
    ds = load(str(toy))
    train, val = split(ds.ratings, "user-time")
    val = known_users_items(val, train)
    u = np.searchsorted(scorer.user_ids, val["user"].to_numpy())
    i = np.searchsorted(scorer.item_ids, val["item"].to_numpy())
    pred = np.clip(scorer.score_users(np.arange(len(scorer.user_ids)))[u, i], *scorer.scale)
    rmse = float(np.sqrt(np.mean((pred - val["rating"].to_numpy()) ** 2)))
    assert rmse == pytest.approx(result.rmse["blend"][0], rel=1e-5)
    capsys.readouterr()
    assert recommend_main(["--blend", str(tmp_path / "b"), "--user", "3", "-k", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and lines[0].startswith("Top 4 for user 3")
    rated = set(scorer.item_ids[scorer.rated(int(np.searchsorted(scorer.user_ids, 3)))])
    assert not rated & {int(x.rsplit("[", 1)[1].rstrip("]")) for x in lines[1:]}
    assert recommend_main(["--blend", str(tmp_path / "nope"), "--user", "3"]) == 2
    assert "not a saved blend" in capsys.readouterr().err
    # a blend saved with other members (an older deeprec) is refused in one line
    doc = json.loads((tmp_path / "b" / "blend.json").read_text())
    doc["models"], doc["weights"] = doc["models"][:3], doc["weights"][:4]
    (tmp_path / "b" / "blend.json").write_text(json.dumps(doc))
    assert recommend_main(["--blend", str(tmp_path / "b"), "--user", "3"]) == 2
    err = capsys.readouterr().err
    assert "save the blend again" in err and len(err.strip().splitlines()) == 1


def test_support_weighted_stacking_recovers_known_weights_and_broadcasts():
    rng = np.random.default_rng(0)
    parts = [rng.normal(3, 1, 500) for _ in range(3)]
    supports = rng.uniform(0, 5, 500), rng.uniform(0, 5, 500)
    true = rng.normal(0, 0.3, blending.n_weights(3))
    truth = blending.combine(parts, supports, true)
    np.testing.assert_allclose(blending.fit_weights(parts, supports, truth), true, atol=1e-9)
    # (users, 1) and (1, items) supports with (users, items) predictions: the same numbers
    grid = [p[:20].reshape(4, 5) for p in parts]
    su, si = rng.uniform(0, 5, (4, 1)), rng.uniform(0, 5, (1, 5))
    flat = blending.combine(
        [g.ravel() for g in grid], (np.repeat(su, 5, 1).ravel(), np.repeat(si, 4, 0).ravel()), true
    )
    np.testing.assert_allclose(blending.combine(grid, (su, si), true).ravel(), flat)
    with pytest.raises(ValueError, match="blend weights for"):
        blending.combine(parts, supports, true[:-1])
