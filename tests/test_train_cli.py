"""End to end on a generated MovieLens-layout dataset: train, resume, evaluate, recommend."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from datasets import write_movielens_csv

from deeprec import checkpoint
from deeprec.evaluate import cli_main as evaluate_main
from deeprec.recommend import cli_main as recommend_main
from deeprec.scoring import baseline
from deeprec.train import cli_main as train_main

SMALL = ["--hidden", "16,8", "--batch-size", "8", "--quiet", "--split", "user-time"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_movielens_csv(root / "toy")
    return root / "toy"


def train(data_dir, out, *extra):
    rc = train_main(["--data", str(data_dir), "--out", str(out), *SMALL, *extra])
    assert rc == 0
    return json.loads((out / "metrics.json").read_text())


def test_run_folder_has_the_documented_schema(data_dir, tmp_path):
    m = train(data_dir, tmp_path / "run", "--epochs", "3")
    assert set(m) >= {
        "dataset",
        "split",
        "by",
        "n_users",
        "n_items",
        "n_train",
        "n_val",
        "fused",
        "config",
        "epochs",
        "final",
    }
    assert (m["n_users"], m["by"], m["fused"], m["split"]) == (40, "user", False, "user-time")
    assert [e["epoch"] for e in m["epochs"]] == [1, 2, 3]
    assert all(set(e) == {"epoch", "train_loss", "val_rmse", "seconds"} for e in m["epochs"])
    assert set(m["final"]) >= {"val_rmse", "val_mae", "val_rmse_unclipped", "val_mae_unclipped"}
    assert m["epochs"][-1]["train_loss"] < m["epochs"][0]["train_loss"]
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert state["epoch"] == 3 and "state_dict" in state and "optimizer" in state
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000


def test_fused_loss_trains_like_the_reference(data_dir, tmp_path):
    ref = train(data_dir, tmp_path / "ref", "--epochs", "3")
    fused = train(data_dir, tmp_path / "fused", "--epochs", "3", "--fused")
    assert fused["fused"] is True
    for a, b in zip(ref["epochs"], fused["epochs"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert abs(ref["final"]["val_rmse"] - fused["final"]["val_rmse"]) < 1e-4


def test_resume_equals_an_uninterrupted_run(data_dir, tmp_path):
    straight = train(data_dir, tmp_path / "straight", "--epochs", "4", "--dropout", "0.2")
    train(data_dir, tmp_path / "split", "--epochs", "2", "--dropout", "0.2")
    assert train_main(["--resume", str(tmp_path / "split"), "--epochs", "4", "--quiet"]) == 0
    resumed = json.loads((tmp_path / "split" / "metrics.json").read_text())
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2, 3, 4]
    for a, b in zip(straight["epochs"], resumed["epochs"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
        assert a["val_rmse"] == pytest.approx(b["val_rmse"], abs=1e-6)


def test_resume_needs_more_epochs(data_dir, tmp_path, capsys):
    train(data_dir, tmp_path / "r", "--epochs", "1")
    assert train_main(["--resume", str(tmp_path / "r"), "--epochs", "1"]) == 2
    assert "already ran 1 epochs" in capsys.readouterr().err


def test_recommend_prints_k_titles_for_a_user_and_a_new_user(data_dir, tmp_path, capsys):
    train(data_dir, tmp_path / "run", "--epochs", "2")
    capsys.readouterr()
    assert (
        recommend_main(
            ["--checkpoint", str(tmp_path / "run" / "model.pt"), "--user", "1", "-k", "5"]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("Top 5 for user 1") and len(lines) == 6
    assert all("Movie " in ln and "(" in ln for ln in lines[1:])
    assert (
        recommend_main(["--checkpoint", str(tmp_path / "run"), "--ratings", "3=5,4=1", "-k", "3"])
        == 0
    )
    out = capsys.readouterr().out
    assert "new user" in out and "[3]" not in out and "[4]" not in out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--user", "99999"], "not in the training data"),
        (["--ratings", "3=five"], "is not ITEM=RATING"),
        (["--ratings", "3=9"], "must be a number in"),
        (["--ratings", "123456=4"], "not in the training data"),
    ],
)
def test_recommend_bad_requests_exit_2_with_one_line(data_dir, tmp_path, capsys, args, message):
    train(data_dir, tmp_path / "run", "--epochs", "1")
    capsys.readouterr()
    assert recommend_main(["--checkpoint", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_evaluate_prints_model_and_baselines(data_dir, tmp_path, capsys):
    train(data_dir, tmp_path / "run", "--epochs", "2")
    capsys.readouterr()
    assert evaluate_main(["--checkpoint", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    for name in ("deeprec", "global mean", "user+item bias"):
        assert name in out


def test_bias_baseline_recovers_additive_structure(data_dir):
    import numpy as np
    import pandas as pd

    from deeprec.data import RatingMatrix

    rng = np.random.default_rng(0)
    bu, bi = rng.normal(size=30), rng.normal(size=40)
    rows = [
        (u, i, 3 + bu[u] + bi[i], 0) for u in range(30) for i in range(40) if rng.random() < 0.7
    ]
    df = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    m = RatingMatrix.from_split(df, df.iloc[:0], "user")
    fitted = baseline.fit(m.train, m.by, reg_user=0.0, reg_item=0.0, sweeps=50)
    pred = fitted.mu + fitted.rows[:, None] + fitted.cols[None, :]
    np.testing.assert_allclose(pred, 3 + bu[:, None] + bi[None, :], atol=1e-4)


def test_checkpoint_with_a_pickle_payload_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "model.pt"
    torch.save({"format": checkpoint.FORMAT, "version": 1, "x": Evil()}, path)
    with pytest.raises(
        checkpoint.CheckpointError, match=r"refused to load: it would import posix\.system"
    ):
        checkpoint.load(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload,message",
    [
        (b"not a zip", "not a readable checkpoint"),
        ({"weights": torch.zeros(2)}, "not a deeprec checkpoint"),
        ({"format": checkpoint.FORMAT, "version": 99}, "version 99 is not supported"),
        ({"format": checkpoint.FORMAT, "version": 1}, "incomplete checkpoint"),
    ],
)
def test_broken_checkpoints_give_clear_errors(tmp_path, payload, message):
    path = tmp_path / "model.pt"
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    else:
        torch.save(payload, path)
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load(path)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old")

    def boom(f):
        f.write(b"half")
        raise pickle.PicklingError("disk full")

    with pytest.raises(pickle.PicklingError):
        checkpoint.atomic_write(path, boom)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_train_rejects_bad_flags_with_one_line(data_dir, tmp_path, capsys):
    assert train_main(["--data", str(data_dir), "--epochs", "0", "--out", str(tmp_path)]) == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err
    assert train_main(["--data", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert train_main(["--preset", "nope"]) == 2
    assert "--preset 'nope' does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--input-dropout", "1.5", "--input-dropout must be in [0, 1)"),
        ("--dropout", "-0.1", "--dropout must be in [0, 1)"),
        ("--weight-decay", "-1", "--weight-decay must be >= 0"),
        ("--lr", "0", "--lr must be > 0"),
        ("--lr", "nan", "--lr must be > 0"),
        ("--lr", "inf", "--lr must be > 0"),
        ("--quantile", "1.0", "--quantile must be in (0, 1)"),
        ("--val-frac", "0", "--val-frac must be in (0, 1)"),
        ("--batch-size", "0", "--batch-size must be >= 1"),
        ("--seed", "-1", "--seed must be in [0, "),
    ],
)
def test_every_numeric_flag_is_range_checked(data_dir, tmp_path, capsys, flag, value, message):
    rc = train_main(["--data", str(data_dir), "--out", str(tmp_path / "r"), flag, value])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_save_every_is_range_checked_by_argparse(capsys):
    with pytest.raises(SystemExit) as stop:
        train_main(["--save-every", "0"])
    assert stop.value.code == 2 and "--save-every: must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra,named",
    [
        (["--lr", "0.05"], "--lr 0.05 (the run has 0.001)"),
        (["--fused"], "--fused True"),
        (["--hidden", "32"], "--hidden [32]"),
        (["--preset", "best"], "--preset best"),
        (["--out", "elsewhere"], "--out elsewhere"),
    ],
)
def test_resume_refuses_flags_that_would_change_the_run(data_dir, tmp_path, capsys, extra, named):
    train(data_dir, tmp_path / "r", "--epochs", "1")
    before = (tmp_path / "r" / "metrics.json").read_text()
    rc = train_main(["--resume", str(tmp_path / "r"), "--epochs", "2", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and named in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "r" / "metrics.json").read_text() == before


def test_resume_accepts_flags_equal_to_the_saved_ones_and_run_options(data_dir, tmp_path):
    train(data_dir, tmp_path / "r", "--epochs", "1")
    args = ["--resume", str(tmp_path / "r"), "--epochs", "2", "--quiet", "--device", "cpu"]
    assert train_main([*args, "--lr", "0.001", "--hidden", "16,8", "--save-every", "1"]) == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert [e["epoch"] for e in m["epochs"]] == [1, 2]


def test_max_batches_caps_the_steps_per_epoch_and_metrics_record_memory(tmp_path, monkeypatch):
    from deeprec.training import loop as training

    data = write_movielens_csv(tmp_path / "toy")
    real, calls = training.batch_loss, {"n": 0}

    def counted(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "batch_loss", counted)
    out = tmp_path / "run"
    flags = ["--data", str(data), "--out", str(out), "--epochs", "3", "--max-batches", "2"]
    assert train_main([*flags, *SMALL]) == 0
    assert calls["n"] == 3 * 2
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["config"]["max_batches"] == 2 and doc["world_size"] == 1
    assert doc["memory"]["peak_rss_mib"] > 10
    assert train_main([*flags, "--max-batches", "-1", *SMALL]) == 2
