"""The sha256 of a file, read in blocks: pinned datasets, and ONNX models and their sidecars.

Torch-free (serving imports it without torch).
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
