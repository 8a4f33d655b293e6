"""A ratings file that states no scale: --scale gives it; otherwise it is the ratings' range,
said at the start, and refused in one line where a rare far value would widen it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deeprec.config import Config, ConfigError, load_config_file, toml_text
from deeprec.train import cli_main as train_main

FAST = ["--epochs", "1", "--hidden", "8", "--quiet"]


def bare_csv(path, outlier=None, n=2000, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"userId": rng.integers(1, 50, n), "movieId": rng.integers(1, 200, n),
                       "rating": rng.integers(1, 11, n) / 2,
                       "timestamp": rng.integers(10**9, 11 * 10**8, n)})  # fmt: skip
    df = df.drop_duplicates(["userId", "movieId"]).reset_index(drop=True)
    if outlier is not None:
        df.loc[5, "rating"] = outlier
    df.to_csv(path, index=False)
    return path


FAR = [(7.5, "7.5 lies far outside the others (0.5 to 5)"),
       (-3.0, "-3 lies far outside the others (0.5 to 5)")]  # fmt: skip


@pytest.mark.parametrize("outlier, line", FAR)
def test_a_rare_far_rating_in_a_bare_file_is_refused_naming_its_line(tmp_path, capsys, outlier,
                                                                     line):  # fmt: skip
    f = bare_csv(tmp_path / "r.csv", outlier)
    assert train_main(["--data", str(f), "--out", str(tmp_path / "run"), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"r.csv:7: rating {line}" in err[0], err
    assert "--scale" in err[0]
    assert not (tmp_path / "run").exists()


def test_a_stated_scale_admits_it_and_refuses_what_lies_outside(tmp_path, capsys):
    f = bare_csv(tmp_path / "r.csv", 7.5)
    assert train_main(["--data", str(f), "--scale", "0.5,7.5", "--out", str(tmp_path / "a"),
                       *FAST]) == 0  # fmt: skip
    assert "rating scale" not in capsys.readouterr().out  # stated, not inferred
    assert train_main(["--data", str(f), "--scale", "1,5", "--out", str(tmp_path / "b"),
                       *FAST]) == 2  # fmt: skip
    assert "is outside the scale [1, 5]" in capsys.readouterr().err


def test_an_unstated_scale_is_said_when_training_starts(tmp_path, capsys):
    f = bare_csv(tmp_path / "r.csv")
    assert train_main(["--data", str(f), "--out", str(tmp_path / "run"), *FAST]) == 0
    assert "rating scale 0.5 to 5: the range of the file's ratings" in capsys.readouterr().out


@pytest.mark.parametrize("given", ["5,1", "1", "1,2,3", "a,b", "1,inf"])
def test_a_bad_scale_flag_is_one_line(tmp_path, capsys, given):
    with pytest.raises(SystemExit) as stop:  # argparse's exit
        train_main([f"--scale={given}", "--out", str(tmp_path / "run"), *FAST])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--scale" in err[0], err


def test_the_scale_round_trips_through_a_config_file(tmp_path):
    config = Config(scale=[1.0, 10.0])
    (tmp_path / "c.toml").write_text(toml_text(config))
    assert load_config_file(tmp_path / "c.toml").scale == [1.0, 10.0]
    with pytest.raises(ConfigError, match="--scale must be LO,HI"):
        Config.from_dict({"scale": [5, 1]})
