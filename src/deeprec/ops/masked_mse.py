"""The masked-MSE loss over a CSR batch: its public op, its definition and its kernel launch.

``masked_mse`` is the training loss: the mean squared error over the entries
stored in a CSR batch of ratings (an explicit 0.0 rating counts; absent
entries do not). The fused version is the op deeprec::masked_mse, defined below (the
kernel: csrc/masked_mse/), so it works with ``torch.compile`` and
``torch.library.opcheck``. ``Op.check`` checks the batch's metadata; the kernels check its
indices as they read them, in forward and again in backward (the reference route checks
them with torch ops first, ops/device_checks.py).

Forward reads only the nnz stored predictions; backward recomputes the
residuals and writes the dense gradient in one pass, already scaled by the
incoming gradient. Saving G in forward instead costs an extra dense write and
a dense scale in backward (slower: benchmarks/results/masked_mse-cpu.md).
"""

from __future__ import annotations

import torch

from deeprec import csr
from deeprec.ops import _native, recycle
from deeprec.ops.device_checks import checked_csr
from deeprec.ops.native import DeviceKernels, batch_args
from deeprec.ops.reference import masked_mse_reference
from deeprec.ops.schema import Impl, Op, acc_dtype, as_scalar, check_grad, in_float32

__all__ = ["masked_mse", "masked_mse_reference"]


def masked_mse(output: torch.Tensor, target: object, *, impl: Impl = "auto") -> torch.Tensor:
    """Mean squared error between ``output`` and the ratings stored in ``target``.

    output: dense (B, N) predictions. target: a deeprec Batch, a torch sparse CSR tensor
    of shape (B, N), or a (crow, col, val) triple with col indices into N. Columns must be
    strictly increasing inside each row (canonical CSR). Returns a 0-dim tensor of
    output's dtype (float32 for a 16-bit output, whose gradient stays in its dtype),
    differentiable with respect to ``output``; 0 when nothing is stored. Inside
    ``torch.autocast`` the output and the ratings are cast to the autocast dtype where the
    device has kernels for it (bfloat16 on the CPU, float16 and bfloat16 on CUDA), else
    to float32. ``impl``: "reference" (pure PyTorch), "fused" (native; raises if
    unavailable), "auto" (fused when available, else reference with one warning).
    """
    parts = csr.unpack(target, (csr.dim(output, 0), csr.dim(output, 1)), rows_from="output")
    return MASKED_MSE.call(impl, csr.contiguous(output), *parts)


# ------------------------------------------------------------------ the op's definition
def _check(output, crow, col, val) -> None:
    csr.check_tensor(output, "output", dim=2)
    if not output.is_floating_point():
        raise TypeError(f"output must be floating point, got {output.dtype}")
    csr.check_structure(crow, col, val, output.shape[0], rows_from="output")
    if val.dtype != output.dtype:
        raise TypeError(f"target values have dtype {val.dtype} but output has {output.dtype}")
    if crow.device != output.device:
        raise ValueError(f"target is on {crow.device} but output is on {output.device}")


def launch_kernel(kernels: DeviceKernels, output, crow, col, val, loss, grad,
                  grad_scale) -> None:  # fmt: skip
    """The kernel: the loss (into ``loss``) or the gradient (into ``grad``, scaled)."""
    B, N = output.shape
    kernels.launch("masked_mse.masked_mse", output.device, dtype=output.dtype,
                   op="masked_mse" if loss is not None else "masked_mse backward",
                   reduce=loss is not None, out=output, **batch_args(crow, col), val=val, B=B,
                   N=N, loss=loss, grad=grad, grad_scale=grad_scale)  # fmt: skip


def _run(
    kernels: DeviceKernels,
    output: torch.Tensor,
    crow: torch.Tensor,
    col: torch.Tensor,
    val: torch.Tensor,
) -> torch.Tensor:
    """Mean squared error of ``output`` at the entries the CSR batch stores."""
    loss = output.new_empty((), dtype=acc_dtype(output.dtype))
    launch_kernel(kernels, output, crow, col, val, loss, None, None)
    return loss


def _reference(output, crow, col, val) -> torch.Tensor:
    checked = checked_csr("masked_mse", csr.CSRParts(crow, col, val), output.shape[1])
    loss = masked_mse_reference(output, checked.crow, checked.col, checked.val)
    return torch.where(checked.ok, loss, 0)  # a refused batch (deferred): nothing from it


def _autocast(dtype: torch.dtype, args: tuple) -> tuple:
    """Inside torch.autocast: the output and ratings in the autocast dtype where the
    device's kernels take it (half the bytes of the dense gradient), else float32."""
    output, val = args[0], args[3]
    if (
        isinstance(output, torch.Tensor)
        and isinstance(val, torch.Tensor)
        and output.dtype != torch.float64
        and dtype in _native.kernel_dtypes("masked_mse", output.device.type)
    ):
        return (output.to(dtype), args[1], args[2], val.to(dtype))
    return in_float32(dtype, args)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad):
    output, crow, col, val = ctx.saved_tensors
    grad_output = None
    if grad is not None and ctx.needs_input_grad[0]:
        grad_output = MASKED_MSE_BACKWARD.grad(ctx, grad, output, crow, col, val)
    return grad_output, None, None, None


MASKED_MSE = Op(
    "masked_mse",
    _check,
    _run,
    fake=lambda output, crow, col, val: output.new_empty((), dtype=acc_dtype(output.dtype)),
    family="masked_mse",
    reference=_reference,
    setup=_setup,
    backward=_backward,
    autocast=_autocast,
    fast_path=True,  # its kernels take ~60 us at the seed shape: the dispatcher added ~20
)


def _check_backward(grad, output, crow, col, val) -> None:
    _check(output, crow, col, val)
    check_grad(grad, output, "masked_mse_backward")


def _backward_run(
    kernels: DeviceKernels,
    grad: torch.Tensor,
    output: torch.Tensor,
    crow: torch.Tensor,
    col: torch.Tensor,
    val: torch.Tensor,
) -> torch.Tensor:
    """d loss / d output, scaled by ``grad``; dense, zero where nothing is stored. The
    gradient is as large as the output (36 MiB at the Netflix shape): on the CPU a recycled
    block (deeprec.ops.recycle), so a step does not fault in fresh pages for it."""
    out = recycle.empty(output.shape[0], output.shape[1], output.dtype, output.device)
    scale = as_scalar(grad, acc_dtype(output.dtype))
    launch_kernel(kernels, output, crow, col, val, None, out, scale)
    return out


MASKED_MSE_BACKWARD = Op(
    "masked_mse_backward",
    _check_backward,
    _backward_run,
    fake=lambda grad, output, crow, col, val: torch.empty_like(
        output, memory_format=torch.contiguous_format
    ),
    family="masked_mse",
    lead=1,
)
