"""The package's floors, checked on its source: every import points down (or stays on its
floor), commands are leaves, and the training path is chosen in one place.

The floors, lowest first, are the data flow of docs/design.md's layout:
ground -> config -> data -> ops -> models and scoring -> training -> inference ->
workflows -> api -> commands. The commands stand on the API alone (and the ground floor).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "deeprec"
ROOT = SRC.parents[1]
COMMANDS = ("train", "evaluate", "recommend", "info", "tune", "blend", "export")

# Each floor: the modules or packages on it (a package holds its submodules).
FLOORS: list[tuple[str, set[str]]] = [
    (
        "ground",
        {
            "deeprec",
            "deeprec.choices",
            "deeprec.errors",
            "deeprec.digest",
            "deeprec.memory",
            "deeprec.top_items",
            "deeprec.csr",
            "deeprec.checkpoint",
            "deeprec.distributed",
            "deeprec.bundled",
            "deeprec.presets",
        },
    ),
    ("config", {"deeprec.config", "deeprec.tensorboard_log"}),
    ("data", {"deeprec.data"}),
    ("ops", {"deeprec.ops", "deeprec.environment", "deeprec.precision"}),
    (
        "models and scoring",
        {"deeprec.model", "deeprec.recvae", "deeprec.models", "deeprec.scoring"},
    ),
    ("training", {"deeprec.training"}),
    ("inference", {"deeprec.inference"}),
    ("workflows", {"deeprec.quality"}),
    ("api", {"deeprec.api"}),
    ("commands", {"deeprec.cli", *(f"deeprec.{c}" for c in COMMANDS)}),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


def _deeprec_imports(path: Path) -> set[str]:
    """The deeprec modules ``path`` imports, anywhere in it (a function's deferred import
    counts): ``from deeprec.x import y`` counts as deeprec.x.y when that is a module."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deeprec"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                names.add(full if full in MODULES else node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("deeprec")}
    return names


def _floor(module: str) -> int:
    """The floor ``module`` stands on: that of the longest entry naming it or a package
    above it."""
    best, floor = -1, -1
    for i, (_, members) in enumerate(FLOORS):
        for m in members:
            if (module == m or module.startswith(m + ".")) and len(m) > best:
                best, floor = len(m), i
    return floor


def test_every_module_stands_on_a_floor():
    lost = sorted(m for m in MODULES if _floor(m) < 0)
    assert not lost, f"modules on no floor (add them to FLOORS): {lost}"


def test_floor_lookup_takes_the_longest_match():
    assert FLOORS[_floor("deeprec.scoring.ease")][0] == "models and scoring"
    assert FLOORS[_floor("deeprec")][0] == "ground"
    assert FLOORS[_floor("deeprec.training.lifecycle")][0] == "training"


def back_arrows() -> list[str]:
    """Every import from a lower floor up to a higher one, as 'a (floor) -> b (floor)'."""
    found = []
    for name, path in sorted(MODULES.items()):
        mine = _floor(name)
        for target in sorted(_deeprec_imports(path)):
            theirs = _floor(target)
            if theirs > mine:
                found.append(f"{name} ({FLOORS[mine][0]}) -> {target} ({FLOORS[theirs][0]})")
    return found


def test_every_import_points_down():
    arrows = back_arrows()
    assert not arrows, "imports up a floor:\n" + "\n".join(arrows)


def test_the_training_wing_imports_in_its_order():
    order = ["plan", "optim", "assembly", "loop", "run_folder", "lifecycle"]
    for i, stem in enumerate(order):
        imported = {m.rsplit(".", 1)[1] for m in _deeprec_imports(SRC / "training" / f"{stem}.py")
                    if m.startswith("deeprec.training.")}  # fmt: skip
        later = imported & set(order[i:])
        assert not later, f"training/{stem}.py imports {sorted(later)}, not before it"
    assert {p.stem for p in (SRC / "training").glob("*.py")} == {*order, "__init__"}


