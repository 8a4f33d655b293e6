"""Differentiable ops: a pure-PyTorch reference and a fused native implementation.

``masked_mse`` is the training loss: the mean squared error over the entries
stored in a CSR batch of ratings (an explicit 0.0 rating counts; absent
entries do not). The fused version is registered with ``torch.library`` so it
works with ``torch.compile`` and ``torch.library.opcheck``; eager calls take an
``autograd.Function`` over the same checks and kernels, which skips the custom-op
dispatcher's per-call cost. Python checks the batch's metadata; the kernels check its
indices as they read them, in forward and again in backward.

Forward reads only the nnz stored predictions; backward recomputes the
residuals and writes the dense gradient in one pass, already scaled by the
incoming gradient. Saving G in forward instead costs an extra dense write and
a dense scale in backward: 1.46x slower (benchmarks/masked_mse_speed.py,
benchmarks/results/masked_mse-cpu.md).
"""

from __future__ import annotations

import torch

from deeprec import csr
from deeprec.ops.launch import (
    Impl,
    as_scalar,
    check_kernel,
    choose_impl,
    dtype_code,
    index_code,
    launch,
    ptr,
)

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
    if choose_impl(output, impl, "masked_mse") == "reference":
        if not torch.compiler.is_compiling():
            csr.check_values(parts, output.shape[1])
        return masked_mse_reference(output, *parts)
    if not output.is_contiguous():
        raise ValueError("output must be contiguous for the fused masked_mse (call .contiguous())")
    if torch.compiler.is_compiling():
        return torch.ops.deeprec.masked_mse(output, *parts)
    return _MaskedMSE.apply(output, *parts)


class _MaskedMSE(torch.autograd.Function):
    """The eager path of the fused op: the same checks and kernels as deeprec::masked_mse,
    without the custom-op dispatcher, whose Python autograd layer cost ~75 us per step at
    the seed shape, more than the forward kernel. torch.compile traces the registered op
    instead. Backward's kernel checks the saved indices again as it reads them: they may
    have been edited since forward in ways autograd's version counter does not see."""

    @staticmethod
    def forward(ctx, output, crow, col, val):
        _check_args("masked_mse", output, crow, col, val)
        loss = output.new_empty(())
        _run_native(output, crow, col, val, loss=loss, grad=None, grad_scale=None)
        ctx.save_for_backward(output, crow, col, val)
        return loss

    @staticmethod
    def backward(ctx, grad):
        output, crow, col, val = ctx.saved_tensors
        out = torch.empty_like(output, memory_format=torch.contiguous_format)
        scale = as_scalar(grad, output.dtype)
        _run_native(output, crow, col, val, loss=None, grad=out, grad_scale=scale)
        return out, None, None, None


def masked_mse_reference(
    output: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor
) -> torch.Tensor:
    """Pure-PyTorch masked MSE over stored entries: the definition the fused op must match."""
    nnz = col.numel()
    rows = csr.entry_rows(crow, nnz)
    pred = output[rows, col]
    return ((pred - val) ** 2).sum() / max(nnz, 1)


def _run_native(
    output: torch.Tensor,
    crow: torch.Tensor,
    col: torch.Tensor,
    val: torch.Tensor,
    loss: torch.Tensor | None,
    grad: torch.Tensor | None,
    grad_scale: torch.Tensor | None,
) -> None:
    """Launch the kernel for output's device; writes into loss and/or grad."""
    B, N = output.shape
    op = "masked_mse" if loss is not None else "masked_mse backward"
    launch(
        "masked_mse",
        output.device,
        ptr(output),
        ptr(crow),
        ptr(col),
        ptr(val),
        B,
        N,
        col.numel(),
        dtype_code(output),
        index_code(col),
        ptr(loss),
        ptr(grad),
        ptr(grad_scale),
        op=op,
        reduce=loss is not None,
    )


def _check_args(op: str, output, crow, col, val) -> None:
    """The metadata of everything the kernel reads, checked inside the op (raw torch.ops
    calls included); the kernel checks the index values."""
    csr.check_tensor(output, "output", dim=2)
    check_kernel(op, output)
    csr.check_structure(crow, col, val, output.shape[0])
    if val.dtype != output.dtype:
        raise TypeError(f"target values have dtype {val.dtype} but output has {output.dtype}")
    if crow.device != output.device:
        raise ValueError(f"target is on {crow.device} but output is on {output.device}")


@torch.library.custom_op("deeprec::masked_mse", mutates_args=(), device_types=("cpu", "cuda"))
def _masked_mse_op(
    output: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor
) -> torch.Tensor:
    _check_args("masked_mse", output, crow, col, val)
    loss = output.new_empty(())
    _run_native(output, crow, col, val, loss=loss, grad=None, grad_scale=None)
    return loss


@_masked_mse_op.register_fake
def _(output, crow, col, val):
    return output.new_empty(())


@torch.library.custom_op(
    "deeprec::masked_mse_backward", mutates_args=(), device_types=("cpu", "cuda")
)
def _masked_mse_backward_op(
    grad: torch.Tensor,
    output: torch.Tensor,
    crow: torch.Tensor,
    col: torch.Tensor,
    val: torch.Tensor,
) -> torch.Tensor:
    """d loss / d output, scaled by ``grad``; dense, zero where nothing is stored."""
    _check_args("masked_mse_backward", output, crow, col, val)
    if not isinstance(grad, torch.Tensor) or grad.numel() != 1 or not grad.is_floating_point():
        raise ValueError("deeprec::masked_mse_backward: grad must be a one-element float tensor")
    if grad.device != output.device:
        raise ValueError(f"grad is on {grad.device} but output is on {output.device}")
    out = torch.empty_like(output, memory_format=torch.contiguous_format)
    scale = as_scalar(grad, output.dtype)
    _run_native(output, crow, col, val, loss=None, grad=out, grad_scale=scale)
    return out


@_masked_mse_backward_op.register_fake
def _(grad, output, crow, col, val):
    return torch.empty_like(output, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad):
    output, crow, col, val = ctx.saved_tensors
    grad_output = None
    if ctx.needs_input_grad[0]:
        grad_output = torch.ops.deeprec.masked_mse_backward(grad, output, crow, col, val)
    return grad_output, None, None, None


_masked_mse_op.register_autograd(_backward, setup_context=_setup_context)
