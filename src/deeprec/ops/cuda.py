"""The CUDA side of a launch: torch's current stream, and a reduction workspace for the
kernels whose loss is reduced in a fixed order (deterministic) by their last block."""

from __future__ import annotations

import torch

from deeprec.ops import _native


def target(device: torch.device) -> tuple[int, int]:
    """(device index, address of torch's current stream on it) for a CUDA launch."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return index, torch.cuda.current_stream(device).cuda_stream


def reduction_workspace(device: torch.device, blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(partials, zeroed counter) for the kernels' deterministic last-block reduction."""
    partials = torch.empty(blocks, dtype=torch.float64, device=device)
    counter = torch.zeros(1, dtype=torch.int32, device=device)
    return partials, counter


def run(
    kernel: str, device: torch.device, args: dict[str, object], err: int, err_tag: int, reduce: bool
) -> None:
    """deeprec._C.<kernel>_cuda(**args, [partials, counter,] err, err_tag, device, stream).

    reduce: the launch computes a loss, so a kernel with a workspace gets one (null
    addresses otherwise)."""
    C = _native.module()
    blocks = C.CUDA_WORKSPACE_BLOCKS.get(kernel)
    if blocks is not None:
        partials = counter = None
        if reduce:
            partials, counter = reduction_workspace(device, blocks)
        args = {**args, "partials": _address(partials), "counter": _address(counter)}
    index, stream = target(device)
    tail = {"err": err, "err_tag": err_tag, "device": index, "stream": stream}
    _native.call(f"{kernel}_cuda", {**args, **tail})


def _address(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()
