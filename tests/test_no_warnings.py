"""A normal run of every command prints no Python warning: each runs under -W error."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from datasets import write_movielens_csv


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("quiet")
    write_movielens_csv(root / "toy")
    return root


def command(root, *args: str) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "error", "MPLBACKEND": "Agg"}
    r = subprocess.run(
        [sys.executable, "-W", "error", "-m", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0 and "Warning" not in r.stderr, (args, r.stderr[-3000:])


def test_train_evaluate_recommend_export_and_blend_print_no_warning(toy):
    tiny = ["--data", "toy", "--hidden", "8", "--epochs", "2"]
    command(toy, "deeprec.train", *tiny, "--quiet", "--out", "dense")
    command(toy, "deeprec.train", *tiny, "--quiet", "--out", "fused", "--fused",
            "--data-on-device", "yes")  # fmt: skip
    command(toy, "deeprec.evaluate", "--checkpoint", "fused")
    command(toy, "deeprec.recommend", "--checkpoint", "fused", "--user", "1", "-k", "3")
    command(toy, "deeprec.export", "--checkpoint", "dense", "--out", "model.onnx")
    command(toy, "deeprec.blend", *tiny, "--split", "user-time", "--fused")
