"""One training assembly for every caller: train, a tuning trial and a blend member train
the same way, so every training option reaches all of them."""

from __future__ import annotations

import pytest
import torch
from datasets import write_movielens_csv

from deeprec.config import Config
from deeprec.data import RatingMatrix, load, split
from deeprec.quality import blending, tuning
from deeprec.training import Trainer, fit, loop, plan

RECIPE = dict(hidden=[8], epochs=2, batch_size=8, split="user-time")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_movielens_csv(tmp_path_factory.mktemp("trainer") / "toy")


@pytest.fixture
def counts(monkeypatch):
    """How often the loop ran a training step and a re-feeding step."""
    n = {"refeed": 0, "steps": 0}
    real_refeed, real_loss = loop.refeed_step, loop.batch_loss

    def refeed(*args, **kwargs):
        n["refeed"] += 1
        return real_refeed(*args, **kwargs)

    def loss(*args, **kwargs):
        n["steps"] += 1
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(loop, "refeed_step", refeed)
    monkeypatch.setattr(loop, "batch_loss", loss)
    return n


def _matrix(toy, by="user") -> RatingMatrix:
    ds = load(str(toy))
    train, val = split(ds.ratings, "user-time")
    return RatingMatrix.from_split(train, val, by, ds.scale)


@pytest.mark.parametrize("refeed", [False, True])
def test_refeed_and_max_batches_reach_a_tuning_trial(toy, counts, refeed):
    config = Config(data=str(toy), **RECIPE, refeed=refeed, max_batches=2)
    data = tuning.nested_data(config, None)
    curve = tuning.train_inner(config, data, epochs=2)
    assert len(curve) == 2
    assert counts["steps"] == 2 * 2  # max_batches held in both epochs
    assert counts["refeed"] == (counts["steps"] if refeed else 0)


@pytest.mark.parametrize("refeed", [False, True])
def test_refeed_and_max_batches_reach_a_blend_member(toy, counts, refeed):
    config = Config(data=str(toy), **RECIPE, refeed=refeed, max_batches=3)
    ds = load(str(toy))
    train, val = split(ds.ratings, "user-time")
    val = val[val["user"].isin(train["user"]) & val["item"].isin(train["item"])]
    pred = blending.predict_after_training(config, train, val, ds.scale)
    assert pred.shape == (len(val),)
    assert counts["steps"] == 2 * 3
    assert counts["refeed"] == (counts["steps"] if refeed else 0)


def test_a_blend_member_trains_exactly_as_the_trainer_does(toy):
    """predict_after_training is Trainer.assemble + fit: the same weights, bit for bit."""
    config = Config(data=str(toy), **RECIPE, residual=True)
    matrix = _matrix(toy, "item")
    t = Trainer.assemble(config.replace(by="item"), matrix, torch.device("cpu"))
    fit(t, quiet=True)
    from deeprec.scoring.predict import predict_entries

    rows, cols = matrix.val_rows, matrix.val_cols
    want = predict_entries(t.model, t.inputs, rows, cols, t.plan, offsets=t.offsets)
    ds = load(str(toy))
    train, val = split(ds.ratings, "user-time")
    val = val[val["user"].isin(train["user"]) & val["item"].isin(train["item"])]
    got = blending.predict_after_training(config.replace(by="item"), train, val, ds.scale)
    assert got.shape == want.shape
    assert (got == want.clip(*ds.scale)).all()


def test_the_trainer_follows_its_plan(toy):
    matrix = _matrix(toy)
    for fused in (False, True):
        config = Config(data=str(toy), **RECIPE, fused=fused, data_on_device="yes")
        t = Trainer.assemble(config, matrix, torch.device("cpu"))
        assert t.plan == plan(config, torch.device("cpu"))
        assert t.plan.resident and t.source is not t.inputs  # the data_on_device choice
        assert type(t.optimizer).__name__ == ("ItemAdam" if fused else "Adam")


def test_validation_of_a_reference_run_never_touches_the_kernels(toy, monkeypatch):
    """A run without --fused validates through the pure-PyTorch ops too."""
    from deeprec.ops import native

    def refuse(*args, **kwargs):
        raise AssertionError("a reference run launched a native kernel")

    monkeypatch.setattr(native.CpuKernels, "_run", refuse)  # every CPU launch goes through it
    t = Trainer.assemble(Config(data=str(toy), **RECIPE), _matrix(toy), torch.device("cpu"))
    metrics = fit(t, quiet=True)
    assert metrics["val_rmse"] > 0


# ---------------------------------------------------------------- progress and its order
@pytest.fixture
def bars(monkeypatch):
    """The disable flag of every progress bar the training loop opens (None: shown on a
    terminal, True: never)."""
    seen: list[object] = []
    real = loop.tqdm

    def recording(*args, **kwargs):
        seen.append(kwargs.get("disable"))
        return real(*args, **kwargs)

    recording.write = real.write
    monkeypatch.setattr(loop, "tqdm", recording)
    return seen


@pytest.mark.parametrize("quiet", [False, True])
def test_blend_and_blend_save_show_progress_unless_quiet(toy, tmp_path, bars, quiet):
    from deeprec.blend import cli_main as blend_main

    args = ["--data", str(toy), "--hidden", "8", "--epochs", "2", "--batch-size", "16",
            "--split", "user-time", "--save", str(tmp_path / "saved")]  # fmt: skip
    assert blend_main([*args, *(["--quiet"] if quiet else [])]) == 0
    # 4 models for the weights and the score, 2 saved, 2 epochs each: 12 bars
    assert len(bars) == 12
    assert set(bars) == ({True} if quiet else {None})


@pytest.mark.parametrize("quiet", [False, True])
def test_tune_shows_progress_per_trial_unless_quiet(toy, tmp_path, bars, quiet):
    pytest.importorskip("optuna")
    from deeprec.tune import cli_main as tune_main

    args = ["--data", str(toy), "--out", str(tmp_path / "study"), "--trials", "2",
            "--epochs", "2", "--split", "user-time"]  # fmt: skip
    assert tune_main([*args, *(["--quiet"] if quiet else [])]) == 0
    assert 2 <= len(bars) <= 4  # pruning may stop a trial early
    assert set(bars) == ({True} if quiet else {None})


def test_an_epoch_is_on_disk_before_its_line_is_printed(toy, tmp_path, monkeypatch):
    from deeprec import checkpoint
    from deeprec.training import lifecycle

    out = tmp_path / "run"
    config = Config(data=str(toy), **RECIPE)
    job = lifecycle.start(config, None, torch.device("cpu"), out)
    saved_when_printed = []

    def report(line: str) -> None:
        saved_when_printed.append((line.split()[1], checkpoint.load(out)["epoch"]))

    lifecycle.train(job, quiet=True, report=report)
    assert saved_when_printed == [("1", 1), ("2", 2)]
