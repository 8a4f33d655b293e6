"""A run folder is never overwritten by accident, and --resume takes its own folder as --out."""

from __future__ import annotations

from pathlib import Path

import pytest
from datasets import write_movielens_csv

from deeprec.train import cli_main as train_main

TINY = ["--hidden", "8", "--batch-size", "16", "--quiet"]


@pytest.fixture
def data(tmp_path):
    return write_movielens_csv(tmp_path / "toy")


def test_train_refuses_an_out_folder_holding_a_run(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(["--data", str(data), "--out", str(out), "--epochs", "1", *TINY]) == 0
    model = (out / "model.pt").read_bytes()
    capsys.readouterr()
    code = train_main(["--data", str(data), "--out", str(out), "--epochs", "2", *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "--overwrite" in err and f"--resume {out}" in err
    assert len(err.strip().splitlines()) == 1
    assert (out / "model.pt").read_bytes() == model  # nothing lost
    args = ["--data", str(data), "--out", str(out), "--epochs", "2", "--overwrite", *TINY]
    assert train_main(args) == 0
    assert (out / "model.pt").read_bytes() != model


def test_an_empty_or_new_out_folder_needs_no_flag(data, tmp_path):
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "new"):
        assert train_main(["--data", str(data), "--out", str(out), "--epochs", "1", *TINY]) == 0


def test_resume_accepts_its_own_folder_as_out(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert train_main(["--data", str(data), "--out", str(out), "--epochs", "1", *TINY]) == 0
    monkeypatch.chdir(tmp_path)
    # the same folder, spelled another way, as scripts pass it
    same = ["--resume", "run", "--out", str(out) + "/", "--epochs", "2", "--quiet"]
    assert train_main(same) == 0
    other = ["--resume", "run", "--out", "elsewhere", "--epochs", "3", "--quiet"]
    assert train_main(other) == 2
    assert "a resumed run writes to its own folder" in capsys.readouterr().err


# ------------------------------------------------------------------ tune and blend outputs
def run_cli(main, args, capsys):
    code = main(args)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("where", ["a file", "under /proc"])
def test_tune_refuses_an_out_it_cannot_write_in_one_line(data, tmp_path, capsys, where):
    pytest.importorskip("optuna")
    from deeprec.tune import cli_main as tune_main

    out = tmp_path / "taken"
    if where == "a file":
        out.write_text("not a folder")
    else:
        out = Path("/proc/deeprec-study")
    code, err = run_cli(tune_main, ["--data", str(data), "--out", str(out), "--trials", "1"],
                        capsys)  # fmt: skip
    assert code == 2 and "--out" in err and len(err.strip().splitlines()) == 1, err


def test_tune_refuses_a_corrupt_study_naming_it(data, tmp_path, capsys):
    pytest.importorskip("optuna")
    from deeprec.tune import cli_main as tune_main

    out = tmp_path / "study"
    args = ["--data", str(data), "--out", str(out), "--trials", "1", "--epochs", "1", "--quiet"]
    assert tune_main(args) == 0  # a real study, with its record
    for record in (True, False):  # the database damaged, with and without its record
        (out / "study.db").write_bytes(b"this is not an SQLite database" * 40)
        if not record:
            (out / "study.json").unlink()
        capsys.readouterr()
        code, err = run_cli(tune_main, args, capsys)
        assert code == 2 and "study.db" in err and len(err.strip().splitlines()) == 1, err


def test_blend_checks_its_outputs_before_the_work(data, tmp_path, capsys, monkeypatch):
    from deeprec.blend import cli_main as blend_main
    from deeprec.quality import blending

    monkeypatch.setattr(blending, "blend", lambda *a, **k: pytest.fail("blended first"))
    base = ["--data", str(data), "--hidden", "8", "--epochs", "1"]
    code, err = run_cli(blend_main, [*base, "--save", "/proc/deeprec-blend"], capsys)
    assert code == 2 and "--save" in err and len(err.strip().splitlines()) == 1, err
    folder = tmp_path / "a-folder"
    folder.mkdir()
    code, err = run_cli(blend_main, [*base, "--out", str(folder)], capsys)
    assert code == 2 and "--out" in err, err


def test_tune_refuses_to_mix_studies(tmp_path, capsys):
    pytest.importorskip("optuna")
    from datasets import synthetic_ratings

    from deeprec.tune import cli_main as tune_main

    a = write_movielens_csv(tmp_path / "a")
    b = write_movielens_csv(tmp_path / "b", synthetic_ratings(seed=5))
    out = tmp_path / "study"
    base = ["--out", str(out), "--trials", "1", "--epochs", "1", "--quiet"]
    assert tune_main(["--data", str(a), *base]) == 0
    records = (out / "study.json").read_text()
    capsys.readouterr()
    for other in (["--data", str(b)], ["--data", str(a), "--split", "random"]):
        code = tune_main([*other, *base])
        err = capsys.readouterr().err
        assert code == 2 and "holds a study of other data or settings" in err, err
        assert len(err.strip().splitlines()) == 1
    assert (out / "study.json").read_text() == records
    assert tune_main(["--data", str(a), *base]) == 0  # the same study resumes


def test_slim_keeps_the_weights_only_and_is_refused_by_resume(data, tmp_path, capsys):
    from deeprec import checkpoint
    from deeprec.evaluate import cli_main as evaluate_main

    args = ["--data", str(data), "--epochs", "2", *TINY]
    assert train_main([*args, "--out", str(tmp_path / "full")]) == 0
    assert train_main([*args, "--out", str(tmp_path / "slim"), "--slim"]) == 0
    full, slim = (checkpoint.load(tmp_path / name) for name in ("full", "slim"))
    for name, weight in full["state_dict"].items():  # the same model
        assert (slim["state_dict"][name] == weight).all(), name
    assert "optimizer" not in slim and "optimizer" in full
    size = {n: (tmp_path / n / "model.pt").stat().st_size for n in ("full", "slim")}
    assert size["slim"] < 0.5 * size["full"], size  # Adam keeps two moments per weight
    assert evaluate_main(["--checkpoint", str(tmp_path / "slim")]) == 0
    capsys.readouterr()
    assert train_main(["--resume", str(tmp_path / "slim"), "--epochs", "3", "--quiet"]) == 2
    assert "saved with --slim" in capsys.readouterr().err