def test_the_back_arrow_scan_sees_an_upward_import(tmp_path, monkeypatch):
    """The scan is not vacuous: a ground-floor module importing training is reported."""
    fake = SRC / "errors.py"
    text = fake.read_text() + "\nfrom deeprec.training import plan\n"
    probe = tmp_path / "errors.py"
    probe.write_text(text)
    monkeypatch.setitem(MODULES, "deeprec.errors", probe)
    assert any(a.startswith("deeprec.errors (ground) -> deeprec.training") for a in back_arrows())


def test_no_command_imports_another_and_nothing_outside_imports_a_command():
    commands = {f"deeprec.{c}" for c in COMMANDS}
    outside = [*ROOT.glob("benchmarks/*.py"), *ROOT.glob("experiments/*.py")]
    for path in [*MODULES.values(), *outside]:
        own = _module_name(path) if SRC in path.parents else None
        bad = {n for n in _deeprec_imports(path) if n in commands and n != own}
        assert not bad, f"{path.relative_to(ROOT)} imports the command module(s) {sorted(bad)}"


def test_commands_stand_on_the_api_and_the_ground_floor_only():
    """train is fit + save, recommend is load + recommend, ...: every command reaches the
    library through deeprec.api, nothing else above the ground floor."""
    allowed = {"ground", "api"}
    commands = {f"deeprec.{c}" for c in COMMANDS} | {"deeprec.cli"}
    found = [
        f"{name} -> {target} ({FLOORS[_floor(target)][0]})"
        for name in sorted(commands)
        for target in sorted(_deeprec_imports(MODULES[name]))
        if FLOORS[_floor(target)][0] not in allowed and target not in commands
    ]
    assert not found, "commands importing past the API:\n" + "\n".join(found)


def test_the_command_rule_sees_a_command_reaching_past_the_api(tmp_path, monkeypatch):
    probe = tmp_path / "train.py"
    probe.write_text(MODULES["deeprec.train"].read_text() + "\nfrom deeprec.training import fit\n")
    monkeypatch.setitem(MODULES, "deeprec.train", probe)
    with pytest.raises(AssertionError, match=r"deeprec\.train -> deeprec\.training"):
        test_commands_stand_on_the_api_and_the_ground_floor_only()


