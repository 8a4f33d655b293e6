"""The one mechanism that defines a ``deeprec::`` op: its schema, one validator, a kernel per
device registered with torch's dispatcher, fake and autograd; and the checks ops share.

An op is an ``Op`` built from plain functions:

- ``check``: the one validator: the metadata of everything the op reads (types, dtypes,
  devices, shapes, lengths), never values. Every path runs it: the registered op before its
  kernel, and the pure-PyTorch reference route of the public wrapper.
- ``run(kernels, *args)``: the computation, for the device whose ``native.DeviceKernels``
  it is handed. Its annotated signature (less ``kernels``) is the op's schema. ``Op``
  registers it once per device type with ``torch.library`` (at the CPU and CUDA dispatch
  keys), so torch's dispatcher routes each call to its device's kernel.
- ``fake`` (output shapes, for torch.compile and opcheck), and for a differentiable op
  ``setup`` and ``backward`` (``register_autograd``; a backward calls the ops it needs).
- ``reference``: the pure-PyTorch definition, on the op's own arguments.
- ``autocast``: the op's rule inside ``torch.autocast`` (registered at the Autocast dispatch
  keys): which floating arguments it casts to what, before it runs with autocast off.
  ``in_float32`` (torch's own rule for its losses) casts 16-bit ones to float32; the
  multinomial op runs its GEMMs in the autocast dtype; a backward or an optimizer step
  (``as_is``, the default) takes the dtypes its forward chose.

Calls go through the dispatcher; an op given ``fast_path`` (masked_mse, whose kernels take
tens of microseconds) skips it on eager calls with autograd, where
benchmarks/dispatcher_cost.py measured the dispatcher dearer (docs/design.md, "Ops on
torch's dispatcher").

A public wrapper only normalises its inputs (a CSR target into its parts, contiguous
copies, the default backend) and calls ``Op.call(impl, ...)``, which picks the
implementation.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Literal

import torch
from torch._subclasses.fake_tensor import FakeTensor

from deeprec.ops import _native, native

Impl = Literal["auto", "fused", "reference"]
# An impl already decided (by deeprec.training.plan), as the model and training receive it.
ChosenImpl = Literal["fused", "reference"]

# Every Op, in the order defined (each op module imports this one and adds its own).
OPS: list[Op] = []
# The deeprec:: namespace: every op's schema and kernels are registered here, once.
_LIBRARY = torch.library.Library("deeprec", "DEF")
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}
_AUTOCAST_KEYS = {
    device_type: torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, "Autocast" + key))
    for device_type, key in _DISPATCH_KEYS.items()
}
_KERNELS_OF = {kernels.device_type: kernels for kernels in native.DEVICES}

# What a schema's annotation asks of an argument: (the Python types, None allowed); the
# symbolic kinds are what torch.compile and opcheck pass while tracing.
_KINDS = {
    "torch.Tensor": ((torch.Tensor,), False),
    "torch.Tensor | None": ((torch.Tensor,), True),
    "int": ((int, torch.SymInt), False),
    "float": ((float, int, torch.SymFloat, torch.SymInt), False),
    "bool": ((bool, torch.SymBool), False),
    "str": ((str,), False),
}


class Op:
    """One registered op: its validator, its kernel on each device, fake and autograd."""

    def __init__(
        self,
        name: str,
        check: Callable[..., None],
        run: Callable,
        fake: Callable,
        *,
        family: str,
        reference: Callable | None = None,
        setup: Callable | None = None,
        backward: Callable | None = None,
        mutates: tuple[str, ...] = (),
        lead: int = 0,
        public: str | None = None,
        fast_path: bool = False,
        autocast: AutocastRule | None = None,
        backend_arg: int | None = None,
    ) -> None:
        """family: the kernel family whose dtype table decides where ``impl="auto"`` may use
        the kernels; lead: the argument whose device and dtype that is decided on; public:
        the name of the public function it serves, for messages (default: name); fast_path:
        eager calls skip the dispatcher (see ``_eager_function``); autocast: the rule inside
        ``torch.autocast`` (default ``as_is``); backend_arg: the argument naming the backend,
        where the "torch" backend has no dtype table (torch's ops take any float)."""
        self.name, self.check, self.run, self.reference = name, check, run, reference
        self.autocast, self.backend_arg = autocast or as_is, backend_arg
        self.setup, self.backward = setup, backward
        self.public = public or name
        self.family, self.lead = family, lead
        OPS.append(self)
        signature = inspect.signature(run)
        params = list(signature.parameters.values())[1:]  # less `kernels`
        self.params = [(p.name, _KINDS[p.annotation]) for p in params]

        def default(*args):  # a device type with no kernel: say so, after the metadata
            self.check(*args)
            device = args[lead].device
            raise RuntimeError(f"deeprec::{name}: no kernel for device type {device.type!r}")

        default.__signature__ = signature.replace(parameters=params)
        default.__name__ = name
        _LIBRARY.define(name + torch.library.infer_schema(default, mutates_args=mutates))
        # What the dispatcher runs on each device type (also for tests that watch inside it),
        # registered straight at the device's dispatch key, as TORCH_LIBRARY_IMPL would.
        self.kernels = {
            kernels.device_type: functools.partial(self._kernel, kernels)
            for kernels in native.DEVICES
        }
        for device_type, kernel in self.kernels.items():
            _LIBRARY.impl(name, kernel, _DISPATCH_KEYS[device_type])
        _LIBRARY.impl(name, default, "CompositeExplicitAutograd")
        for device_type, key in _DISPATCH_KEYS.items():
            _LIBRARY.impl(name, functools.partial(self._autocast_kernel, device_type),
                          "Autocast" + key)  # fmt: skip
        qualified = f"deeprec::{name}"
        torch.library.register_fake(qualified, functools.partial(_fake, self, fake), lib=_LIBRARY)
        if backward is not None:
            torch.library.register_autograd(qualified, backward, setup_context=setup,
                                            lib=_LIBRARY)  # fmt: skip
        self.op = getattr(torch.ops.deeprec, name).default
        # The eager fast path, only for the ops given one (fast_path=True): where measured,
        # the dispatcher and the registered autograd cost more than the op's kernels
        # (benchmarks/results/dispatcher.md); compiled code and raw torch.ops calls still
        # take the registered op.
        self.eager = _eager_function(self) if fast_path else None

    def __call__(self, *args):
        """The registered op (through the dispatcher), after a check of the arguments'
        kinds: the dispatcher's own refusal of a None or a wrong type is a page long."""
        self.kinds(*args)
        return self._dispatch(*args)

    def _dispatch(self, *args):
        if (
            self.eager is not None
            and not torch.compiler.is_compiling()
            and not _autocasting(args[self.lead])
        ):
            return self.eager.apply(*args)
        return self.op(*args)

    def _autocast_kernel(self, device_type: str, *args):
        """The op inside torch.autocast on ``device_type``: its rule's casts, then the op with
        autocast off (nothing it runs is cast again)."""
        dtype = torch.get_autocast_dtype(device_type)
        with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_KEYS[device_type]):
            return self.op(*self.autocast(dtype, args))

    def grad(self, ctx, *args):
        """The op as a backward calls it: from the eager fast path (ctx.eager) its kernel
        for the inputs' device, unchecked (forward checked what it saved; the kernels check
        every index they read again); else the registered op."""
        if getattr(ctx, "eager", False):
            return self.run(ctx.kernels, *args)
        return self.op(*args)

    def call(self, impl: Impl, *args):
        """The op by ``impl``: "reference" (the pure-PyTorch definition, after ``check``),
        "fused" (the registered op; raises where its kernels cannot run), "auto"."""
        self.kinds(*args)
        lead = args[self.lead]
        if (dtype := autocast_dtype(lead)) is not None:  # the reference route sees what the
            args = self.autocast(dtype, args)  # registered op would
        any_dtype = self.backend_arg is not None and args[self.backend_arg] == "torch"
        try:
            chosen = choose_impl(args[self.lead], impl, self.public, self.family, any_dtype)
        except (TypeError, RuntimeError):  # no kernel for these: a metadata error says more
            self.check(*args)
            raise
        if chosen == "reference":
            self.check(*args)
            if _autocasting(lead):
                with torch.autocast(lead.device.type, enabled=False):
                    return self.reference(*args)
            return self.reference(*args)
        return self._dispatch(*args)

    def _kernel(self, kernels: native.DeviceKernels, *args):
        """The op on one device type: the validator, then the computation."""
        self.check(*args)
        return self.run(kernels, *args)

    def kinds(self, *args) -> None:
        """Each argument is of its schema's kind: a one-line TypeError naming it if not."""
        for (name, (types, optional)), value in zip(self.params, args, strict=True):
            if value is None and optional:
                continue
            if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
                want = " or ".join(t.__name__ for t in types[:1]) + (" or None" if optional else "")
                raise TypeError(f"{self.public}: {name} must be {want}, got {type(value).__name__}")


