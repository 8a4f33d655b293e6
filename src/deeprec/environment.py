"""What was built and what can run here: versions, the native module, CUDA devices.

Shared by ``python -m deeprec.info`` and the benchmark reports (which record the machine).
"""

from __future__ import annotations

import os
import platform

import torch

from deeprec import __version__, precision
from deeprec.ops import _native


def collect() -> dict[str, object]:
    """Build and runtime facts as a flat dict (also used by the benchmark reports)."""
    C = _native.module()
    facts: dict[str, object] = {
        "deeprec": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "native_module": "importable" if C is not None else f"missing ({_native.IMPORT_ERROR})",
        "cpu_kernels_compiled": C is not None,
        "cpu_kernels_usable": (
            True
            if _native.unavailable_reason("cpu") is None
            else f"no ({_native.unavailable_reason('cpu')})"
        ),
        "cpu_simd_variant": _native.active_isa() or "none",
        "cpu_simd_variants_supported": ", ".join(_native.supported_isas()) or "none",
        "DEEPREC_ISA": os.environ.get("DEEPREC_ISA", "") or "unset (the widest supported)",
        "cpu_bf16_instructions": _bf16_instructions(),
        "cpu_precision_bf16": (
            "yes" if (why := precision.cpu_bf16_refusal()) is None else f"refused ({why})"
        ),
        "cuda_kernels_compiled": bool(C is not None and C.WITH_CUDA),
        "cuda_archs": (C.CUDA_ARCHS if C is not None and C.WITH_CUDA else ""),
        "torch_cuda": torch.version.cuda or "cpu build",
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            reason = _native.unavailable_reason(f"cuda:{i}")
            facts[f"cuda:{i}"] = torch.cuda.get_device_name(i)
            facts[f"cuda:{i}_kernels_usable"] = True if reason is None else f"no ({reason})"
    else:
        facts["cuda_kernels_usable"] = f"no ({_native.unavailable_reason('cuda')})"
    if C is not None and C.WITH_CUDA:
        facts["cuda_runtime_linked"] = C.cuda_runtime_version()
        facts["cuda_driver"] = C.cuda_driver_version()
    return facts


def _bf16_instructions() -> str:
    found = precision.cpu_bf16_instructions()
    if found is None:
        return "unknown (no /proc/cpuinfo)"
    return ", ".join(found) or "none"
