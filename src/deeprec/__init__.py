"""deeprec: deep autoencoder recommender for explicit ratings with fused native kernels.

Data flows one way: ratings file -> validated DataFrame -> split -> RatingMatrix
(CSR + id maps) -> CSR batches -> AutoEncoder -> ops (masked MSE) -> optimizer.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("deeprec")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
