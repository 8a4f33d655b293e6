"""Differentiable ops, each with a pure-PyTorch reference and a fused native version.

- masked_mse: MSE over the ratings stored in a CSR batch (dense predictions).
- sparse_linear: the input layer x @ W + b straight from a CSR batch.
- sparse_output_mse: the output layer + masked MSE evaluated only at stored ratings.
"""

from deeprec.ops.loss import choose_impl, fused_available, masked_mse, masked_mse_reference
from deeprec.ops.sparse import (
    ColumnIndex,
    column_index,
    column_index_numpy,
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
    "sparse_linear",
    "sparse_linear_reference",
    "sparse_output_mse",
    "sparse_output_mse_reference",
]