def _eager_function(op: Op) -> type[torch.autograd.Function]:
    """op as a plain autograd.Function over its kernel for the lead argument's device, the
    same validator first: the one place outside the dispatcher that picks a device's kernel,
    kept for the ops where the dispatcher measured dearer than their kernels."""

    def forward(ctx, *args):
        kernels = _KERNELS_OF[args[op.lead].device.type]
        op.check(*args)
        out = op.run(kernels, *args)
        if op.setup is not None:
            op.setup(ctx, args, out)
        ctx.eager, ctx.kernels = True, kernels
        ctx.set_materialize_grads(False)
        return out

    def backward(ctx, *grads):
        return op.backward(ctx, *grads)

    members = {"forward": staticmethod(forward), "backward": staticmethod(backward)}
    return type(f"Eager_{op.name}", (torch.autograd.Function,), members)


def _fake(op: Op, fake, *args):
    """The output shapes. Called on real tensors (a meta tensor among the arguments makes
    the dispatcher pick this over the kernel of the others' device), the validator runs
    first, so a wrong device is refused, not answered with empty meta tensors; on
    torch.compile's fake tensors it does not (their sizes may be symbols to guard on)."""
    if not any(isinstance(a, FakeTensor) for a in args):
        op.check(*args)
    return fake(*args)


