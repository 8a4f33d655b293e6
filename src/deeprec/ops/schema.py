"""The one mechanism that defines a ``deeprec::`` op: its schema, fake, autograd and eager
fast path, from plain functions; and the metadata checks the ops share.

An op is an ``Op`` built from plain functions: ``check`` (the metadata of everything the
kernels read: dtypes, devices, shapes, lengths), ``run`` (the kernel launches, arguments
by name; the kernels check every index they read), ``fake`` (output shapes only, for
torch.compile and opcheck) and, for differentiable ops, ``setup`` and ``backward``.
Each op's functions sit beside its public wrapper, in the module named as its kernel
family (masked_mse.py, sparse_layers.py, row_adam.py, multinomial.py).

``Op`` registers them with ``torch.library`` (what torch.compile and opcheck see) and
builds the eager fast path from the same functions: an autograd.Function that skips the
custom-op dispatcher's per-call Python layer. A backward calls the ops it needs through
``Op.grad``: from the registered op's autograd (torch.compile, opcheck) that is the
registered op, opaque in the graph; on the eager fast path it is the op's ``run`` (the
saved inputs were checked in forward; the kernels check their indices again as they read
them, since an edit autograd's version counter cannot see may have happened in between).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

DEVICES = ("cpu", "cuda")
# Every Op, in the order defined (each op module imports this one and adds its own).
OPS: list[Op] = []


class Op:
    """One registered op and its eager fast path, from one set of functions."""

    def __init__(
        self,
        name: str,
        check: Callable[..., None],
        run: Callable,
        fake: Callable,
        setup: Callable | None = None,
        backward: Callable | None = None,
        mutates: tuple[str, ...] = (),
    ) -> None:
        self.name, self.check, self.run = name, check, run
        OPS.append(self)

        @functools.wraps(run)  # the schema is inferred from run's annotated signature
        def forward(*args):
            check(*args)
            return run(*args)

        self.forward = forward
        self.registered = torch.library.custom_op(
            f"deeprec::{name}", mutates_args=mutates, device_types=DEVICES
        )(forward)
        self.registered.register_fake(fake)
        self.eager: type[torch.autograd.Function] | None = None
        if backward is not None:
            self.registered.register_autograd(backward, setup_context=setup)
            self.eager = _eager_function(name, forward, setup, backward)

    def __call__(self, *args):
        """The op: the registered one while compiling, else the eager fast path."""
        if torch.compiler.is_compiling():
            return getattr(torch.ops.deeprec, self.name)(*args)
        if self.eager is not None:
            return self.eager.apply(*args)
        return self.forward(*args)

    def grad(self, ctx, *args):
        """The op as a backward calls it: on the eager fast path (ctx.eager) its kernels;
        from the registered op's autograd (torch.compile, opcheck) the registered op."""
        if getattr(ctx, "eager", False):
            return self.run(*args)
        return getattr(torch.ops.deeprec, self.name)(*args)


def _eager_function(name: str, forward, setup, backward) -> type[torch.autograd.Function]:
    def eager_forward(ctx, *inputs):
        out = forward(*inputs)
        setup(ctx, inputs, out)
        ctx.eager = True
        # No zero tensor for outputs backward does not read (sparse_output_mse's residuals).
        ctx.set_materialize_grads(False)
        return out

    def eager_backward(ctx, *grads):
        return backward(ctx, *grads)

    members = {"forward": staticmethod(eager_forward), "backward": staticmethod(eager_backward)}
    return type(f"Eager_{name}", (torch.autograd.Function,), members)


# ------------------------------------------------------------------ shared checks
def check_weight(weight, bias, bias_dim: int) -> None:
    """An item-major (items x hidden) weight and its bias (or None) of as many entries as
    the weight's dimension ``bias_dim`` (1: the input layer's H, 0: the output layer's N)."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError("weight must be a 2-D tensor (items x hidden)")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be floating point, got {weight.dtype}")
    if not weight.is_contiguous():
        raise ValueError("weight must be contiguous (item-major rows)")
    bias_len = weight.shape[bias_dim]
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        check_same(weight, bias, "bias")
        if tuple(bias.shape) != (bias_len,) or not bias.is_contiguous():
            raise ValueError(
                f"bias must be a contiguous 1-D tensor of {bias_len} entries, got shape "
                f"{tuple(bias.shape)}"
            )


def check_same(ref: torch.Tensor, other: torch.Tensor, name: str) -> None:
    if other.dtype != ref.dtype:
        raise TypeError(f"{name}: dtype {other.dtype}, but the weight's dtype is {ref.dtype}")
    if other.device != ref.device:
        raise ValueError(f"{name}: on {other.device}, but the weight is on {ref.device}")
