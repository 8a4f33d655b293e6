"""The product surface: the bundled dataset offline, config files, ONNX export and
serving, batch recommendations, TensorBoard logging and the tune command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from datasets import write_movielens_csv

from deeprec.config import Config, ConfigError, load_config_file, toml_text
from deeprec.data import load, sources
from deeprec.recommend import cli_main as recommend_main
from deeprec.train import cli_main as train_main

SMALL = ["--hidden", "16,8", "--batch-size", "8", "--quiet", "--split", "user-time"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_movielens_csv(tmp_path_factory.mktemp("product") / "toy")


def train(out: Path, *args: str) -> dict:
    assert train_main(["--out", str(out), *args]) == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def trained(toy, tmp_path_factory):
    """A user-based and a residual model on the toy set, 3 epochs each."""
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for name, extra in (("plain", []), ("residual", ["--residual"])):
        train(root / name, "--data", str(toy), *SMALL, "--epochs", "3", *extra)
        runs[name] = root / name
    return runs


# ---------------------------------------------------------------- 1. offline, out of the box
def offline_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DEEPREC_DATA"}
    return env | {
        "XDG_CACHE_HOME": str(tmp_path / "cache"),  # an empty user cache
        "HTTPS_PROXY": "http://127.0.0.1:9",  # any download attempt fails at once
        "HTTP_PROXY": "http://127.0.0.1:9",
        "MPLBACKEND": "Agg",
    }


def test_the_main_job_runs_offline_from_the_bundled_copy(tmp_path):
    cmd = [sys.executable, "-m", "deeprec.train", "--fused", "--epochs", "1", "--quiet",
           "--hidden", "32", "--out", str(tmp_path / "run")]  # fmt: skip
    done = subprocess.run(cmd, env=offline_env(tmp_path), cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (m["n_users"], m["n_items"], m["n_train"]) == (595, 9559, 98_819)
    assert "bundled" in done.stdout  # the header line names where the data came from


def test_bundled_copy_is_checked_and_a_damaged_one_replaced(tmp_path, monkeypatch):
    import pooch

    monkeypatch.delenv("DEEPREC_DATA", raising=False)
    monkeypatch.setattr(sources, "cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(pooch, "retrieve", lambda *a, **k: pytest.fail("tried to download"))
    ds = load("ml-latest-small")
    assert len(ds.ratings) == 100_836 and ds.titles[1] == "Toy Story (1995)"
    assert (ds.path / "README.txt").read_text().count("Usage License") == 1
    ratings = ds.path / "ratings.csv"
    ratings.write_bytes(ratings.read_bytes()[:-40])  # damage the unpacked copy
    again = load("ml-latest-small")
    assert len(again.ratings) == 100_836
    assert (
        sources.sha256(again.path / "ratings.csv")
        == sources.SOURCES["ml-latest-small"].ratings_sha256
    )


# ---------------------------------------------------------------- 2. config files
def test_config_toml_round_trips_every_option():
    config = Config(hidden=[7, 3], lr=3.0000000000000004e-4, data='odd "name"\\x', residual=True)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"deeprec-rt-{os.getpid()}.toml"
    path.write_text(toml_text(config, "a header\nover two lines"))
    try:
        assert load_config_file(path) == config
    finally:
        path.unlink()


def test_run_folder_config_reproduces_the_run(toy, tmp_path):
    first = train(tmp_path / "a", "--data", str(toy), *SMALL, "--epochs", "2", "--lr", "0.002")
    assert (tmp_path / "a" / "config.toml").exists()
    second = train(tmp_path / "b", "--config", str(tmp_path / "a" / "config.toml"), "--quiet")
    assert second["config"] == first["config"]
    assert [e["train_loss"] for e in second["epochs"]] == [e["train_loss"] for e in first["epochs"]]


def test_flags_override_the_config_file(toy, tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(f'data = "{toy}"\nsplit = "user-time"\nhidden = [16, 8]\nepochs = 3\nlr = 0.01\n')
    m = train(tmp_path / "r", "--config", str(f), "--epochs", "1", "--quiet")
    assert m["config"]["lr"] == 0.01 and m["config"]["epochs"] == 1
    assert m["config"]["batch_size"] == Config().batch_size  # absent keys: the seed recipe


@pytest.mark.parametrize(
    "content,message",
    [
        ("lr = 0.01\nlearning_rate = 2\n", r"c.toml: unknown option\(s\) learning_rate"),
        ('epochs = "ten"\n', r"c.toml: epochs must be int, got 'ten'"),
        ("lr = -1.0\n", r"--lr must be > 0, got -1.0"),
        ("lr = [1\n", r"--config .*c.toml: not valid TOML"),
        ('split = "sideways"\n', r"--split must be one of"),
    ],
    ids=["unknown-key", "wrong-type", "out-of-range", "bad-toml", "bad-choice"],
)
def test_bad_config_files_get_one_line_and_exit_2(tmp_path, capsys, content, message):
    f = tmp_path / "c.toml"
    f.write_text(content)
    assert train_main(["--config", str(f), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("python -m deeprec.train: error:")
    import re

    assert re.search(message, err), err


def test_missing_config_file_and_preset_plus_config(tmp_path, capsys):
    assert train_main(["--config", str(tmp_path / "none.toml")]) == 2
    assert "none.toml: file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        train_main(["--config", "x.toml", "--preset", "seed"])
    assert exc.value.code == 2


def test_presets_are_shipped_config_files():
    from deeprec.config import load_preset, presets

    assert set(presets()) >= {"seed", "best"}
    assert load_preset("seed") == Config()
    with pytest.raises(ConfigError, match="does not exist"):
        load_preset("nope")


# ---------------------------------------------------------------- 3. ONNX export and serving
@pytest.fixture(scope="module")
def exported(trained):
    from deeprec.export import cli_main as export_main

    out = {}
    for name, run in trained.items():
        path = run / "model.onnx"
        assert export_main(["--checkpoint", str(run / "model.pt"), "--out", str(path)]) == 0
        out[name] = path
    return out


def lines(capsys, main, argv) -> list[str]:
    assert main(argv) == 0
    return capsys.readouterr().out.strip().splitlines()


@pytest.mark.parametrize("name", ["plain", "residual"])
@pytest.mark.parametrize("who", [["--user", "7"], ["--ratings", "3=5,10=1.5,22=4"]])
def test_onnx_gives_the_same_top_k_as_the_checkpoint(trained, exported, capsys, name, who):
    torch_out = lines(capsys, recommend_main, ["--checkpoint", str(trained[name]), *who, "-k", "8"])
    onnx_out = lines(capsys, recommend_main, ["--onnx", str(exported[name]), *who, "-k", "8"])
    assert len(torch_out) == 9
    assert onnx_out == torch_out


def test_onnx_scorer_matches_the_torch_model_on_every_user(trained, exported):
    from deeprec.inference import recommendation
    from deeprec.inference.serving import OnnxScorer
    from deeprec.inference.trained import load_trained
    from deeprec.training.lifecycle import resolve_device

    for name in ("plain", "residual"):
        job = load_trained(trained[name], None, resolve_device("cpu"))
        users = np.arange(job.matrix.n_users)
        want = recommendation.TrainedScorer(job).score_users(users)
        got = OnnxScorer(exported[name]).score_users(users)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_recommend_onnx_needs_no_torch(exported, tmp_path):
    code = (
        "import sys\n"
        "from deeprec.recommend import cli_main\n"
        f"rc = cli_main(['--onnx', {str(exported['plain'])!r}, '--user', '7', '-k', '3'])\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'torch')\n"
        "assert rc == 0 and not loaded, loaded[:5]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_onnx_errors_are_one_line(exported, tmp_path, capsys):
    alone = tmp_path / "alone.onnx"
    alone.write_bytes(exported["plain"].read_bytes())
    assert recommend_main(["--onnx", str(alone), "--user", "1"]) == 2
    assert "sidecar is missing" in capsys.readouterr().err
    assert recommend_main(["--onnx", str(exported["plain"]), "--user", "99999"]) == 2
    assert "not in the training data" in capsys.readouterr().err
    garbage = tmp_path / "g.onnx"
    garbage.write_bytes(b"not a model")
    with np.load(exported["plain"].with_suffix(".onnx.npz")) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    np.savez(tmp_path / "g.onnx.npz", **arrays)  # the real sidecar: another model's hash
    assert recommend_main(["--onnx", str(garbage), "--user", "1"]) == 2
    assert "belongs to another model" in capsys.readouterr().err
    from deeprec.digest import file_sha256

    meta["model_sha256"] = file_sha256(garbage)  # a sidecar vouching for the garbage
    np.savez(tmp_path / "g.onnx.npz", **(arrays | {"meta": np.array(json.dumps(meta))}))
    assert recommend_main(["--onnx", str(garbage), "--user", "1"]) == 2
    assert "onnxruntime cannot load it" in capsys.readouterr().err


def test_a_foreign_sidecar_with_the_same_items_is_refused(trained, exported, tmp_path, capsys):
    """The residual model's export has the same items as the plain one: its sidecar passes
    every shape check, but it is not this model's."""
    model = tmp_path / "m.onnx"
    model.write_bytes(exported["plain"].read_bytes())
    (tmp_path / "m.onnx.npz").write_bytes(
        exported["residual"].with_suffix(".onnx.npz").read_bytes()
    )
    assert recommend_main(["--onnx", str(model), "--user", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "belongs to another model" in err, err


@pytest.mark.parametrize("failure", ["sidecar", "verification"])
def test_a_failed_export_leaves_the_previous_one_whole(trained, exported, tmp_path, capsys,
                                                       monkeypatch, failure):  # fmt: skip
    from deeprec.export import cli_main as export_main
    from deeprec.inference import onnx_export

    out = tmp_path / "m.onnx"
    out.write_bytes(exported["plain"].read_bytes())
    side = tmp_path / "m.onnx.npz"
    side.write_bytes(exported["plain"].with_suffix(".onnx.npz").read_bytes())
    before = out.read_bytes(), side.read_bytes()

    def fail(*args, **kwargs):
        if failure == "sidecar":
            raise OSError(28, "No space left on device")
        raise onnx_export.ExportError("onnxruntime disagrees with torch: max |diff| 1")

    monkeypatch.setattr(onnx_export, "_write_sidecar" if failure == "sidecar" else "_verify", fail)
    ck = ["--checkpoint", str(trained["residual"]), "--out", str(out)]
    assert export_main(ck) == 2
    assert (out.read_bytes(), side.read_bytes()) == before  # the old pair, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.npz"]  # no leftovers
    assert recommend_main(["--onnx", str(out), "--user", "1"]) == 0


def test_an_item_based_model_is_refused_at_export(toy, tmp_path, capsys):
    from deeprec.export import cli_main as export_main

    train(tmp_path / "items", "--data", str(toy), *SMALL, "--epochs", "1", "--by", "item")
    capsys.readouterr()
    code = export_main(["--checkpoint", str(tmp_path / "items"), "--out", str(tmp_path / "i.onnx")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "item-based" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "i.onnx").exists()


def test_export_refuses_a_bad_out_name(trained, capsys):
    from deeprec.export import cli_main as export_main

    assert export_main(["--checkpoint", str(trained["plain"]), "--out", "m.txt"]) == 2
    assert "*.onnx" in capsys.readouterr().err


# ---------------------------------------------------------------- 4. batch recommendations
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize("model", ["checkpoint", "onnx"])
def test_all_users_file_matches_single_user_lists(trained, exported, tmp_path, capsys, suffix,
                                                  model):  # fmt: skip
    out = tmp_path / f"recs{suffix}"
    source = ["--checkpoint", str(trained["residual"])] if model == "checkpoint" else [
        "--onnx", str(exported["residual"])]  # fmt: skip
    said = lines(capsys, recommend_main, [*source, "--all-users", "-k", "5", "--out", str(out),
                                          "--batch-size", "7", "--quiet"])  # fmt: skip
    assert "users/s" in said[-1]
    recs = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    assert list(recs.columns) == ["user", "rank", "item", "score", "title"]
    assert recs["user"].nunique() == 40 and (recs.groupby("user").size() == 5).all()
    for user in (1, 17, 40):
        single = lines(capsys, recommend_main, [*source, "--user", str(user), "-k", "5"])
        items = [int(line.rsplit("[", 1)[1].rstrip("]")) for line in single[1:]]
        assert recs[recs.user == user].sort_values("rank")["item"].tolist() == items


def test_all_users_excludes_training_items(trained, tmp_path, capsys):
    from deeprec.inference.trained import load_trained
    from deeprec.training.lifecycle import resolve_device

    out = tmp_path / "recs.csv"
    lines(capsys, recommend_main, ["--checkpoint", str(trained["plain"]), "--all-users", "-k",
                                   "20", "--out", str(out), "--quiet"])  # fmt: skip
    recs = pd.read_csv(out)
    job = load_trained(trained["plain"], None, resolve_device("cpu"))
    m = job.matrix
    for u, user in enumerate(m.user_ids()):
        seen = set(m.col_ids[m.train[u].indices].tolist())
        assert not seen & set(recs[recs.user == user]["item"]), user


def test_all_users_flag_checks(trained, capsys):
    ck = ["--checkpoint", str(trained["plain"])]
    assert recommend_main([*ck, "--user", "1", "--out", "r.csv"]) == 2
    assert "--out goes with --all-users" in capsys.readouterr().err
    assert recommend_main([*ck, "--all-users", "--out", "r.json"]) == 2
    assert ".csv or .parquet" in capsys.readouterr().err


def test_default_outputs_land_beside_the_model(trained, tmp_path, capsys):
    """recommend --all-users and export write into the run folder they read, not the
    current directory; tune's default study folder is under runs/."""
    import shutil

    from deeprec.export import cli_main as export_main

    folder = tmp_path / "run"
    shutil.copytree(trained["plain"], folder)
    assert recommend_main(["--checkpoint", str(folder / "model.pt"), "--all-users", "-k", "3",
                           "--quiet"]) == 0  # fmt: skip
    assert (folder / "recs.csv").is_file() and str(folder / "recs.csv") in capsys.readouterr().out
    assert export_main(["--checkpoint", str(folder)]) == 0
    assert (folder / "model.onnx").is_file() and (folder / "model.onnx.npz").is_file()


# ---------------------------------------------------------------- 5. TensorBoard
def test_tensorboard_logs_every_epoch_in_a_subfolder_per_run(toy, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for name in ("r", "s"):
        train(tmp_path / name, "--data", str(toy), *SMALL, "--epochs", "3", "--tensorboard",
              str(tmp_path / "tb"))  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["r", "s"]
    acc = EventAccumulator(str(tmp_path / "tb" / "r"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert tags >= {"train/loss", "val/rmse", "val/mae", "lr", "seconds"}
    assert [e.step for e in acc.Scalars("val/rmse")] == [1, 2, 3]
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert acc.Scalars("train/loss")[-1].value == pytest.approx(metrics["epochs"][-1]["train_loss"])
    assert "config/text_summary" in acc.Tags()["tensors"]


def test_tensorboard_missing_is_one_line(toy, tmp_path, capsys, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tb(name, *a, **k):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("no tensorboard")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tb)
    rc = train_main(["--data", str(toy), *SMALL, "--epochs", "1", "--tensorboard",
                     str(tmp_path / "tb"), "--out", str(tmp_path / "r")])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("pip install 'deeprec[tensorboard]'") and len(err.splitlines()) == 1
    assert not (tmp_path / "r" / "model.pt").exists()  # refused before training


# ---------------------------------------------------------------- 6. tune
def tune(out: Path, data: Path, *extra: str) -> int:
    from deeprec.tune import cli_main as tune_main

    return tune_main(["--data", str(data), "--split", "user-time", "--out", str(out),
                      "--epochs", "2", "--quiet", *extra])  # fmt: skip


def test_tune_writes_results_and_a_trainable_best_config(toy, tmp_path, capsys):
    assert tune(tmp_path / "t", toy, "--trials", "3") == 0
    results = json.loads((tmp_path / "t" / "results.json").read_text())
    assert len(results["trials"]) == 3
    assert results["protocol"]["outer_val_ratings_never_read"] > 0
    assert (tmp_path / "t" / "results.md").read_text().startswith("# Tuning")
    best = load_config_file(tmp_path / "t" / "best.toml")
    assert best.to_dict() | {"epochs": 0} == results["best_config"] | {"epochs": 0}
    capsys.readouterr()
    m = train(tmp_path / "r", "--config", str(tmp_path / "t" / "best.toml"), "--quiet")
    assert m["config"] == best.to_dict()
    assert tune(tmp_path / "t", toy, "--trials", "2") == 0  # resumes the study
    assert len(json.loads((tmp_path / "t" / "results.json").read_text())["trials"]) == 5


def test_tune_never_reads_the_reported_validation_ratings(toy, tmp_path):
    """Poison every outer-validation rating (the split rule never looks at rating values):
    the search must come out bit for bit the same."""
    from deeprec.data import split

    ratings = pd.read_csv(toy / "ratings.csv")
    frame = ratings.rename(columns={"userId": "user", "movieId": "item"})
    _, val = split(frame, "user-time")
    poisoned = toy.parent / "poisoned"
    poisoned.mkdir(exist_ok=True)
    (poisoned / "movies.csv").write_bytes((toy / "movies.csv").read_bytes())
    key = ratings.set_index(["userId", "movieId"]).index
    hit = key.isin(list(zip(val["user"], val["item"], strict=True)))
    assert hit.sum() == len(val) > 0
    ratings.loc[hit, "rating"] = 5.0 - ratings.loc[hit, "rating"] + 0.5  # every value changed
    ratings.to_csv(poisoned / "ratings.csv", index=False)
    assert tune(tmp_path / "a", toy, "--trials", "3") == 0
    assert tune(tmp_path / "b", poisoned, "--trials", "3") == 0
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in "ab")
    assert [t["inner_val_rmse"] for t in a["trials"]] == [t["inner_val_rmse"] for t in b["trials"]]


def test_tune_flag_checks(toy, tmp_path, capsys):
    assert tune(tmp_path / "t", toy, "--trials", "0") == 2
    assert "--trials must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "damage,message",
    [
        ("garbage", "unreadable sidecar"),
        ("indices", "column index is out of range"),
        ("indptr", "indptr does not match"),
        ("titles", "title_ids and titles differ"),
        ("meta", "meta lacks"),
    ],
)
def test_a_damaged_sidecar_is_refused_in_one_line(exported, tmp_path, capsys, damage, message):
    model = tmp_path / "m.onnx"
    model.write_bytes(exported["plain"].read_bytes())
    side = tmp_path / "m.onnx.npz"
    if damage == "garbage":
        side.write_bytes(b"PK\x03\x04 not really a zip")
    else:
        with np.load(exported["plain"].with_suffix(".onnx.npz")) as z:
            arrays = {k: z[k] for k in z.files}
        if damage == "indices":
            arrays["indices"] = arrays["indices"] + 10**6
        elif damage == "indptr":
            arrays["indptr"] = arrays["indptr"][:-3]
        elif damage == "titles":
            arrays["titles"] = arrays["titles"][:-1]
        else:
            arrays["meta"] = np.array(json.dumps({"format": 1}))
        np.savez(side, **arrays)
    assert recommend_main(["--onnx", str(model), "--user", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_unwritable_outputs_are_one_line_errors(trained, tmp_path, capsys):
    from deeprec.export import cli_main as export_main

    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where a folder is needed
    ck = ["--checkpoint", str(trained["plain"])]
    assert recommend_main([*ck, "--all-users", "--out", str(blocker / "r.csv"), "--quiet"]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert export_main([*ck, "--out", str(blocker / "m.onnx")]) == 2
    assert "cannot write" in capsys.readouterr().err
