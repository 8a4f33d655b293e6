"""Differentiable ops, each with a pure-PyTorch reference and a fused version.

Each family's module (masked_mse.py, sparse_layers.py, row_adam.py, multinomial.py, named
as its kernel family in csrc/) holds its public ops and their definitions, made with
schema.py's Op: one validator, a kernel per device registered with torch's dispatcher,
fake and autograd. native.py launches the compiled kernels; sparse_torch.py is the sparse
layers' torch-op backend (backends.py says which runs where); device_checks.py checks
indices with torch ops for the paths that read them with torch ops; errors.py carries a
refused index to a one-line error; reference.py holds the pure-PyTorch definitions.

- masked_mse: MSE over the ratings stored in a CSR batch (dense predictions).
- sparse_linear: the input layer x @ W + b straight from a CSR batch.
- sparse_output_mse: the output layer + masked MSE evaluated only at stored ratings.
- row_adam_step: Adam for item-major parameters with row-sparse gradients.
- multinomial_nll: the output layer + softmax loss over every item, chunk by chunk
  (Mult-DAE / Mult-VAE), with no batch x items logits.

Every index is checked before it is read; on a GPU a refused one is raised at the next
``read_checked`` or ``raise_kernel_errors`` (the training loop reads the loss that way).
"""

from deeprec.csr import Batch, ColumnIndex, column_index
from deeprec.ops._native import unavailable_reason
from deeprec.ops.backends import BACKENDS
from deeprec.ops.errors import raise_kernel_errors, read_checked
from deeprec.ops.masked_mse import masked_mse
from deeprec.ops.multinomial import multinomial_nll, multinomial_nll_reference
from deeprec.ops.reference import (
    masked_mse_reference,
    row_adam_reference,
    sparse_linear_reference,
    sparse_output_mse_reference,
)
from deeprec.ops.row_adam import row_adam_step
from deeprec.ops.schema import choose_impl, fused_available
from deeprec.ops.sparse_layers import sparse_linear, sparse_output_mse

__all__ = [
    "BACKENDS",
    "Batch",
    "ColumnIndex",
    "choose_impl",
    "column_index",
    "fused_available",
    "masked_mse",
    "masked_mse_reference",
    "multinomial_nll",
    "multinomial_nll_reference",
    "raise_kernel_errors",
    "read_checked",
    "row_adam_reference",
    "row_adam_step",
    "sparse_linear",
    "sparse_linear_reference",
    "sparse_output_mse",
    "sparse_output_mse_reference",
    "unavailable_reason",
]
