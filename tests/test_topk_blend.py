"""The top-k blend: EASE + the rating recipe + Mult-DAE, saved, scored and recommended from."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import write_movielens_csv

from deeprec.blend import cli_main as blend_main
from deeprec.data import DataError
from deeprec.quality import topk_blend
from deeprec.recommend import cli_main as recommend_main
from deeprec.scoring import ease


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("topk")
    data = write_movielens_csv(root / "toy")
    folder = root / "blend"
    # small members: the presets' shapes are kept, their epochs cut by --epochs (both)
    code = blend_main(["--topk", "--data", str(data), "--split", "user-time", "--epochs", "2",
                       "--save", str(folder), "--quiet"])  # fmt: skip
    assert code == 0
    return data, folder


def edited(folder: Path, change: Callable[[dict], object], copy_to: Path | None = None) -> Path:
    """``folder`` (first copied to ``copy_to``, when given) with ``change`` applied to the
    document in its topk.json; returns the folder changed."""
    if copy_to is not None:
        shutil.copytree(folder, copy_to)
        folder = copy_to
    doc = json.loads((folder / "topk.json").read_text())
    change(doc)
    (folder / "topk.json").write_text(json.dumps(doc))
    return folder


def test_the_blend_is_its_recipe_applied_to_its_members(saved):
    _, folder = saved
    scorer = topk_blend.TopkScorer(folder, None, torch.device("cpu"))
    users = np.arange(len(scorer.user_ids))
    by_user = scorer.parts["ranking"].run.matrix.by_user()
    r = scorer.recipe  # chosen on the inner split, from the grid
    assert r.ease_lambda in topk_blend.GRID["ease_lambda"]
    assert r.ease_liked_at in topk_blend.GRID["ease_liked_at"]
    assert r.rating_weight in topk_blend.GRID["rating_weight"]
    assert r.ranking_weight in topk_blend.GRID["ranking_weight"]
    doc = json.loads((folder / "topk.json").read_text())
    assert 0.0 <= doc["inner_ndcg@10"] <= 1.0
    want = (
        topk_blend.standardised(ease.fit(by_user, r.ease_lambda, r.ease_liked_at).scores(by_user))
        + r.rating_weight * topk_blend.standardised(scorer.parts["rating"].score_users(users))
        + r.ranking_weight * topk_blend.standardised(scorer.parts["ranking"].score_users(users))
    )
    np.testing.assert_allclose(scorer.score_users(users), want, rtol=1e-6, atol=1e-6)
    z = topk_blend.standardised(np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
    np.testing.assert_allclose(z[0], [-1.224744871, 0.0, 1.224744871], rtol=1e-8)
    assert (z[1] == 0).all()  # a flat row stays 0


def test_the_saved_ranking_member_is_the_preset_the_recipe_chose(saved):
    from deeprec.config import load_preset
    from deeprec.inference.trained import load_trained

    _, folder = saved
    recipe = topk_blend.TopkScorer(folder, None, torch.device("cpu")).recipe
    assert recipe.ranking_preset in topk_blend.RANKING_PRESETS
    member = load_trained(folder / "ranking", None, torch.device("cpu")).config
    preset = load_preset(recipe.ranking_preset)
    for option in ("variational", "liked_at", "hidden", "objective", "input_dropout"):
        assert getattr(member, option) == getattr(preset, option), option


@pytest.mark.parametrize("better", ["topk", "topk-liked"])
def test_the_grid_chooses_the_ranking_member_that_ranks_better(better):
    """Two ranking candidates, one of them the validation answer itself and the other noise:
    the chosen recipe names the answer's preset, in either position, with a weight > 0."""
    import pandas as pd
    from datasets import synthetic_ratings

    from deeprec.data import RatingMatrix

    rows = synthetic_ratings(50, 40, 12, seed=4)
    frame = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    val = frame.groupby("user").tail(3)
    matrix = RatingMatrix.from_split(frame.drop(val.index), val, "user", (0.5, 5.0))
    vu, vi, vr = matrix.user_view()
    users = np.unique(vu)
    answer = np.zeros((len(users), matrix.n_items))
    answer[np.searchsorted(users, vu), vi] = vr >= 4  # the relevant validation items on top
    noise = np.random.default_rng(0).standard_normal(answer.shape)
    rankings = {p: answer if p == better else noise for p in topk_blend.RANKING_PRESETS}
    rankings = {p: topk_blend.standardised(v) for p, v in rankings.items()}
    rated = matrix.by_user()
    members = topk_blend.ease_members(topk_blend.ease_fits(rated), rated[users])
    rating = topk_blend.standardised(noise[:, ::-1].copy())
    scores = topk_blend.grid_choice(members, rating, rankings, users, matrix)
    best, _ = topk_blend.chosen(scores)
    assert best.ranking_preset == better and best.ranking_weight > 0, best
    # a weight of 0 is scored once: the lists do not depend on the preset then
    zero = [r for r in scores if r.ranking_weight == 0]
    assert {r.ranking_preset for r in zero} == {"topk"}


def test_a_blend_on_mult_vae_liked_never_lists_a_rated_item_liked_or_not(saved, tmp_path):
    """The liked-items member reads only ratings >= 4; the blend's lists still leave out
    every item a user rated, the low ratings too."""
    from deeprec.config import Config
    from deeprec.inference import ranking

    data, _ = saved
    folder = tmp_path / "liked"
    base = Config(data=str(data), split="user-time")
    recipe = topk_blend.Recipe(100.0, 0.25, 0.5, 4.0, "topk-liked")
    topk_blend.save(base, folder, None, recipe=recipe, overrides={"epochs": 1})
    scorer = topk_blend.TopkScorer(folder, None, torch.device("cpu"))
    assert scorer.recipe == recipe and scorer.parts["ranking"].run.config.liked_at == 4.0
    by_user = scorer.parts["ranking"].run.matrix.by_user()
    low = np.array([u for u in range(by_user.shape[0]) if (by_user[u].data < 4).any()])
    assert len(low), "the toy data should hold users with ratings below 4"
    lists = ranking.top_frame(scorer, low, k=10)
    for u in low:
        shown = lists[lists.user == scorer.user_ids[u]].item.to_numpy()
        assert len(shown) == 10 and not set(shown) & set(scorer.item_ids[by_user[u].indices])


