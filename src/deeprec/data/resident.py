"""The training matrix kept on the accelerator, with batches gathered there.

On CUDA a batch built on the host costs a host-to-device copy of its CSR every step, and
its column index a round trip. A ResidentMatrix copies the training CSR to the device
once; each batch is then gathered on the device from the rows' offsets, and its column
index is built on the device too. The sizes that shape them (the batch's rating count
and distinct columns) come from the host copy of the matrix, so a batch reads nothing
back from the device. The batch order is the host path's (RatingMatrix.batches), so both
give the same batches; the CPU runs the same code in the tests.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from deeprec.csr import Batch, entry_rows
from deeprec.data.matrix import RatingMatrix, batch_rows


class ResidentMatrix:
    """RatingMatrix's batches, from a copy of its training CSR on ``device``."""

    def __init__(self, matrix: RatingMatrix, device: torch.device | str) -> None:
        self.matrix = matrix
        self.device = torch.device(device)
        train = matrix.train
        self.indptr = _to_device(train.indptr.astype(np.int64), self.device)
        self.indices = _to_device(train.indices.astype(np.int64), self.device)
        self.data = _to_device(np.asarray(train.data, dtype=np.float32), self.device)

    @property
    def n_rows(self) -> int:
        return self.matrix.n_rows

    @property
    def n_cols(self) -> int:
        return self.matrix.n_cols

    def batch(self, rows: torch.Tensor, nnz: int, n_unique: int) -> Batch:
        """Rows ``rows`` (an int64 tensor on the device) as a CSR batch of ``nnz`` ratings
        over ``n_unique`` distinct columns (RatingMatrix.batch_sizes of the same rows).

        Gathered with no host sync; positions are clamped into the stored arrays, so even
        edited offsets cannot read outside them.
        """
        start = self.indptr[rows]
        length = self.indptr[rows + 1] - start
        crow = torch.zeros(rows.numel() + 1, dtype=torch.int64, device=self.device)
        torch.cumsum(length, 0, out=crow[1:])
        entry_row = entry_rows(crow, nnz)
        pos = start[entry_row] + torch.arange(nnz, device=self.device) - crow[entry_row]
        pos.clamp_(0, max(self.indices.numel() - 1, 0))
        return Batch(crow, self.indices[pos], self.data[pos], self.n_cols, n_unique, rows)

    def batches(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        *,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        rows: np.ndarray | None = None,
        max_batches: int = 0,
        part: tuple[int, int] = (0, 1),
    ) -> Iterator[Batch]:
        """As RatingMatrix.batches (same order for the same generator), built on the device.

        The epoch's row order is copied to the device once (an epoch's one host-to-device
        copy); ``device`` must be this matrix's, if given."""
        if device is not None and torch.device(device) != self.device:
            raise ValueError(f"batches on {device} from a matrix resident on {self.device}")
        chunks = list(
            batch_rows(self.n_rows, batch_size, shuffle, generator, rows, max_batches, part)
        )
        if not chunks:
            return
        order = _to_device(np.concatenate(chunks).astype(np.int64), self.device)
        start = 0
        for chunk in chunks:
            sizes = self.matrix.batch_sizes(chunk)
            yield self.batch(order[start : start + len(chunk)], *sizes)
            start += len(chunk)


def _to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A private device copy of a host array (never a view of it, and writable)."""
    return torch.tensor(a, device=device)
