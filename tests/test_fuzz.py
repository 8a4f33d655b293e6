"""Malformed input never crashes the process: the fuzzer runs in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("native_required")


def test_native_ops_survive_malformed_csr_fuzzing():
    script = Path(__file__).with_name("fuzz_native.py")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    r = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=env
    )
    assert r.returncode == 0 and "FUZZ-OK" in r.stdout, (
        f"fuzzer exited {r.returncode} (negative = killed by a signal)\n{r.stdout[-2000:]}\n"
        f"{r.stderr[-4000:]}"
    )