# ------------------------------------------------------------------ which implementation
_warned: set[tuple[str, str]] = set()


def fused_available(device: torch.device | str) -> bool:
    """True when the fused kernels are compiled and can run on ``device``."""
    return _native.unavailable_reason(device) is None


def choose_impl(t: torch.Tensor, impl: str, op: str, family: str,
                any_dtype: bool = False) -> str:  # fmt: skip
    """Resolve impl to "fused" or "reference" for a tensor's device and dtype, or raise.

    "auto" falls back to the reference with one warning per (device type, reason).
    family: the kernel family whose dtype table applies (deeprec._C.KERNEL_DTYPES);
    any_dtype: none does (the torch backend), beyond being floating point.
    """
    if impl == "reference":
        return "reference"
    if impl not in ("auto", "fused"):
        raise ValueError(f"impl must be 'auto', 'fused' or 'reference', got {impl!r}")
    reason = _native.unavailable_reason(t.device)
    supported = _native.kernel_dtypes(family, t.device.type)
    if any_dtype and t.is_floating_point():
        supported = (t.dtype,)
    if reason is None and t.dtype not in supported:
        reason = (
            f"no fused kernel for {t.dtype} on {t.device.type} "
            f"(supported: {', '.join(str(d) for d in supported)})"
        )
        if impl == "fused":
            raise TypeError(f"{op}(impl='fused'): {reason}")
    if reason is None:
        return "fused"
    if impl == "fused":
        raise RuntimeError(f"{op}(impl='fused') is unavailable on {t.device}: {reason}")
    if not t.is_floating_point():  # no op takes it: the check says so, without a warning
        return "reference"
    key = (t.device.type, reason)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(
            f"deeprec: using the reference {op} because {reason}", RuntimeWarning, stacklevel=4
        )
    return "reference"


# ------------------------------------------------------------------ autocast rules
# A rule maps (the autocast dtype, the op's arguments) to the arguments the op runs on.
AutocastRule = Callable[[torch.dtype, tuple], tuple]
HALF = (torch.float16, torch.bfloat16)  # the 16-bit float dtypes


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an op computes and returns its losses in for inputs of ``dtype``: float32
    for the 16-bit dtypes, the dtype itself otherwise."""
    return torch.float32 if dtype in HALF else dtype


def autocast_dtype(t) -> torch.dtype | None:
    """The autocast dtype inside torch.autocast for tensor t's device, else None (only CPU
    and CUDA have kernels here)."""
    if not isinstance(t, torch.Tensor) or t.device.type not in _AUTOCAST_KEYS:
        return None
    device = t.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


def _autocasting(t) -> bool:
    return autocast_dtype(t) is not None


def as_is(dtype: torch.dtype, args: tuple) -> tuple:
    """No casts: a backward or an optimizer step takes the dtypes its forward chose."""
    return args


def in_float32(dtype: torch.dtype, args: tuple) -> tuple:
    """Every 16-bit floating tensor as float32 (float64 stays): torch's own autocast rule for
    its losses and reductions. The op's outputs are then float32 (float64 for float64)."""
    return tuple(a.float() if isinstance(a, torch.Tensor) and a.dtype in HALF else a for a in args)


