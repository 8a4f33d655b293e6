"""deeprec: deep autoencoder recommender for explicit ratings with fused native kernels.

Data flows one way: ratings file -> validated DataFrame -> split -> RatingMatrix
(CSR + id maps) -> CSR batches -> AutoEncoder -> ops (masked MSE) -> optimizer.
"""

import os
import signal
import sys

# SIGINTs received while a command started (set only when run as ``python -m deeprec.X``).
_SIGINTS: list[int] = []


def interrupted_while_starting() -> bool:
    """Whether a Ctrl-C reached this command before its own handling was set up (an import
    that swallows the KeyboardInterrupt would otherwise let the command run on)."""
    return bool(_SIGINTS)


def _interrupted_while_starting(hook):
    """sys.excepthook for a command: a Ctrl-C before the command's own handling is set up
    (while torch and the rest import) ends with one line, not a traceback. An interrupt can
    surface as another error (an extension module cut off in its import then fails to load
    again: ImportError), so any uncaught error after a SIGINT counts."""

    def on_sigint(signum, frame):
        _SIGINTS.append(signum)
        raise KeyboardInterrupt

    def excepthook(kind, value, tb):
        if _SIGINTS or issubclass(kind, KeyboardInterrupt):
            print("deeprec: interrupted while starting; nothing was written", file=sys.stderr)
            sys.stderr.flush()
            os._exit(130)  # the shell's code for an interrupt, whatever error it surfaced as
        hook(kind, value, tb)

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_sigint)
    return excepthook


# ``python -m deeprec.<command>`` imports this package first, with sys.argv[0] == "-m" while
# it locates the module: only then (a command, not a library import) is the hook set. It is set
# before any other import here, so the only start an interrupt escapes is the interpreter's own.
if sys.argv[:1] == ["-m"]:
    sys.excepthook = _interrupted_while_starting(sys.excepthook)

from importlib.metadata import PackageNotFoundError, version  # noqa: E402

try:
    __version__ = version("deeprec")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# The API's main names, forwarded on first use (PEP 562) so ``import deeprec`` stays light and
# imports nothing above the ground floor until one is asked for (tests/test_layering.py).
FORWARDED = ("Recommender", "load_ratings", "Config", "DeeprecError", "DataError", "ConfigError",
             "CheckpointError", "presets", "load_preset")  # fmt: skip

__all__ = ["__version__", *FORWARDED]


def __getattr__(name: str):
    if name in FORWARDED:
        import importlib

        return getattr(importlib.import_module("deeprec.api"), name)
    raise AttributeError(f"module 'deeprec' has no attribute {name!r}")