def test_the_package_forwards_only_the_api_and_lazily():
    """``deeprec.Recommender`` works after ``import deeprec``, and importing deeprec imports
    nothing above the ground floor (the names resolve from deeprec.api on first use)."""
    import deeprec

    assert set(deeprec.FORWARDED) <= set(__import__("deeprec.api").api.EXPORTS)
    code = (
        "import sys, deeprec; assert 'deeprec.api' not in sys.modules; "
        "assert 'torch' not in sys.modules; r = deeprec.Recommender; "
        "assert r.__module__ == 'deeprec.api.recommender'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_config_stands_on_the_ground_floor_only():
    ground = {"deeprec.choices", "deeprec.errors"}
    above = _deeprec_imports(SRC / "config.py") - ground
    assert not above, f"deeprec.config imports {sorted(above)}, above the ground floor"
    for name in ground:  # and those two import no deeprec module at all
        path = MODULES[name]
        assert not _deeprec_imports(path), f"{name} imports {_deeprec_imports(path)}"


# ------------------------------------------------------- the training path, decided once
# Modules allowed to ask what the plan asks: the plan itself; the ops, whose public
# functions resolve impl="auto" for a caller outside the package; and environment, which
# reports whether the kernels run (``python -m deeprec.info``) and decides nothing.
DECIDERS = {"deeprec.training.plan"}
EXEMPT_PACKAGES = ("deeprec.ops",)
REPORTERS = {"deeprec.environment"}
ASKS_KERNELS = {"unavailable_reason", "fused_available", "choose_impl"}


def path_decisions(name: str, path: Path) -> list[str]:
    """Where ``path`` decides the training path itself: asks whether the kernels run, reads
    --fused, gives impl a default, passes a literal impl, or asks a model for its path."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ASKS_KERNELS and name not in REPORTERS:
                found.append(f"{where} calls {called}")
            for kw in node.keywords:
                if kw.arg == "impl" and isinstance(kw.value, ast.Constant):
                    found.append(f"{where} passes impl={kw.value.value!r}")
        elif isinstance(node, ast.Attribute) and node.attr in ("fused", "supports_sparse"):
            found.append(f"{where} reads .{node.attr}")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            a = node.args
            positional = [*a.posonlyargs, *a.args]
            with_default = positional[len(positional) - len(a.defaults) :]
            with_default += [k for k, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d]
            if any(arg.arg == "impl" for arg in with_default):
                found.append(f"{where} {node.name}() gives impl a default")
    return found


def test_the_training_path_is_chosen_only_in_the_plan():
    found = []
    for name, path in sorted(MODULES.items()):
        if name in DECIDERS | {"deeprec.config"} or name.startswith(EXEMPT_PACKAGES):
            continue
        found += path_decisions(name, path)
    assert not found, "the path decided outside training/plan.py:\n" + "\n".join(found)
    assert path_decisions("deeprec.training.plan", MODULES["deeprec.training.plan"])


def test_the_decision_scan_sees_each_kind_of_decision(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def f(model, config, impl='auto'):\n"
        "    unavailable_reason('cpu')\n"
        "    g(impl='fused')\n"
        "    return config.fused, model.supports_sparse\n"
    )
    text = "\n".join(path_decisions("deeprec.probe", probe))
    for what in ("gives impl a default", "calls unavailable_reason", "impl='fused'", ".fused"):
        assert what in text, (what, text)
    assert ".supports_sparse" in text


# ------------------------------------------------------- from a launch name to its file
CSRC = ROOT / "csrc"


def _launch_names() -> dict[str, str]:
    """Every kernel name the ops launch, '<family>.<kernel>', with where it is launched:
    kernels.launch("<family>.<kernel>", ...), and the multinomial epilogue's
    _epilogue(kernels, "<kernel>", ...)."""
    found = {}
    for path in sorted((SRC / "ops").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            strings = [a.value for a in node.args
                       if isinstance(a, ast.Constant) and isinstance(a.value, str)]  # fmt: skip
            if not strings:
                continue
            where = f"ops/{path.name}:{node.lineno}"
            if called == "launch":
                found[strings[0]] = where
            elif called == "_epilogue":
                found[f"multinomial.{strings[0]}"] = where
    return found


def test_every_launch_name_is_its_kernel_file():
    names = _launch_names()
    assert len(names) >= 7, names  # masked_mse, the sparse layers' three, row_adam, two epilogues
    for name, where in names.items():
        family, _, kernel = name.partition(".")
        assert family and kernel, f"{where}: launch name {name!r} is not <family>.<kernel>"
        for device, ext in (("cpu", "cpp"), ("cuda", "cu")):
            source = CSRC / family / f"{device}.{ext}"
            assert source.exists(), f"{where}: {name} -> {source.relative_to(ROOT)} is missing"
            assert f"int {kernel}_{device}(" in source.read_text(), (
                f"{where}: {name} is not defined in {source.relative_to(ROOT)}"
            )


def test_every_bound_kernel_is_launched_under_its_family():
    """Every entry point deeprec._C binds is reached by one launch name, so no kernel is
    launched under a name that leads elsewhere (or bound and never launched)."""
    from deeprec.ops import _native

    C = _native.module()
    assert C is not None, "deeprec._C is not built (pip install .)"
    bound = {e.rsplit("_", 1)[0] for e in C.KERNEL_ARGS}
    launched = {name.partition(".")[2] for name in _launch_names()}
    assert bound == launched, (sorted(bound - launched), sorted(launched - bound))
