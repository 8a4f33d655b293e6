"""Differentiable ops: a pure-PyTorch reference and a fused native implementation.

``masked_mse`` is the training loss: the mean squared error over the entries
stored in a CSR batch of ratings (an explicit 0.0 rating counts; absent
entries do not). The fused version is the op deeprec::masked_mse (ops/schema.py), so
it works with ``torch.compile`` and ``torch.library.opcheck``, and eager calls skip the
custom-op dispatcher's per-call cost. Python checks the batch's metadata; the kernels
check its indices as they read them, in forward and again in backward.

Forward reads only the nnz stored predictions; backward recomputes the
residuals and writes the dense gradient in one pass, already scaled by the
incoming gradient. Saving G in forward instead costs an extra dense write and
a dense scale in backward (slower: benchmarks/results/masked_mse-cpu.md).
"""

from __future__ import annotations

import torch

from deeprec import csr
from deeprec.ops.launch import Impl, choose_impl
from deeprec.ops.reference import masked_mse_reference
from deeprec.ops.schema import MASKED_MSE

__all__ = ["masked_mse", "masked_mse_reference"]


def masked_mse(output: torch.Tensor, target: object, *, impl: Impl = "auto") -> torch.Tensor:
    """Mean squared error between ``output`` and the ratings stored in ``target``.

    output: dense (B, N) predictions. target: a deeprec Batch, a torch sparse CSR tensor
    of shape (B, N), or a (crow, col, val) triple with col indices into N. Columns must be
    strictly increasing inside each row (canonical CSR). Returns a 0-dim tensor of
    output's dtype, differentiable with respect to ``output``; 0 when nothing is
    stored. ``impl``: "reference" (pure PyTorch), "fused" (native; raises if
    unavailable), "auto" (fused when available, else reference with one warning).
    """
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"output must be a torch.Tensor, got {type(output).__name__}")
    if output.dim() != 2:
        raise ValueError(f"output must be 2-D (batch x items), got shape {tuple(output.shape)}")
    if not output.is_floating_point():
        raise TypeError(f"output must be a floating-point tensor, got {output.dtype}")
    parts = csr.unpack(target, tuple(output.shape))
    if parts.val.dtype != output.dtype:
        raise TypeError(f"target values have dtype {parts.val.dtype} but output has {output.dtype}")
    if parts.crow.device != output.device:
        raise ValueError(f"target is on {parts.crow.device} but output is on {output.device}")
    if choose_impl(output, impl, "masked_mse", "masked_mse") == "reference":
        if not torch.compiler.is_compiling():
            csr.check_values(parts, output.shape[1])
        return masked_mse_reference(output, *parts)
    if not output.is_contiguous():
        raise ValueError("output must be contiguous for the fused masked_mse (call .contiguous())")
    return MASKED_MSE(output, *parts)
