"""The typed Config and the library/command layering (issue #11)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
from pathlib import Path

import pytest
import torch

from deeprec.config import Config, ConfigError, TrainingPath, decide_path, load_preset, presets

SRC = Path(__file__).resolve().parents[1] / "src" / "deeprec"
COMMANDS = ("train", "evaluate", "recommend", "info")


def test_defaults_are_the_seed_preset():
    assert load_preset("seed") == Config()


def test_every_preset_loads_and_round_trips():
    for name in presets():
        config = load_preset(name)
        assert Config.from_dict(config.to_dict()) == config


def test_from_dict_fills_options_added_later_and_refuses_unknown_or_mistyped_keys():
    old = Config().to_dict()
    for key in ("input_dropout", "residual", "lr_schedule", "refeed"):
        del old[key]
    assert Config.from_dict(old) == Config()
    with pytest.raises(ConfigError, match=r"src.json: unknown option.*bach_size"):
        Config.from_dict({"bach_size": 3}, "src.json")
    for key, bad in [("epochs", 2.5), ("epochs", True), ("lr", "fast"), ("hidden", [8, "x"]),
                     ("residual", 1), ("by", 3)]:  # fmt: skip
        with pytest.raises(ConfigError, match=f"{key} must be"):
            Config.from_dict({key: bad})


@pytest.mark.parametrize(
    "change, message",
    [
        ({"epochs": 0}, "--epochs must be >= 1"),
        ({"lr": float("nan")}, "--lr must be > 0"),
        ({"dropout": 1.0}, r"--dropout must be in \[0, 1\)"),
        ({"split": "sideways"}, "--split must be one of"),
        ({"hidden": [4, 0]}, "--hidden"),
    ],
)
def test_checks_name_the_option(change, message):
    with pytest.raises(ConfigError, match=message):
        Config().replace(**change)


def test_argparse_is_built_from_the_fields():
    parser = argparse.ArgumentParser()
    Config.add_arguments(parser)
    args = parser.parse_args(["--hidden", "8,4", "--residual", "--lr", "0.01", "--fused"])
    assert Config.overrides(args) == {"hidden": [8, 4], "residual": True, "lr": 0.01, "fused": True}
    assert Config.overrides(parser.parse_args([])) == {}
    flags = {a.dest for a in parser._actions} - {"help"}
    assert flags == {f.name for f in dataclasses.fields(Config)}


def test_training_path_is_decided_from_the_config():
    cpu = torch.device("cpu")
    assert decide_path(Config(), cpu) == TrainingPath("reference")
    assert decide_path(Config(fused=True), cpu) == TrainingPath("sparse", sparse_grad=True)
    assert decide_path(Config(fused=True, last_activation="sigmoid"), cpu) == TrainingPath("fused")
    assert decide_path(Config(fused=True, optimizer="sgd"), cpu) == TrainingPath("sparse")
    lazy = decide_path(Config(fused=True, optimizer="sparse-adam"), cpu)
    assert lazy == TrainingPath("sparse", sparse_grad=True, lazy=True)
    with pytest.raises(ConfigError, match="sparse-adam needs --fused"):
        decide_path(Config(optimizer="sparse-adam"), cpu)
    with pytest.raises(ConfigError, match="--fused: "):
        decide_path(Config(fused=True), torch.device("meta"))


def _deeprec_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deeprec"):
            names |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("deeprec")}
    return names


def test_no_command_imports_another_and_nothing_outside_imports_a_command():
    commands = {f"deeprec.{c}" for c in COMMANDS}
    importers = [SRC / f"{c}.py" for c in COMMANDS]
    library = [p for p in SRC.rglob("*.py") if p.stem not in COMMANDS or p.parent != SRC]
    root = SRC.parents[1]
    outside = [*root.glob("benchmarks/*.py"), *root.glob("experiments/*.py")]
    for path in [*importers, *library, *outside]:
        own = f"deeprec.{path.stem}"
        bad = {n for n in _deeprec_imports(path) if n in commands and n != own}
        assert not bad, f"{path.relative_to(root)} imports the command module(s) {sorted(bad)}"
