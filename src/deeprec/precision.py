"""Training precision: what ``--precision`` means on a device, and whether this machine runs it.

- ``fp32``: every op in float32.
- ``bf16``: the forward pass under ``torch.autocast(dtype=torch.bfloat16)``. The weights,
  their gradients and the Adam moments stay float32 (autocast casts a layer's weight for
  its GEMM; the gradient comes back float32); the GEMMs run in bf16 with float32
  accumulation, and each deeprec op follows its autocast rule (``deeprec.ops.schema``):
  the multinomial loss runs its GEMMs in bf16 and its softmax in float32, the masked MSE
  and the sparse layers run in float32. Validation, checkpoints, export and recommend read
  the float32 weights as for any model.
- ``tf32`` (CUDA): float32 tensors, GEMMs on TensorFloat-32 tensor cores
  (``torch.set_float32_matmul_precision("high")`` for the run).

bf16 is refused on a CPU without bf16 instructions (neither AVX512_BF16 nor AMX, nor
Arm's BF16): there torch's bf16 GEMMs are emulated, 44-499x slower than float32
(pytorch/pytorch#146508), which no saving in bytes repays.
"""

from __future__ import annotations

import contextlib
import os
import platform
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from deeprec.choices import PRECISIONS
from deeprec.errors import ConfigError, PrecisionWarning

__all__ = ["PRECISIONS", "autocast", "check", "cpu_bf16_instructions", "cpu_bf16_refusal"]

# Linux's names for the CPU instructions torch's bf16 GEMMs (oneDNN) run on natively.
_X86_BF16 = ("avx512_bf16", "amx_bf16")
_ARM_BF16 = ("bf16",)
# oneDNN's ISA caps (ONEDNN_MAX_CPU_ISA) below which its bf16 GEMMs are emulated.
_ONEDNN_NO_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                   "AVX512_CORE_VNNI")  # fmt: skip


def _cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU's feature flags as Linux lists them; None where they cannot be read."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


def cpu_bf16_instructions(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str] | None:
    """The bf16 instruction sets this CPU has (e.g. ["avx512_bf16", "amx_bf16"]), [] for
    none, None where this platform does not say (no /proc/cpuinfo)."""
    flags = _cpu_flags(cpuinfo)
    if flags is None:
        return None
    wanted = _ARM_BF16 if platform.machine().lower() in ("aarch64", "arm64") else _X86_BF16
    return [name for name in wanted if name in flags]


def cpu_bf16_refusal() -> str | None:
    """Why bf16 training would be slow on this CPU, in one line; None when it runs natively."""
    cost = ("torch's bf16 GEMMs would be emulated, 44-499x slower than float32 "
            "(pytorch/pytorch#146508); use --precision fp32")  # fmt: skip
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if cap in _ONEDNN_NO_BF16:
        return f"ONEDNN_MAX_CPU_ISA={cap} keeps oneDNN off this CPU's bf16 instructions: {cost}"
    found = cpu_bf16_instructions()
    if found is None:
        return f"cannot tell whether this CPU has bf16 instructions (no /proc/cpuinfo): {cost}"
    if not found:
        return f"this CPU has no bf16 instructions (neither AVX512_BF16 nor AMX): {cost}"
    return None


def check(precision: str, device: torch.device) -> None:
    """A ConfigError naming why ``precision`` cannot train on ``device``; None if it can."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "tf32" and device.type != "cuda":
        raise ConfigError(
            "--precision tf32 is a CUDA setting (TensorFloat-32 tensor cores); on "
            f"{device.type} use fp32 or bf16"
        )
    if precision == "bf16" and device.type == "cpu" and (why := cpu_bf16_refusal()) is not None:
        raise ConfigError(f"--precision bf16: {why}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16 "
                          "support (compute capability 8.0 or newer); use fp32")  # fmt: skip


def advise(precision: str, objective: str) -> None:
    """A PrecisionWarning where ``precision`` runs but was measured not to pay: bf16 for the
    rating objective (experiments/results/precision-quality.md)."""
    if precision == "bf16" and objective == "mse":
        warnings.warn(
            "--precision bf16 with the rating objective: its costly layers are sparse and stay "
            "float32 (1.06-1.23x faster measured), and the seed recipe's validation RMSE came "
            "out 0.02-0.17 worse than float32 in every paired run on ml-latest-small; bf16 "
            "pays for the ranking models (--objective multinomial)",
            PrecisionWarning,
            stacklevel=3,
        )


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """The block in ``precision`` on ``device`` (see the module's docstring)."""
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    elif precision == "tf32" and device.type == "cuda":
        was = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(was)
    else:
        yield
