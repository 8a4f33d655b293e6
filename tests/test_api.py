"""The Python API (deeprec.Recommender): the same model, RMSE and lists as the commands for
the same config and seed; run folders move both ways; ratings in memory round-trip through
the folder exactly; every entry refuses bad input in one line of the package's error type."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deeprec
from deeprec.evaluate import cli_main as evaluate_main
from deeprec.recommend import cli_main as recommend_main
from deeprec.train import cli_main as train_main

# a small rating recipe: a few seconds per fit on ml-latest-small
RECIPE = {"epochs": 2, "hidden": [16], "batch_size": 64, "split": "user-time"}
FLAGS = ["--epochs", "2", "--hidden", "16", "--batch-size", "64", "--split", "user-time"]


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def real():
    """ml-latest-small as a user reads it: pandas on its own files."""
    ratings, titles = deeprec.load_ratings("ml-latest-small")
    return ratings, titles


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert train_main([*FLAGS, "--fused", "--quiet", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def api_fit(real):
    ratings, titles = real
    rec = deeprec.Recommender(fused=True, progress=False, **RECIPE)
    return rec.fit(ratings, titles=titles)


def cli_list(capsys, folder, user: int, k: int = 10) -> list[int]:
    capsys.readouterr()
    assert recommend_main(["--checkpoint", str(folder), "--user", str(user), "-k", str(k)]) == 0
    out = capsys.readouterr().out.splitlines()[1:]
    return [int(line.rsplit("[", 1)[1].rstrip("]")) for line in out]


# ----------------------------------------------------------- the same as the commands
def test_the_api_on_a_dataframe_trains_the_cli_model_bit_for_bit(cli_run, api_fit):
    loaded = deeprec.Recommender.load(cli_run, device="cpu")
    assert weights_equal(loaded.model, api_fit.model)
    assert loaded.history["train_loss"].tolist() == api_fit.history["train_loss"].tolist()


def test_the_api_by_name_trains_the_cli_model_too(cli_run):
    rec = deeprec.Recommender(fused=True, progress=False, **RECIPE).fit("ml-latest-small")
    assert weights_equal(deeprec.Recommender.load(cli_run).model, rec.model)


def test_the_api_gives_the_cli_rmse_and_lists(cli_run, api_fit, capsys):
    api_table = api_fit.evaluate(ranking=False)
    out = cli_run.parent / "eval.json"
    assert evaluate_main(["--checkpoint", str(cli_run), "--no-ranking", "--out", str(out)]) == 0
    import json

    cli_table = json.loads(out.read_text())["models"]
    for model in ("deeprec", "user+item bias"):
        assert api_table.loc[model, "rmse"] == cli_table[model]["rmse"]
        assert api_table.loc[model, "mae"] == cli_table[model]["mae"]
    for user in (1, 414):
        api_items = api_fit.recommend(user, k=10)["item"].tolist()
        assert api_items == cli_list(capsys, cli_run, user)


def test_a_model_saved_from_python_is_read_by_the_commands_from_anywhere(api_fit, tmp_path,
                                                                          capsys):  # fmt: skip
    folder = api_fit.save(tmp_path / "saved")
    assert (folder / "data" / "ratings.csv").exists() and (folder / "data" / "movies.csv").exists()
    moved = folder.rename(tmp_path / "moved")  # the folder carries its data along
    want = api_fit.recommend(1, k=10)["item"].tolist()
    assert cli_list(capsys, moved, 1) == want
    assert evaluate_main(["--checkpoint", str(moved), "--no-ranking"]) == 0
    assert "0.0" not in capsys.readouterr().err
    again = deeprec.Recommender.load(moved)
    assert weights_equal(again.model, api_fit.model)
    assert (
        again.recommend(1, k=10)["title"].tolist() == api_fit.recommend(1, k=10)["title"].tolist()
    )
    from deeprec.export import cli_main as export_main

    assert export_main(["--checkpoint", str(moved)]) == 0 and (moved / "model.onnx").exists()
    assert train_main(["--resume", str(moved), "--epochs", "3", "--quiet"]) == 0  # resumable


def test_resume_and_fit_into_a_folder_match_one_uninterrupted_fit(real, tmp_path):
    ratings, _ = real
    whole = deeprec.Recommender(progress=False, **{**RECIPE, "epochs": 3}).fit(ratings)
    first = deeprec.Recommender(progress=False, **RECIPE)
    first.fit(ratings, out=tmp_path / "run")  # a run folder written as it trains
    assert first.folder == tmp_path / "run" and (tmp_path / "run" / "data").is_dir()
    more = deeprec.Recommender.resume(tmp_path / "run", epochs=3, progress=False)
    assert weights_equal(more.model, whole.model)


def test_validation_given_is_the_split(real, tmp_path):
    ratings, _ = real
    held = ratings.groupby("user").tail(3)
    train = ratings.drop(held.index)
    rec = deeprec.Recommender(progress=False, **RECIPE).fit(train, validation=held)
    assert rec.config.split == "given"
    known = held[held.user.isin(train.user) & held.item.isin(train.item)]
    assert rec.validation_size == len(known)
    rmse = rec.evaluate(ranking=False).loc["deeprec", "rmse"]
    pred = rec.predict(known.user, known.item)
    assert math.isclose(rmse, float(np.sqrt(np.mean((pred - known.rating) ** 2))), rel_tol=1e-9)
    loaded = deeprec.Recommender.load(rec.save(tmp_path / "given"))
    assert loaded.evaluate(ranking=False).loc["deeprec", "rmse"] == rmse


def test_a_sparse_matrix_is_users_by_items(real):
    ratings, _ = real
    users = ratings.user.astype("category").cat.codes.to_numpy()
    items = ratings.item.astype("category").cat.codes.to_numpy()
    matrix = sp.csr_matrix((ratings.rating.to_numpy(), (users, items)))
    rec = deeprec.Recommender(progress=False, **{**RECIPE, "split": "random"}).fit(matrix)
    assert set(rec.items) <= set(range(matrix.shape[1]))
    assert len(rec.users) == len(np.unique(users))


def test_settings_are_the_configs_fields():
    rec = deeprec.Recommender("topk", epochs=3, device="cpu", progress=False)
    params = rec.get_params()
    assert params["epochs"] == 3 and params["objective"] == "multinomial"
    assert params["device"] == "cpu" and params["progress"] is False
    assert rec.set_params(epochs=5).config.epochs == 5
    assert deeprec.Recommender(config=rec.config).config == rec.config


def test_a_ranking_model_recommends_and_folds_in_log_probabilities(real):
    ratings, titles = real
    rec = deeprec.Recommender("topk", epochs=1, progress=False).fit(ratings, titles=titles)
    top = rec.recommend([1, 2], k=5)
    assert top.groupby("user")["score"].apply(lambda s: s.is_monotonic_decreasing).all()
    assert (top.score < 0).all() and top.title.str.len().gt(0).all()
    new = rec.recommend_new({296: 5, 318: 4.5}, k=5)
    assert (new.score < 0).all() and not new.item.isin([296, 318]).any()
    probs = np.exp(rec.recommend_new({296: 5}, k=len(rec.items) - 1).score)
    assert probs.sum() <= 1.0 + 1e-9
    with pytest.raises(deeprec.ConfigError, match="ranking model"):
        rec.predict([1], [1])


def test_exclude_seen_leaves_out_the_training_items(api_fit):
    seen = api_fit.recommend(1, k=len(api_fit.items), exclude_seen=True)
    every = api_fit.recommend(1, k=len(api_fit.items), exclude_seen=False)
    assert len(every) == len(api_fit.items) and len(seen) < len(every)
    assert set(every.item) - set(seen.item)  # the user's training items, now left out


# ----------------------------------------------------------- ratings in memory, exactly
@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**31 - 1), lo=st.sampled_from([0.0, 1.0, -2.5]),
       span=st.floats(0.5, 100.0, allow_nan=False))  # fmt: skip
def test_ratings_in_memory_round_trip_through_the_run_folder(tmp_path_factory, seed, lo, span):
    rng = np.random.default_rng(seed)
    n = 400
    frame = pd.DataFrame({"user": rng.integers(0, 30, n),
                          "item": rng.integers(10**6, 10**6 + 60, n),
                          "rating": lo + span * rng.random(n),
                          "timestamp": rng.integers(0, 10**9, n)})  # fmt: skip
    frame = frame.drop_duplicates(["user", "item"])
    rec = deeprec.Recommender(progress=False, epochs=1, hidden=[4], split="random",
                              scale=[lo, lo + span])  # fmt: skip
    rec.fit(frame)
    folder = rec.save(tmp_path_factory.mktemp("rt") / "run")
    back = deeprec.Recommender.load(folder)  # the fingerprint check passed: the same matrix
    assert weights_equal(back.model, rec.model)
    assert back.recommend(None, k=3).equals(rec.recommend(None, k=3))


# ----------------------------------------------------------- bad input, one line each
def one_line(exc: pytest.ExceptionInfo, *words: str) -> None:
    assert isinstance(exc.value, deeprec.DeeprecError), type(exc.value)
    text = str(exc.value)
    assert "\n" not in text, text
    for word in words:
        assert word in text, text


GOOD = pd.DataFrame({"user": [1, 1, 2, 2, 3], "item": [10, 11, 10, 12, 11],
                     "rating": [4.0, 3.0, 5.0, 2.0, 1.0]})  # fmt: skip

BAD_FRAMES = [
    (GOOD.drop(columns="rating"), ["no rating column", "ratings"]),
    (GOOD.rename(columns={"user": "who"}), ["no user column"]),
    (GOOD.assign(rating=["4", "x", "5", "2", "1"]), ["ratings row 1", "'x' is not a number"]),
    (GOOD.assign(user=[1.0, np.nan, 2.0, 2.0, 3.0]), ["ratings row 1", "user"]),
    (GOOD.assign(item=[10, 11, None, 12, 11]), ["ratings row 2", "item"]),
    (GOOD.assign(rating=[4.0, np.nan, 5.0, 2.0, 1.0]), ["ratings row 1", "rating"]),
    (GOOD.assign(rating=[4.0, np.inf, 5.0, 2.0, 1.0]), ["ratings row 1", "not finite"]),
    (GOOD.assign(user=[1, -1, 2, 2, 3]), ["ratings row 1", "negative"]),
    (GOOD.assign(user=[1.5, 1, 2, 2, 3]), ["ratings row 0", "not an integer"]),
    (pd.concat([GOOD, GOOD.iloc[:1]], ignore_index=True), ["ratings row 5", "duplicate"]),
    (GOOD.iloc[:0], ["empty"]),
    ("not-a-dataset", ["not-a-dataset"]),
    (42, ["ratings", "int"]),
    ([1, 2, 3], ["ratings", "list"]),
]


@pytest.mark.parametrize("ratings, words", BAD_FRAMES)
def test_fit_refuses_bad_ratings_in_one_line(ratings, words):
    rec = deeprec.Recommender(progress=False, epochs=1, hidden=[4], split="random")
    with pytest.raises(deeprec.DeeprecError) as exc:
        rec.fit(ratings)
    one_line(exc, *words)


def test_fit_refuses_a_bad_validation_and_titles():
    rec = deeprec.Recommender(progress=False, epochs=1, hidden=[4])
    with pytest.raises(deeprec.DeeprecError) as exc:
        rec.fit(GOOD, validation=GOOD.drop(columns="item"))
    one_line(exc, "validation", "item column")
    with pytest.raises(deeprec.DeeprecError) as exc:
        rec.fit(GOOD, titles=pd.DataFrame({"name": ["x"]}))
    one_line(exc, "titles")
    with pytest.raises(deeprec.DeeprecError) as exc:
        rec.fit("ml-latest-small", titles={1: "x"})
    one_line(exc, "in memory")


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: deeprec.Recommender(epochz=3), ["epochz", "'epochs'"]),
        (lambda: deeprec.Recommender("nope"), ["nope", "seed"]),
        (lambda: deeprec.Recommender(3), ["preset"]),
        (lambda: deeprec.Recommender(config="seed"), ["config", "str"]),
        (lambda: deeprec.Recommender(epochs=0), ["--epochs"]),
        (lambda: deeprec.Recommender(device="gpu7"), ["gpu7"]),
        (lambda: deeprec.Recommender(device=None), ["device"]),
        (lambda: deeprec.Recommender(lr=None), ["lr"]),
    ],
)
def test_bad_settings_are_refused_in_one_line(make, words):
    with pytest.raises(deeprec.DeeprecError) as exc:
        make()
    one_line(exc, *words)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda r: r.predict([1, 999_999], [1, 1]), ["users", "999999", "not in the training"]),
        (lambda r: r.predict([1], [123_456_789]), ["items", "123456789"]),
        (lambda r: r.predict([1, 2], [1]), ["2 users but 1 items"]),
        (lambda r: r.predict(None, [1]), ["users", "None"]),
        (lambda r: r.predict(["a"], [1]), ["users", "integer"]),
        (lambda r: r.predict([np.nan], [1]), ["users", "NaN"]),
        (lambda r: r.predict([1.5], [1]), ["users", "1.5"]),
        (lambda r: r.recommend([999_999]), ["users", "999999"]),
        (lambda r: r.recommend("1"), ["users", "string"]),
        (lambda r: r.recommend(1, k=0), ["k", ">= 1"]),
        (lambda r: r.recommend(1, k=-3), ["k"]),
        (lambda r: r.recommend(1, k=2.5), ["k", "positive integer"]),
        (lambda r: r.recommend(1, k=None), ["k"]),
        (lambda r: r.recommend(1, batch_size=0), ["batch_size"]),
        (lambda r: r.recommend_new({123_456_789: 5}), ["123456789"]),
        (lambda r: r.recommend_new({1: 9.0}), ["rating", "not in [0.5, 5]"]),
        (lambda r: r.recommend_new({1: "good"}), ["not a number"]),
        (lambda r: r.recommend_new({}), ["empty"]),
        (lambda r: r.recommend_new(None), ["ratings", "NoneType"]),
        (lambda r: r.recommend_new({1: 4}, k=0), ["k"]),
        (lambda r: r.evaluate(ease_lambda=-1), ["ease_lambda"]),
        (lambda r: r.export("model.txt"), ["onnx"]),
        (lambda r: r.save(None), ["path"]),
        (lambda r: r.save("x", overwrite="yes"), ["overwrite", "True or False"]),
        (lambda r: r.recommend(1, exclude_seen=None), ["exclude_seen"]),
        (lambda r: r.evaluate(ranking="no"), ["ranking"]),
        (lambda r: r.evaluate(ease_lambda="big"), ["ease_lambda", "number"]),
        (lambda r: r.fit(GOOD, save_every=0), ["save_every"]),
        (lambda r: r.fit(GOOD, out=3), ["out", "path"]),
        (lambda r: r.fit(GOOD, titles=5), ["titles", "int"]),
        (lambda r: r.fit(GOOD, data_dir=1.5), ["data_dir"]),
        (lambda r: deeprec.Recommender.resume(r.folder or "nowhere", epochs=0), ["epochs"]),
        (lambda r: r.set_params(progress=1), ["progress"]),
    ],
)
def test_each_entry_refuses_bad_input_in_one_line(api_fit, call, words):
    with pytest.raises(deeprec.DeeprecError) as exc:
        call(api_fit)
    one_line(exc, *words)


def test_an_item_based_model_has_no_fold_in(real):
    ratings, _ = real
    rec = deeprec.Recommender(progress=False, epochs=1, hidden=[4], by="item").fit(ratings)
    with pytest.raises(deeprec.DeeprecError) as exc:
        rec.recommend_new({1: 5})
    one_line(exc, "user-based")


def test_load_refuses_what_is_not_a_run_folder(tmp_path, api_fit):
    for bad, words in [(tmp_path / "missing", ["no such run folder"]),
                       (tmp_path, ["not a run folder", "model.pt"])]:  # fmt: skip
        with pytest.raises(deeprec.DeeprecError) as exc:
            deeprec.Recommender.load(bad)
        one_line(exc, *words)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(deeprec.DeeprecError) as exc:
        deeprec.Recommender.load(broken)
    one_line(exc, "model.pt")
    with pytest.raises(deeprec.DeeprecError) as exc:
        deeprec.Recommender.load(42)
    one_line(exc, "path")


def test_an_unfitted_recommender_says_so():
    rec = deeprec.Recommender(progress=False)
    for call in (lambda: rec.recommend(1), lambda: rec.history, lambda: rec.save("x")):
        with pytest.raises(deeprec.DeeprecError) as exc:
            call()
        one_line(exc, "not fitted")


def test_save_refuses_a_folder_holding_a_run(api_fit, cli_run):
    with pytest.raises(deeprec.DeeprecError) as exc:
        api_fit.save(cli_run)
    one_line(exc, "already holds a run")


def test_ctrl_c_in_a_notebook_fit_keeps_the_finished_epochs(real):
    ratings, _ = real
    rec = deeprec.Recommender(**{**RECIPE, "epochs": 4})

    def stop_after_two(line: str) -> None:
        if line.startswith("epoch   2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt, match="after epoch 2"):
        rec.fit(ratings, report=stop_after_two)
    assert rec.epochs_trained == 2 and not rec.model.training
    assert len(rec.recommend(1, k=5)) == 5  # usable as it stands


def test_a_saved_run_records_the_metrics_train_records(api_fit, cli_run, tmp_path):
    """metrics.json's final validation metrics: the same keys and values as train's."""
    import json

    folder = api_fit.save(tmp_path / "m")
    mine = json.loads((folder / "metrics.json").read_text())["final"]
    theirs = json.loads((cli_run / "metrics.json").read_text())["final"]
    assert mine == theirs and "val_mae" in mine
