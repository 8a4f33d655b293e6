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


# Every command in one process (torch is imported once): each runs through its cli_main
# with warnings turned into errors, and must return 0.
SCRIPT = """
import importlib, sys, warnings
warnings.simplefilter("error")
for argv in ARGV:
    main = importlib.import_module(argv[0]).cli_main
    code = main(list(argv[1:]))
    if code != 0:
        sys.exit(f"{argv}: exit {code}")
"""


def commands(root, *runs: tuple[str, ...]) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "error", "MPLBACKEND": "Agg"}
    script = SCRIPT.replace("ARGV", repr([list(r) for r in runs]))
    r = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr[-3000:]


def test_train_evaluate_recommend_export_and_blend_print_no_warning(toy):
    tiny = ["--data", "toy", "--hidden", "8", "--epochs", "2"]
    commands(
        toy,
        ("deeprec.train", *tiny, "--quiet", "--out", "dense"),
        ("deeprec.train", *tiny, "--quiet", "--out", "fused", "--fused", "--data-on-device", "yes"),
        ("deeprec.evaluate", "--checkpoint", "fused"),
        ("deeprec.recommend", "--checkpoint", "fused", "--user", "1", "-k", "3"),
        ("deeprec.export", "--checkpoint", "dense", "--out", "model.onnx"),
        ("deeprec.blend", *tiny, "--split", "user-time", "--fused"),
        ("deeprec.blend", "--topk", "--data", "toy", "--epochs", "2", "--quiet", "--save", "topk"),
        ("deeprec.recommend", "--blend", "topk", "--user", "1", "-k", "3"),
        (
            "deeprec.blend",
            "--topk",
            "--protocol",
            "strong",
            "--data",
            "toy",
            "--epochs",
            "2",
            "--quiet",
        ),
    )


def test_a_warning_in_a_command_fails_the_check(tmp_path):
    """The harness does catch a warning: a command that warns (and returns 0) fails it."""
    (tmp_path / "warning_probe.py").write_text(
        "import warnings\n\ndef cli_main(argv):\n    warnings.warn('probe')\n    return 0\n"
    )
    with pytest.raises(AssertionError, match="UserWarning: probe"):
        commands(tmp_path, ("warning_probe",))
