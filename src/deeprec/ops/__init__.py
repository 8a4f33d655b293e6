"""Differentiable ops, each with a pure-PyTorch reference and a fused native version.

- masked_mse: MSE over the ratings stored in a CSR batch (dense predictions).
- sparse_linear: the input layer x @ W + b straight from a CSR batch.
- sparse_output_mse: the output layer + masked MSE evaluated only at stored ratings.
- row_adam_step: Adam for item-major parameters with row-sparse gradients.
"""

from deeprec.csr import ColumnIndex, column_index, column_index_numpy
from deeprec.ops.launch import choose_impl, fused_available
from deeprec.ops.loss import masked_mse, masked_mse_reference
from deeprec.ops.row_adam import row_adam_reference, row_adam_step
from deeprec.ops.sparse import (
    sparse_linear,
    sparse_linear_reference,
    sparse_output_mse,
    sparse_output_mse_reference,
)

__all__ = [
    "ColumnIndex",
    "choose_impl",
    "column_index",
    "column_index_numpy",
    "fused_available",
    "masked_mse",
    "masked_mse_reference",
    "row_adam_reference",
    "row_adam_step",
    "sparse_linear",
    "sparse_linear_reference",
    "sparse_output_mse",
    "sparse_output_mse_reference",
]
