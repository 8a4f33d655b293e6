"""Every public op, every tensor argument, made wrong in every way (None, dtype, device,
shape; the cases: tests/bad_arguments.py): a one-line TypeError or ValueError naming the
argument, never a crash, never a silent result. Each call is isolated from the others'
crashes: the cases run in worker processes, a new one after any that dies.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("native_required")

WORKER = Path(__file__).with_name("bad_arguments.py")
sys.path.insert(0, str(WORKER.parent))
from bad_arguments import NAMES, cases  # noqa: E402

ERRORS = ("TypeError", "ValueError")


def sweep(plant: str = "") -> dict[int, dict]:
    """Every case's outcome, by case number; a case that killed its worker is recorded as
    {"outcome": "crashed", "code": <exit code>} and the sweep goes on after it."""
    total, results, start = len(cases()), {}, 0
    while start < total:
        cmd = [sys.executable, str(WORKER), "--from", str(start)]
        if plant:
            cmd += ["--plant", plant]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=WORKER.parent)
        started = None
        for line in r.stdout.splitlines():
            kind, k, rest = line.split(" ", 2)
            if kind == "CASE":
                started = int(k)
            elif kind == "DONE":
                results[int(k)] = json.loads(rest)
        if started is None or started in results:  # ran to the end, or died between cases
            assert r.returncode == 0, f"worker exited {r.returncode}: {r.stderr[-2000:]}"
            break
        results[started] = {"outcome": "crashed", "code": r.returncode, "err": r.stderr[-500:]}
        start = started + 1
    return results


def verdicts(results: dict[int, dict]) -> list[str]:
    """Every case whose outcome breaks the contract, as one line each."""
    bad = []
    for k, case in enumerate(cases()):
        got = results.get(k, {"outcome": "never ran"})
        valid = case.wrong == "None" and case.arg in case.op.optional
        if valid:
            if got["outcome"] != "ok":
                bad.append(f"{case.name}: a valid call failed: {got}")
            continue
        if got["outcome"] != "raised":
            bad.append(f"{case.name}: {got['outcome']} (a one-line error was due)")
            continue
        message = got["message"]
        names = (case.arg, *NAMES.get(case.arg, ()))
        if got["type"] not in ERRORS:
            bad.append(f"{case.name}: {got['type']}: {message}")
        elif "\n" in message:
            bad.append(f"{case.name}: a message of several lines: {message!r}")
        elif not any(name in message for name in names):
            bad.append(f"{case.name}: the message names no {names}: {message}")
    return bad


def test_every_wrong_argument_gets_a_one_line_error_naming_it():
    results = sweep()
    assert len(results) == len(cases()) >= 300
    bad = verdicts(results)
    assert not bad, f"{len(bad)} of {len(results)} cases:\n" + "\n".join(bad)


def test_the_sweep_fails_on_a_planted_defect():
    """The output op's validator made to skip its bias (how a None bias reached the native
    kernel and segfaulted): the sweep names the bias cases it lets through."""
    bad = verdicts(sweep(plant="unchecked-bias"))
    assert bad and all("out_bias" in line for line in bad), bad
    assert any("sparse_output_mse [fused/native] out_bias=shape" in line for line in bad), bad
