"""torchrun: K processes make the update one process makes (issue #12).

Each case trains the same recipe once in one process and once under
``torchrun --nproc_per_node=2`` (gloo on CPU) and compares metrics.json epoch by epoch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import write_movielens_csv

RECIPE = ["--hidden", "16,8", "--batch-size", "16", "--split", "user-time", "--quiet",
          "--device", "cpu", "--epochs", "3"]  # fmt: skip


def _train(out: Path, data: Path, procs: int, *flags: str) -> dict:
    cmd = [sys.executable, "-m", "deeprec.train", "--data", str(data), "--out", str(out)]
    if procs > 1:
        cmd[1:3] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                    "-m", "deeprec.train"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DEEPREC_DIST_TIMEOUT": "120"}
    done = subprocess.run(
        [*cmd, *RECIPE, *flags], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_movielens_csv(tmp_path_factory.mktemp("ddp") / "toy")


@pytest.mark.parametrize(
    "flags",
    [(), ("--fused",), ("--fused", "--optimizer", "sparse-adam")],
    ids=["reference", "fused", "fused-lazy-adam"],
)
def test_two_processes_train_like_one(toy, tmp_path, flags):
    one = _train(tmp_path / "one", toy, 1, *flags)
    two = _train(tmp_path / "two", toy, 2, *flags)
    assert one["world_size"] == 1 and two["world_size"] == 2
    for a, b in zip(one["epochs"], two["epochs"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5), a["epoch"]
        assert b["val_rmse"] == pytest.approx(a["val_rmse"], abs=1e-5), a["epoch"]
    assert two["final"]["val_rmse"] == pytest.approx(one["final"]["val_rmse"], abs=1e-5)
    assert two["memory"]["peak_rss_mib"] > 0


def test_resume_under_torchrun_continues_the_run(toy, tmp_path):
    full = _train(tmp_path / "full", toy, 2, "--fused")
    _train(tmp_path / "part", toy, 2, "--fused", "--epochs", "2")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "deeprec.train", "--resume", str(tmp_path / "part"), "--epochs", "3",
           "--quiet", "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = json.loads((tmp_path / "part" / "metrics.json").read_text())
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2, 3]
    for a, b in zip(full["epochs"], resumed["epochs"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6)
