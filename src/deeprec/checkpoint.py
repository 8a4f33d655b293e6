"""Checkpoints: saved atomically, loaded only with ``torch.load(weights_only=True)``.

A checkpoint holds plain data only (tensors, numbers, strings, lists, dicts): the
model's state_dict and config, the training config, optimizer and RNG states, the
metrics history, the id maps and a fingerprint of the training data. A file that
needs arbitrary unpickling is refused, never executed.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from deeprec.errors import CheckpointError

FORMAT = "deeprec-checkpoint"
VERSION = 1


def atomic_write(path: Path, write: Any) -> None:
    """Call write(file) on a temp file beside ``path``, fsync it, then rename over ``path``.

    A crash or Ctrl-C at any point leaves either the old file or the new one, whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(path: Path, payload: dict[str, Any]) -> None:
    """Save ``payload`` (plain data) as a checkpoint, atomically."""
    payload = {"format": FORMAT, "version": VERSION, **payload}
    atomic_write(Path(path), lambda f: torch.save(payload, f))


def load(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; CheckpointError with the reason if it is unusable."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):  # every torch.save since 1.6 writes a zip container
        raise CheckpointError(f"{path}: not a readable checkpoint (not a torch zip file)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"it would import {found.group(1)}" if found else "it holds more than plain data"
        raise CheckpointError(
            f"{path}: refused to load: {what} (only weights_only=True checkpoints are accepted)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a deeprec checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {payload.get('version')} is not supported "
            f"(this deeprec reads version {VERSION})"
        )
    for key in ("model_config", "state_dict", "config", "data"):
        if key not in payload:
            raise CheckpointError(f"{path}: incomplete checkpoint (no {key!r})")
    return payload
