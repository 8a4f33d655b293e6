"""The masked-MSE loss over a CSR batch: its public op, its definition and its kernel launch.

``masked_mse`` is the training loss: the mean squared error over the entries
stored in a CSR batch of ratings (an explicit 0.0 rating counts; absent
entries do not). The fused version is the op deeprec::masked_mse, defined below (the
kernel: csrc/masked_mse/), so
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
from deeprec.ops.launch import (
    Impl,
    as_scalar,
    batch_args,
    check_kernel,
    choose_impl,
    dtype_code,
    launch,
)
from deeprec.ops.reference import masked_mse_reference
from deeprec.ops.schema import Op

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


# ------------------------------------------------------------------ the op's definition
def _check_masked_mse(output, crow, col, val) -> None:
    csr.check_tensor(output, "output", dim=2)
    check_kernel("masked_mse", output, "masked_mse")
    csr.check_structure(crow, col, val, output.shape[0])
    if val.dtype != output.dtype:
        raise TypeError(f"target values have dtype {val.dtype} but output has {output.dtype}")
    if crow.device != output.device:
        raise ValueError(f"target is on {crow.device} but output is on {output.device}")


def masked_mse_launch(output, crow, col, val, loss, grad, grad_scale) -> None:
    """The kernel: the loss (into ``loss``) or the gradient (into ``grad``, scaled)."""
    B, N = output.shape
    launch("masked_mse.masked_mse", output.device,
           op="masked_mse" if loss is not None else "masked_mse backward",
           reduce=loss is not None, out=output, **batch_args(crow, col), val=val, B=B, N=N,
           dtype=dtype_code(output), loss=loss, grad=grad, grad_scale=grad_scale)  # fmt: skip


def _masked_mse_run(
    output: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor
) -> torch.Tensor:
    """Mean squared error of ``output`` at the entries the CSR batch stores."""
    loss = output.new_empty(())
    masked_mse_launch(output, crow, col, val, loss, None, None)
    return loss


def _masked_mse_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _masked_mse_backward(ctx, grad):
    if grad is None:  # eager path, materialize_grads off: no gradient came
        return None, None, None, None
    output, crow, col, val = ctx.saved_tensors
    grad_output = None
    if ctx.needs_input_grad[0]:
        grad_output = MASKED_MSE_BACKWARD.grad(ctx, grad, output, crow, col, val)
    return grad_output, None, None, None


MASKED_MSE = Op(
    "masked_mse",
    _check_masked_mse,
    _masked_mse_run,
    fake=lambda output, crow, col, val: output.new_empty(()),
    setup=_masked_mse_setup,
    backward=_masked_mse_backward,
)


def _check_masked_mse_backward(grad, output, crow, col, val) -> None:
    _check_masked_mse(output, crow, col, val)
    if not isinstance(grad, torch.Tensor) or grad.numel() != 1 or not grad.is_floating_point():
        raise ValueError("deeprec::masked_mse_backward: grad must be a one-element float tensor")
    if grad.device != output.device:
        raise ValueError(f"grad is on {grad.device} but output is on {output.device}")


def _masked_mse_backward_run(
    grad: torch.Tensor,
    output: torch.Tensor,
    crow: torch.Tensor,
    col: torch.Tensor,
    val: torch.Tensor,
) -> torch.Tensor:
    """d loss / d output, scaled by ``grad``; dense, zero where nothing is stored."""
    out = torch.empty_like(output, memory_format=torch.contiguous_format)
    masked_mse_launch(output, crow, col, val, None, out, as_scalar(grad, output.dtype))
    return out


MASKED_MSE_BACKWARD = Op(
    "masked_mse_backward",
    _check_masked_mse_backward,
    _masked_mse_backward_run,
    fake=lambda grad, output, crow, col, val: torch.empty_like(
        output, memory_format=torch.contiguous_format
    ),
)
