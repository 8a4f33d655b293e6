"""Malformed input never crashes the process: the fuzzer runs in a subprocess.

Under the CI sanitizer step the subprocess inherits ASan/UBSan (LD_PRELOAD), so the raw
ops, wrappers and row Adam are fuzzed under the sanitizers too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("native_required")

# Where a sanitizer's or Python's own report begins: its first lines name the fault.
REPORT_START = re.compile(r"runtime error:|ERROR: AddressSanitizer|Traceback|Fatal Python error")


def first_report(stderr: str, width: int = 4000) -> str:
    """The start of the first report in stderr (its stack's innermost frames), else the tail."""
    m = REPORT_START.search(stderr)
    return stderr[m.start() : m.start() + width] if m else stderr[-width:]


def test_native_ops_survive_malformed_csr_fuzzing():
    script = Path(__file__).with_name("fuzz_native.py")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    r = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=env
    )
    assert r.returncode == 0 and "FUZZ-OK" in r.stdout, (
        f"fuzzer exited {r.returncode} (negative = killed by a signal)\n{r.stdout[-2000:]}\n"
        f"{first_report(r.stderr)}"
    )
    # The run must have exercised every outcome, or it proves nothing.
    counts = dict(re.findall(r"(valid|refused|accepted)=(\d+)", r.stdout))
    assert int(counts["valid"]) > 500 and int(counts["refused"]) > 500, counts
    assert int(counts["accepted"]) > 100, counts
