"""The typed Config and the library/command layering."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
from pathlib import Path

import pytest
import torch

from deeprec.config import Config, ConfigError, load_preset, presets
from deeprec.training import TrainingPlan
from deeprec.training import plan as decide_path

SRC = Path(__file__).resolve().parents[1] / "src" / "deeprec"


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


def test_the_shared_options_are_declared_once():
    """tune's data, split, seed and path flags are Config's own (same help, same parsing),
    and add_arguments(only=...) adds exactly those."""
    from deeprec.config import SHARED
    from deeprec.tune import build_parser

    ours = argparse.ArgumentParser()
    Config.add_arguments(ours, only=SHARED)
    flags = {a.dest: a for a in ours._actions}
    assert set(flags) - {"help"} == set(SHARED)
    tune = {a.dest: a for a in build_parser()._actions}
    for name in SHARED:
        assert tune[name].help == flags[name].help, name
        assert tune[name].type == flags[name].type, name
    args = build_parser().parse_args(["--split", "user-time", "--fused", "--val-frac", "0.3"])
    given = {k: v for k, v in Config.overrides(args).items() if k in SHARED}
    assert given == {"split": "user-time", "fused": True, "val_frac": 0.3}


def test_tune_applies_only_the_shared_options_to_its_base(tmp_path, monkeypatch):
    """tune's own --epochs (per trial) is not the base recipe's epochs."""
    from deeprec import tune
    from deeprec.quality import tuning

    seen = {}

    def stop(base, data_dir):
        seen["base"] = base
        raise SystemExit(0)

    monkeypatch.setattr(tuning, "nested_data", stop)
    args = tune.build_parser().parse_args(["--epochs", "3", "--seed", "5", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        tune.main(args)
    assert seen["base"].epochs == load_preset("seed").epochs and seen["base"].seed == 5


def test_training_plan_is_decided_from_the_config():
    cpu = torch.device("cpu")
    assert decide_path(Config(), cpu) == TrainingPlan("reference")
    assert decide_path(Config(fused=True), cpu) == TrainingPlan("sparse", sparse_grad=True)
    sigmoid = Config(fused=True, last_activation="sigmoid")
    assert decide_path(sigmoid, cpu) == TrainingPlan("fused", linear_output=False)
    assert decide_path(Config(last_activation="tanh"), cpu) == TrainingPlan(
        "reference", linear_output=False
    )
    assert decide_path(Config(fused=True, optimizer="sgd"), cpu) == TrainingPlan("sparse")
    lazy = decide_path(Config(fused=True, optimizer="sparse-adam"), cpu)
    assert lazy == TrainingPlan("sparse", sparse_grad=True, lazy=True)
    assert decide_path(Config(data_on_device="yes"), cpu).resident
    assert not decide_path(Config(), cpu).resident  # auto: resident on CUDA only
    with pytest.raises(ConfigError, match="sparse-adam needs --fused"):
        decide_path(Config(optimizer="sparse-adam"), cpu)
    with pytest.raises(ConfigError, match="--fused: "):
        decide_path(Config(fused=True), torch.device("meta"))


def _epoch_loops(path: Path) -> list[int]:
    """Lines of ``for ... in range(...)`` loops over something named like epochs."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.For)
            and isinstance(node.iter, ast.Call)
            and getattr(node.iter.func, "id", None) == "range"
            and "epoch" in ast.unparse(node.iter).lower()
        ):
            lines.append(node.lineno)
    return lines


def test_no_module_outside_the_training_wing_loops_over_epochs():
    wing = SRC / "training"
    found = {
        str(p.relative_to(SRC)): _epoch_loops(p)
        for p in SRC.rglob("*.py")
        if wing not in p.parents and _epoch_loops(p)
    }
    assert not found, f"epoch loops outside deeprec.training: {found}"
    assert _epoch_loops(wing / "loop.py"), "the scan finds the one loop it must allow"


def test_each_op_schema_is_defined_once_in_the_schema_module():
    """One place registers ops (the Op class of ops/schema.py: one Library, one define, a
    kernel per dispatch key, an autocast rule per device, one fake, one autograd), every
    deeprec:: op torch knows is one of its OPS, and no two OPS share a name."""
    registering = re.compile(
        r"custom_op\(|Library\(|\.define\(|\.impl\(|register_(fake|autograd|kernel)\("
    )
    calls = {
        str(p.relative_to(SRC)): len(registering.findall(p.read_text()))
        for p in SRC.rglob("*.py")
        if registering.search(p.read_text())
    }
    assert list(calls) == ["ops/schema.py"], calls
    # Library, define, 3 impl (device kernels, the default, autocast), fake, autograd
    assert calls["ops/schema.py"] == 7, calls
    import deeprec.ops  # noqa: F401 - every op module, so each has defined its ops
    from deeprec.ops import schema

    names = [op.name for op in schema.OPS]
    assert len(names) == len(set(names)) >= 8, names
    for name in names:  # each is registered, with the schema of its own run function
        assert hasattr(torch.ops.deeprec, name), name
    registered = {n for n in dir(torch.ops.deeprec) if not n.startswith("_")} - {"name"}
    assert registered <= set(names), registered - set(names)


def test_no_issue_tracker_references_in_code_or_tests():
    root = SRC.parents[1]
    suffixes = {".py", ".cpp", ".h", ".cu", ".cuh", ".sh", ".toml", ".txt"}
    ref = re.compile(r"(?<![\w&])#\d+\b|\bissue #?\d|\b[Ii]ssue\b(?! tracker)")
    hits = []
    for folder in ("src", "csrc", "benchmarks", "tests", "experiments"):
        for path in (root / folder).rglob("*"):
            if path.suffix not in suffixes or not path.is_file() or path == Path(__file__):
                continue
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if ref.search(line):
                    hits.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)
