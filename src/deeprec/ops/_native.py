"""Loads the compiled module deeprec._C once and remembers why it failed, if it did.

The package works without it (every op has a pure-PyTorch reference), so an
import failure is recorded here and reported by ``deeprec.info`` and by
``impl="fused"`` errors instead of being raised at ``import deeprec``. A module
built from other sources than this package (a stale build: another version, or
another argument convention) counts as not importable, with that reason: calling
it could pass arguments its kernels read differently, or report refusals under other codes.
"""

from __future__ import annotations

import os
from types import ModuleType

import torch

from deeprec import __version__
from deeprec.ops.errors import CHECKS

# The entry points' argument convention this package calls (csrc/bindings.cpp, kAbi).
NATIVE_ABI = 7


def _stale(module: ModuleType) -> str | None:
    """Why ``module`` does not belong to this package, or None when it does."""
    built = getattr(module, "__version__", "unknown")
    abi = getattr(module, "ABI", None)
    if built != __version__ or abi != NATIVE_ABI:
        return (
            f"stale build: deeprec._C is from deeprec {built} (ABI {abi}) but the package is "
            f"{__version__} (ABI {NATIVE_ABI}); rebuild it with `pip install .`"
        )
    if dict(getattr(module, "CHECKS", {})) != CHECKS:
        return (
            "stale build: deeprec._C reports refused indices under other check codes than "
            "deeprec.ops.errors.CHECKS; rebuild it with `pip install .`"
        )
    return None


_C: ModuleType | None
try:
    from deeprec import _C
except ImportError as exc:  # not built (source checkout) or built for another platform
    _C = None
    IMPORT_ERROR: str | None = f"{type(exc).__name__}: {exc}"
else:
    IMPORT_ERROR = _stale(_C)
    if IMPORT_ERROR is not None:
        _C = None

# Scalar and index dtype codes, read from the module (csrc/common.h defines them).
DTYPE_CODE = {getattr(torch, k): v for k, v in (_C.DTYPE_CODES.items() if _C else ())}
INDEX_CODE = {getattr(torch, k): v for k, v in (_C.INDEX_CODES.items() if _C else ())}


def call(entry: str, args: dict[str, object]) -> None:
    """deeprec._C.<entry> with every argument given by name: the names must be exactly the
    entry point's fields (KERNEL_ARGS: the kernel's argument struct, then its device's
    launch struct, csrc/kernel_args.h), so a missing, extra or misnamed argument is a
    TypeError, never a value in the wrong place. Called positionally in the declared order
    (a keyword call costs pybind11 microseconds per launch)."""
    C = module()  # through module(), which benchmarks/overhead.py swaps for a no-op stub
    names = C.KERNEL_ARGS[entry]
    if tuple(args) != names:
        if set(args) != set(names):
            wrong = sorted(set(args) ^ set(names))
            raise TypeError(f"deeprec._C.{entry}: arguments {wrong} do not match {names}")
        args = {name: args[name] for name in names}
    getattr(C, entry)(*args.values())


def kernel_dtypes(family: str, device_type: str) -> tuple[torch.dtype, ...]:
    """The scalar dtypes kernel ``family`` (masked_mse, sparse_layers, row_adam, multinomial)
    runs on ``device_type``, as the compiled module's table says (empty without the module).
    Asked at every launch: read from the module once."""
    key = (family, device_type)
    cached = _dtype_tables.get(key)
    if cached is None or cached[0] is not _C:
        names = _C.KERNEL_DTYPES.get(family, {}).get(device_type, ()) if _C is not None else ()
        cached = _dtype_tables[key] = (_C, tuple(getattr(torch, name) for name in names))
    return cached[1]


_dtype_tables: dict[tuple[str, str], tuple[ModuleType | None, tuple[torch.dtype, ...]]] = {}


# ------------------------------------------------------------------ SIMD variant (CPU)
ISA_NAMES: tuple[str, ...] = tuple(_C.ISA_NAMES) if _C else ()


def supported_isas() -> list[str]:
    """The SIMD variants this CPU (and build) can run, narrowest first."""
    return list(ISA_NAMES[: _C.best_isa() + 1]) if _C else []


def active_isa() -> str | None:
    """The SIMD variant the CPU kernels use now."""
    return ISA_NAMES[_C.active_isa()] if _C else None


def use_isa(name: str) -> None:
    """Run the CPU kernels' ``name`` variant (baseline, avx2, avx512) from now on; a one-line
    ValueError when it is not a variant or this CPU cannot run it."""
    if _C is None:
        raise ValueError(f"DEEPREC_ISA={name}: the native module is not importable")
    if name not in ISA_NAMES:
        raise ValueError(f"DEEPREC_ISA={name!r} is not a SIMD variant ({', '.join(ISA_NAMES)})")
    if not _C.set_isa(ISA_NAMES.index(name)):
        raise ValueError(
            f"DEEPREC_ISA={name}: this CPU cannot run it (it runs: {', '.join(supported_isas())})"
        )


# DEEPREC_ISA forces a variant for the whole process; an impossible request disables the
# fused CPU kernels with that reason (``--fused`` then refuses in one line) instead of
# silently running another variant.
ISA_ERROR: str | None = None
if _C is not None and os.environ.get("DEEPREC_ISA", "").strip():
    try:
        use_isa(os.environ["DEEPREC_ISA"].strip())
    except ValueError as exc:
        ISA_ERROR = str(exc)


def module() -> ModuleType | None:
    """The compiled module, or None when it could not be imported."""
    return _C


# A constant of the process for a given device: torch.compile takes the answer at trace
# time instead of tracing into the compiled module's CUDA probe (which it cannot trace).
@torch.compiler.assume_constant_result
def unavailable_reason(device: torch.device | str) -> str | None:
    """Why the fused kernels cannot run on ``device``, or None when they can."""
    device = torch.device(device)
    if _C is None:
        return f"the native module deeprec._C is not importable ({IMPORT_ERROR})"
    if device.type == "cpu":
        return ISA_ERROR
    if device.type == "cuda":
        return _cuda_reason(device.index if device.index is not None else _current_cuda())
    return f"no fused kernels for device type {device.type!r}"


def _current_cuda() -> int:
    return torch.cuda.current_device() if torch.cuda.is_available() else 0


_cuda_reasons: dict[int, str | None] = {}


def _cuda_reason(index: int) -> str | None:
    """Why the CUDA kernels cannot run on cuda:index (a constant of the process, asked once
    per device: every launch asks)."""
    if index not in _cuda_reasons:
        if not _C.WITH_CUDA:
            reason = "deeprec was built without CUDA kernels (nvcc not found or DEEPREC_CUDA=0)"
        elif not torch.cuda.is_available():
            reason = "torch sees no CUDA device"
        elif problem := _C.cuda_kernel_problem(index):
            reason = (
                f"the CUDA kernels cannot run on cuda:{index} ({problem}; built for "
                f"{_C.CUDA_ARCHS})"
            )
        else:
            reason = None
        _cuda_reasons[index] = reason
    return _cuda_reasons[index]