def test_a_recipe_naming_another_ranking_model_than_the_saved_one_is_refused(saved, tmp_path):
    _, folder = saved

    def swap(doc):
        recipe = doc["recipe"]
        recipe["ranking_preset"] = next(
            p for p in topk_blend.RANKING_PRESETS if p != recipe["ranking_preset"]
        )

    copy = edited(folder, swap, tmp_path / "blend")
    with pytest.raises(DataError, match=r"/ranking: not the .* model topk.json names"):
        topk_blend.TopkScorer(copy, None, torch.device("cpu"))


@pytest.mark.parametrize(
    "overrides, message",
    [([1], "member_overrides is not a mapping"), ({"epochz": 2}, "member_overrides: unknown")],
)
def test_broken_member_overrides_are_refused_naming_the_file(saved, tmp_path, overrides, message):
    _, folder = saved
    copy = edited(folder, lambda doc: doc.update(member_overrides=overrides), tmp_path / "blend")
    with pytest.raises(DataError, match=f"topk.json: {message}"):
        topk_blend.TopkScorer(copy, None, torch.device("cpu"))


def test_a_blend_saved_without_a_ranking_preset_reads_as_mult_dae(saved, tmp_path):
    """A topk.json whose recipe names no ranking preset (the format without the field) has
    Mult-DAE as its member and loads as such."""
    from deeprec.config import Config

    data, _ = saved
    folder = tmp_path / "dae"
    recipe = topk_blend.Recipe(100.0, 0.25, 0.5, 4.0, "topk")
    topk_blend.save(Config(data=str(data), split="user-time"), folder, None, recipe=recipe,
                    overrides={"epochs": 1})  # fmt: skip
    edited(folder, lambda doc: doc["recipe"].pop("ranking_preset"))
    assert topk_blend.TopkScorer(folder, None, torch.device("cpu")).recipe == recipe


def test_recommend_from_the_blend_never_shows_a_training_item(saved, capsys):
    _, folder = saved
    scorer = topk_blend.TopkScorer(folder, None, torch.device("cpu"))
    user = int(scorer.user_ids[0])
    capsys.readouterr()
    assert recommend_main(["--blend", str(folder), "--user", str(user), "-k", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()[1:]
    shown = {int(line.rsplit("[", 1)[1].rstrip("]")) for line in lines}
    rated = set(scorer.item_ids[scorer.rated(0)].tolist())
    assert len(shown) == 5 and not shown & rated


def test_the_topk_blend_refuses_the_rating_blend_output_flag(saved, tmp_path, capsys):
    data, _ = saved
    code = blend_main(["--topk", "--data", str(data), "--split", "user-time", "--epochs", "1",
                       "--out", str(tmp_path / "w.json"), "--quiet"])  # fmt: skip
    assert code == 2 and "--out goes with the rating blend" in capsys.readouterr().err


def test_recipe_flags_given_with_topk_reach_both_members(saved):
    _, folder = saved
    from deeprec.inference.trained import load_trained

    for name in topk_blend.MEMBERS:  # the fixture passed --epochs 2
        trained = load_trained(folder / name, None, torch.device("cpu"))
        assert trained.config.epochs == 2 and trained.epoch == 2
    configs = topk_blend.member_configs(trained.config, {"hidden": [7]})
    assert configs["rating"].hidden == configs["ranking"].hidden == [7]
    assert configs["rating"].by == "item" and configs["ranking"].objective == "multinomial"


@pytest.mark.parametrize(
    "recipe, message",
    [
        ({"ease_lambda": 0.0}, "recipe ease_lambda = 0.0 is out of range"),
        ({"ease_lambda": "100"}, "recipe ease_lambda must be a number"),
        ({"rating_weight": float("nan")}, "recipe rating_weight = nan is out of range"),
        ({"ease_liked_at": True}, "recipe ease_liked_at must be a number"),
        ({"weights": [1, 2]}, "the recipe is not a mapping of ease_lambda"),
        ({"ranking_preset": "seed"}, "recipe ranking_preset must be one of topk, topk-liked"),
        ({"ranking_preset": None}, "recipe ranking_preset must be one of topk, topk-liked"),
    ],
)
def test_a_broken_saved_recipe_is_refused_in_one_line(saved, tmp_path, capsys, recipe, message):
    _, folder = saved
    copy = edited(folder, lambda doc: doc["recipe"].update(recipe), tmp_path / "blend")
    capsys.readouterr()
    assert recommend_main(["--blend", str(copy), "--user", "1", "-k", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_a_set_with_nothing_relevant_is_refused_in_one_line(tmp_path, capsys):
    from datasets import synthetic_ratings

    rows = [(u, i, 3.0, t) for u, i, _, t in synthetic_ratings(30, 40, 10, seed=3)]
    data = write_movielens_csv(tmp_path / "flat", rows)  # every rating 3: nothing relevant
    code = blend_main(["--topk", "--data", str(data), "--split", "user-time", "--epochs", "1",
                       "--quiet"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "has no validation rating >= 4" in err, err
    assert len(err.splitlines()) == 1