# ------------------------------------------------------------------ shared checks
def check_weight(weight, bias, bias_dim: int) -> None:
    """An item-major (items x hidden) floating-point weight, contiguous, and its bias (or
    None) of as many entries as the weight's dimension ``bias_dim`` (1: the input layer's
    H, 0: the output layer's N), of its dtype and device."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.layout != torch.strided or weight.dim() != 2:
        raise ValueError(
            f"weight must be a dense 2-D tensor (items x hidden), got shape "
            f"{tuple(weight.shape)} ({weight.layout})"
        )
    if not weight.is_floating_point():
        raise TypeError(f"weight must be floating point, got {weight.dtype}")
    if not weight.is_contiguous():
        raise ValueError("weight must be contiguous (item-major rows)")
    if bias is None:
        return
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
    check_same(weight, bias, "bias")
    bias_len = weight.shape[bias_dim]
    if bias.layout != torch.strided or tuple(bias.shape) != (bias_len,):
        raise ValueError(
            f"bias must be a 1-D tensor of {bias_len} entries (weight {tuple(weight.shape)}), "
            f"got shape {tuple(bias.shape)}"
        )
    if not bias.is_contiguous():
        raise ValueError("bias must be contiguous")


def check_rows_input(t, name: str, weight: torch.Tensor, half_over_float32: bool = False) -> None:
    """A (B, H) input of an output layer: dense, 2-D, contiguous, H the weight's width, the
    weight's dtype (or, with ``half_over_float32``, a 16-bit dtype over a float32 weight)
    and device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided or t.dim() != 2 or t.shape[1] != weight.shape[1]:
        raise ValueError(
            f"{name} must be (B, {weight.shape[1]}) to match weight {tuple(weight.shape)}, "
            f"got shape {tuple(t.shape)}"
        )
    half_over = half_over_float32 and t.dtype in HALF and weight.dtype == torch.float32
    check_same(weight, t, name, dtype=not half_over)
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def check_same(ref: torch.Tensor, other: torch.Tensor, name: str, dtype: bool = True) -> None:
    """other on ref's device and (with ``dtype``) of its dtype."""
    if dtype and other.dtype != ref.dtype:
        raise TypeError(f"{name}: dtype {other.dtype}, but the weight's dtype is {ref.dtype}")
    if other.device != ref.device:
        raise ValueError(f"{name}: on {other.device}, but the weight is on {ref.device}")


def check_scale(scale: torch.Tensor | None, like: torch.Tensor, name: str = "scale") -> None:
    """An optional one-element scale the kernels read in place: like's dtype and device."""
    if scale is None:
        return
    if not isinstance(scale, torch.Tensor) or scale.numel() != 1:
        raise ValueError(f"{name} must be a one-element tensor")
    if scale.dtype != like.dtype or scale.device != like.device:
        raise TypeError(
            f"{name} must be {like.dtype} on {like.device}, got {scale.dtype} on {scale.device}"
        )
    if not scale.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def check_grad(grad, like: torch.Tensor, op: str) -> None:
    """The incoming gradient of a scalar loss: a one-element float tensor on like's device."""
    if not isinstance(grad, torch.Tensor) or grad.numel() != 1 or not grad.is_floating_point():
        raise ValueError(f"deeprec::{op}: grad must be a one-element float tensor")
    if grad.device != like.device:
        raise ValueError(
            f"deeprec::{op}: grad is on {grad.device} but the op's inputs on {like.device}"
        )


def as_scalar(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A one-element tensor as the contiguous 0-dim ``dtype`` scalar the kernels read in
    place (an incoming gradient, a folded scale); ``t`` itself when it already is one."""
    if t.dtype == dtype and t.dim() == 0 and t.is_contiguous():
        return t
    return t.to(dtype).reshape(()).contiguous()
