"""The errors deeprec reports as one line, in one torch-free module.

Commands catch these (deeprec.cli) and print ``prog: error: ...`` with exit code 2 (bad
input) or 1 (a failed torchrun peer). They live here, importing nothing heavy, so a command
that needs no torch (``recommend --onnx``) never loads it; each is re-exported by the
module that raises it (deeprec.data.DataError, deeprec.config.ConfigError, ...).
"""

from __future__ import annotations

from pathlib import Path


class DeeprecError(ValueError):
    """Bad input to deeprec, as one line naming what and where: the one type to catch
    (each kind below is one)."""


class DataError(DeeprecError):
    """A ratings/titles file, ratings handed over in memory, or a dataset request that
    cannot be used, as one line."""


class PrecisionWarning(UserWarning):
    """A precision that runs but was measured to cost more than it gives here."""


class ConfigError(DeeprecError):
    """An option value that cannot be used, as one line naming the option."""


class CheckpointError(DeeprecError):
    """A checkpoint that cannot be used, as one line naming the file."""


class PeerError(RuntimeError):
    """A collective failed: another rank died, or did not answer within the timeout."""


def read_bytes(path: str | Path, error: type[ValueError], where: str, size: int = -1) -> bytes:
    """A file's bytes (the first ``size``, or all), or ``error`` as one line naming
    ``where``: the file is missing, or cannot be read (a folder, no permission, I/O)."""
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except FileNotFoundError:
        raise error(f"{where}: file not found") from None
    except OSError as exc:
        raise error(f"{where}: cannot read ({exc.strerror})") from None
