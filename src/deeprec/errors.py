"""The errors deeprec reports as one line, in one torch-free module.

Commands catch these (deeprec.cli) and print ``prog: error: ...`` with exit code 2 (bad
input) or 1 (a failed torchrun peer). They live here, importing nothing heavy, so a command
that needs no torch (``recommend --onnx``) never loads it; each is re-exported by the
module that raises it (deeprec.data.DataError, deeprec.config.ConfigError, ...).
"""

from __future__ import annotations


class DataError(ValueError):
    """A ratings/titles file or dataset request that cannot be used, as one line."""


class ConfigError(ValueError):
    """An option value that cannot be used, as one line naming the option."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, as one line naming the file."""


class PeerError(RuntimeError):
    """A collective failed: another rank died, or did not answer within the timeout."""
