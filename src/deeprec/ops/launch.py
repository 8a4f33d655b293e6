"""How an op hands tensors to native code: addresses, dtype codes, device, stream.

Shared by every op module so launch details live in one place.
"""

from __future__ import annotations

import torch

from deeprec import _native


def ptr(t: torch.Tensor | None) -> int:
    """The data address of a contiguous tensor, or 0 for None."""
    return 0 if t is None else t.data_ptr()


def dtype_code(t: torch.Tensor) -> int:
    return _native.DTYPE_CODE[t.dtype]


def index_code(t: torch.Tensor) -> int:
    return _native.INDEX_CODE[t.dtype]


def threads() -> int:
    """Native CPU threads: torch's own setting, so both never oversubscribe the cores."""
    return torch.get_num_threads()


def cuda_target(device: torch.device) -> tuple[int, int]:
    """(device index, address of torch's current stream on it) for a CUDA launch."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return index, torch.cuda.current_stream(device).cuda_stream


def reduction_workspace(device: torch.device, blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(partials, zeroed counter) for the kernels' deterministic last-block reduction."""
    partials = torch.empty(blocks, dtype=torch.float64, device=device)
    counter = torch.zeros(1, dtype=torch.int32, device=device)
    return partials, counter
