"""Bad input ends cleanly; interrupted or diverging runs keep their last good checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import write_movielens_csv

from deeprec import checkpoint, csr
from deeprec.evaluate import cli_main as evaluate_main
from deeprec.train import cli_main as train_main
from deeprec.training import loop as train_mod

SMALL = ["--hidden", "8", "--batch-size", "8", "--quiet", "--split", "user-time"]
HEADER = "userId,movieId,rating,timestamp\n"

BAD_RATINGS = {
    "empty": ("", "file is empty"),
    "header only": (HEADER, "only a header"),
    "wrong columns": ("a,b,c\n1,2,3\n", "has no user column"),
    "non-numeric": (HEADER + "1,1,good,5\n", "ratings.csv:2: rating 'good' is not a number"),
    "NaN": (HEADER + "1,1,NaN,5\n", "ratings.csv:2: rating 'NaN' is not a number"),
    "inf": (HEADER + "1,1,inf,5\n", "ratings.csv:2: rating inf is not finite"),
    "out of scale": (HEADER + "1,1,9,5\n", "ratings.csv:2: rating 9 is outside the scale"),
    "negative id": (HEADER + "-1,1,3,5\n", "ratings.csv:2: user id -1 is negative"),
    "non-integer id": (HEADER + "1,2.5,3,5\n", "ratings.csv:2: item id 2.5 is not an integer"),
    "duplicate": (HEADER + "1,1,3,5\n1,1,4,6\n", "ratings.csv:3: duplicate rating"),
    "encoding": (b"userId,movieId,rating,timestamp\n1,1,3,\xff\n", "not readable as utf-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_RATINGS))
def test_train_on_bad_ratings_prints_one_line_and_exits_2(tmp_path, capsys, case):
    content, message = BAD_RATINGS[case]
    folder = tmp_path / "data"
    folder.mkdir()
    f = folder / "ratings.csv"
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    (folder / "movies.csv").write_text("movieId,title,genres\n1,A (1990),x\n")
    assert train_main(["--data", str(folder), "--out", str(tmp_path / "run"), *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m deeprec.train: error:") and message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_missing_file_and_unknown_dataset_name(tmp_path, capsys):
    assert train_main(["--data", str(tmp_path / "none.csv"), *SMALL]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert train_main(["--data", "ml-2m", *SMALL]) == 2
    assert "not a known dataset" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path, capsys):
    f = tmp_path / "r.csv"
    f.write_text(HEADER + "1,1,x,5\n")
    assert train_main(["--data", str(f), "--debug", *SMALL]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_real_process_exit_code_and_stderr(tmp_path):
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "ratings.csv").write_text(HEADER + "1,1,4,5\n1,2,7,6\n")
    (folder / "movies.csv").write_text("movieId,title,genres\n1,A (1990),x\n")
    r = subprocess.run(
        [sys.executable, "-m", "deeprec.train", "--data", str(folder), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"python -m deeprec.train: error: {folder / 'ratings.csv'}:3: rating 7 is outside the "
        "scale [0.5, 5]"
    ]
    assert not (tmp_path / "runs").exists()  # nothing written for a run that never started


def test_empty_validation_split_is_an_error_not_nan(tmp_path, capsys):
    f = tmp_path / "r.csv"
    f.write_text("user,item,rating,timestamp\n1,1,4,5\n1,2,3,6\n")
    assert train_main(["--data", str(f), "--out", str(tmp_path / "run"), *SMALL[:-2]]) == 2
    assert "leaves no validation rating" in capsys.readouterr().err


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_movielens_csv(tmp_path_factory.mktemp("d") / "toy")


def test_ctrl_c_keeps_the_last_completed_epoch_says_how_to_resume_and_resumes_exactly(
    toy, tmp_path, monkeypatch, capsys
):
    real = train_mod.run_epoch
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "run_epoch", interrupted)
    out = tmp_path / "run"
    assert train_main(["--data", str(toy), "--out", str(out), "--epochs", "5", *SMALL]) == 130
    err = capsys.readouterr().err.strip()
    assert err == (
        f"python -m deeprec.train: interrupted: in epoch 3; epoch 2 is saved in "
        f"{out / 'model.pt'}; continue with: python -m deeprec.train --resume {out}"
    )
    state = checkpoint.load(out / "model.pt")
    assert state["epoch"] == 2
    assert [e["epoch"] for e in json.loads((out / "metrics.json").read_text())["epochs"]] == [1, 2]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.toml", "metrics.json", "model.pt"]  # no temp files
    monkeypatch.setattr(train_mod, "run_epoch", real)
    assert train_main(["--resume", str(out), "--quiet"]) == 0  # the printed command
    straight = tmp_path / "straight"
    assert train_main(["--data", str(toy), "--out", str(straight), "--epochs", "5", *SMALL]) == 0
    resumed, whole = checkpoint.load(out), checkpoint.load(straight)
    assert resumed["epoch"] == whole["epoch"] == 5
    for name, weight in whole["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], weight), name
    losses = [[e["train_loss"] for e in s["history"]] for s in (resumed, whole)]
    assert losses[0] == losses[1]


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(
    toy, tmp_path, monkeypatch, capsys
):
    real = train_mod.batch_loss
    state = {"epoch_batches": 0}

    def diverging(*args):
        state["epoch_batches"] += 1
        loss = real(*args)
        return loss * float("nan") if state["epoch_batches"] > 6 else loss

    monkeypatch.setattr(train_mod, "batch_loss", diverging)
    out = tmp_path / "run"
    assert train_main(["--data", str(toy), "--out", str(out), "--epochs", "4", *SMALL]) == 2
    err = capsys.readouterr().err
    assert "loss became nan in epoch 2; epoch 1 is saved in" in err and "lower --lr" in err
    assert checkpoint.load(out)["epoch"] == 1


def test_checkpoint_of_other_data_is_refused(tmp_path, capsys):
    data = write_movielens_csv(tmp_path / "toy")
    out = tmp_path / "run"
    assert train_main(["--data", str(data), "--out", str(out), "--epochs", "1", *SMALL]) == 0
    ratings = data / "ratings.csv"
    text = ratings.read_bytes().replace(b",4.5,", b",4,", 1)
    ratings.write_bytes(text)
    capsys.readouterr()
    assert evaluate_main(["--checkpoint", str(out)]) == 2
    assert "not the data this model was trained on" in capsys.readouterr().err
    assert train_main(["--resume", str(out), "--epochs", "2"]) == 2
    assert "different data" in capsys.readouterr().err


def test_sixty_four_bit_columns_and_offsets_validate_without_huge_tensors():
    big = 2**40  # a column count no 32-bit index could address
    crow = torch.tensor([0, 2, 3], dtype=torch.int64)
    col = torch.tensor([2**31 + 5, 2**35, 2**39], dtype=torch.int64)
    parts = csr.CSRParts(crow, col, torch.ones(3))
    csr.check_values(parts, big)  # valid: every id < 2**40
    with pytest.raises(ValueError, match="outside"):
        csr.check_values(parts, 2**35)  # 2**35 and 2**39 are out of range
    _, ucol, uptr, rows = csr.column_index(crow, col)
    assert ucol.dtype == torch.int64 and ucol.tolist() == sorted(col.tolist())
    assert rows.tolist() == [0, 0, 1] and uptr.tolist() == [0, 1, 2, 3]


def test_ctrl_c_after_an_epoch_finished_says_after_and_keeps_its_metrics(
    toy, tmp_path, monkeypatch, capsys
):
    """Ctrl-C while epoch 3's checkpoint is written: epoch 3 finished (its line reaches
    metrics.json), epoch 2 is the one saved, and the message says both without contradiction."""
    from deeprec.training.run_folder import RunFolder

    real = RunFolder.save_checkpoint
    calls = {"n": 0}

    def cut(self, payload):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, payload)

    monkeypatch.setattr(RunFolder, "save_checkpoint", cut)
    out = tmp_path / "run"
    assert train_main(["--data", str(toy), "--out", str(out), "--epochs", "5", *SMALL]) == 130
    err = capsys.readouterr().err.strip()
    assert err == (
        f"python -m deeprec.train: interrupted: after epoch 3; epoch 2 is saved in "
        f"{out / 'model.pt'}; continue with: python -m deeprec.train --resume {out}"
    )
    epochs = json.loads((out / "metrics.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert checkpoint.load(out / "model.pt")["epoch"] == 2


def _wait_until_torch_loads(p: subprocess.Popen) -> None:
    """Return once process p has mapped libtorch: its deeprec package init has run (torch is
    imported only from deeprec's modules) and torch's import is under way. Timing the signal
    from this point, not from the spawn, keeps it out of the interpreter's own start (the only
    window no package code can cover) on a slow or busy machine."""
    import time

    maps = Path(f"/proc/{p.pid}/maps")
    while p.poll() is None:
        try:
            if "libtorch" in maps.read_text():
                return
        except OSError:  # the process is being replaced or has just ended
            pass
        time.sleep(0.001)
    raise AssertionError(f"the command ended before torch loaded: {p.communicate()[1]}")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
@pytest.mark.parametrize("delay", [0.0, 0.3, 1.0])
def test_ctrl_c_while_a_command_starts_is_one_line(tmp_path, delay):
    """A Ctrl-C early in `python -m deeprec.train` (while torch imports, where an extension
    cut off in its import surfaces as an ImportError or an import swallows the interrupt, or
    as the run starts): one line on stderr, no traceback, exit 130."""
    import signal
    import time

    p = subprocess.Popen([sys.executable, "-m", "deeprec.train", "--quiet", "--epochs", "1",
                          "--out", str(tmp_path / "run")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_until_torch_loads(p)
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(("deeprec: interrupted while starting",
                                "python -m deeprec.train: interrupted")), err  # fmt: skip
    assert p.returncode == 130, p.returncode
