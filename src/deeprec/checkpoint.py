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
import socket
import tempfile
import time
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
    prefix = f".{path.name}.{_host()}~{os.getpid()}."  # whose: a later run can tell it was left
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
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


def partial_writes(folder: Path) -> list[Path]:
    """The temp files atomic_write left in ``folder`` when its process was killed (SIGKILL,
    power loss: no Python cleanup ran): those of a dead process on this host, and those of
    another host or an older naming untouched for an hour (a live writer touches its file
    until it renames it)."""
    left = []
    for tmp in Path(folder).glob(".*.tmp"):
        host, pid = _writer_of(tmp.name)
        try:
            if host == _host() and pid is not None:
                if pid != os.getpid() and not _alive(pid):
                    left.append(tmp)
            elif time.time() - tmp.stat().st_mtime > 3600:
                left.append(tmp)
        except OSError:  # gone meanwhile
            continue
    return sorted(left)


def remove_partial_writes(folder: Path) -> list[tuple[str, int]]:
    """Remove partial_writes(folder); returns (name, bytes) of each removed."""
    removed = []
    for tmp in partial_writes(folder):
        try:
            size = tmp.stat().st_size
            tmp.unlink()
        except OSError:
            continue
        removed.append((tmp.name, size))
    return removed


def _host() -> str:
    """This host's name as a temp file's name carries it (no dots)."""
    return socket.gethostname().replace(".", "-").replace("~", "-") or "host"


def _writer_of(name: str) -> tuple[str | None, int | None]:
    """(host, pid) from a temp file's name ``.<file>.<host>~<pid>.<random>.tmp``."""
    for part in name.split("."):
        host, tilde, pid = part.rpartition("~")
        if tilde and pid.isdigit():
            return host, int(pid)
    return None, None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


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
