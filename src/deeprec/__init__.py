"""deeprec: deep autoencoder recommender for explicit ratings with fused native kernels.

Data flows one way: ratings file -> validated DataFrame -> split -> RatingMatrix
(CSR + id maps) -> CSR batches -> AutoEncoder -> ops (masked MSE) -> optimizer.
"""

import sys
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("deeprec")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]


def _interrupted_while_starting(hook):
    """sys.excepthook for a command: a Ctrl-C before the command's own handling is set up
    (while torch and the rest import) ends with one line, not a traceback."""

    def excepthook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            print("deeprec: interrupted while starting; nothing was written", file=sys.stderr)
            return
        hook(kind, value, tb)

    return excepthook


# ``python -m deeprec.<command>`` imports this package first, with sys.argv[0] == "-m" while
# it locates the module: only then (a command, not a library import) is the hook set.
if sys.argv[:1] == ["-m"]:
    sys.excepthook = _interrupted_while_starting(sys.excepthook)
