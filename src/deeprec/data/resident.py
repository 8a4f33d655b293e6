"""The training matrix kept on the accelerator, with batches gathered there.

On CUDA a batch built on the host costs a host-to-device copy of its CSR every step, and
its column index a round trip. A ResidentMatrix copies the training CSR to the device
once; each batch is then gathered on the device from the rows' offsets (one scalar, the
batch's rating count, comes back to size the gather), and its column index is built on
the device too. The batch order is the host path's (RatingMatrix.batches), so both give
the same batches; the CPU runs the same code in the tests.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from deeprec.csr import ColumnIndex, CSRParts, remember_index
from deeprec.data.matrix import Batch, RatingMatrix, batch_rows, remember


class ResidentMatrix:
    """RatingMatrix's batches, from a copy of its training CSR on ``device``."""

    def __init__(self, matrix: RatingMatrix, device: torch.device | str) -> None:
        self.matrix = matrix
        self.device = torch.device(device)
        train = matrix.train
        self.indptr = torch.from_numpy(train.indptr.astype(np.int64)).to(self.device)
        self.indices = torch.from_numpy(train.indices.astype(np.int64)).to(self.device)
        self.data = torch.from_numpy(np.asarray(train.data, dtype=np.float32)).to(self.device)

    @property
    def n_rows(self) -> int:
        return self.matrix.n_rows

    @property
    def n_cols(self) -> int:
        return self.matrix.n_cols

    def batch(self, rows: torch.Tensor) -> Batch:
        """Rows ``rows`` (an int64 tensor on the device) as a CSR batch, with its index."""
        start = self.indptr[rows]
        length = self.indptr[rows + 1] - start
        crow = torch.zeros(rows.numel() + 1, dtype=torch.int64, device=self.device)
        torch.cumsum(length, 0, out=crow[1:])
        nnz = int(crow[-1])  # the one value that comes back: it sizes the gather
        entry_row = torch.repeat_interleave(
            torch.arange(rows.numel(), device=self.device), length, output_size=nnz
        )
        pos = start[entry_row] + torch.arange(nnz, device=self.device) - crow[entry_row]
        col = self.indices[pos]
        batch = remember(Batch(rows, crow, col, self.data[pos], self.n_cols))
        index = device_column_index(col, entry_row)
        remember_index(index, CSRParts(crow, col, batch.val), self.n_cols)
        batch.index = index
        return batch

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

        The epoch's row order is copied to the device once; ``device`` must be this
        matrix's, if given."""
        if device is not None and torch.device(device) != self.device:
            raise ValueError(f"batches on {device} from a matrix resident on {self.device}")
        chunks = list(
            batch_rows(self.n_rows, batch_size, shuffle, generator, rows, max_batches, part)
        )
        if not chunks:
            return
        order = torch.from_numpy(np.concatenate(chunks).astype(np.int64)).to(self.device)
        start = 0
        for chunk in chunks:
            yield self.batch(order[start : start + len(chunk)])
            start += len(chunk)


def device_column_index(col: torch.Tensor, entry_row: torch.Tensor) -> ColumnIndex:
    """csr.column_index_numpy's (perm, ucol, uptr, rows), computed where ``col`` lives.

    The stable sort by column keeps each column's entries in row order, as the host
    version's does, so both give the identical index."""
    perm = torch.sort(col, stable=True).indices
    ucol, counts = torch.unique_consecutive(col[perm], return_counts=True)
    uptr = torch.zeros(ucol.numel() + 1, dtype=torch.int64, device=col.device)
    torch.cumsum(counts, 0, out=uptr[1:])
    return ColumnIndex(perm, ucol, uptr, entry_row)
