"""Large CPU outputs of the sparse kernels, recycled once nothing holds them any more.

Each training step's item-gradient rows (up to items x hidden floats, 36-180 MiB at the
Netflix and ML-32M shapes) are fresh allocations; glibc serves blocks that large with
mmap, so every step paid the kernel's page faults and zero-filling again, which cost
more than the gradient kernel itself (benchmarks/results/measurements.md). CUDA has
torch's caching allocator and does not need this.

A block is handed out again only when nothing outside the pool can reach its memory: the
storage's use count says the pool's tensor is its only tensor (the gradient that used it
was dropped by zero_grad, and no view, sparse tensor or autograd node holds it), and the
storage's Python object has no holder either (torch keeps one Python object per storage:
a caller who kept ``W.grad.untyped_storage()`` holds that object, which the use count does
not show). Without torch's use-count query, or for small blocks, this is plain torch.empty.
"""

from __future__ import annotations

import sys
import threading

import torch

MIN_BYTES = 4 << 20  # smaller blocks come from malloc's free lists anyway
KEEP = 4  # blocks kept per dtype

_use_count = getattr(torch._C, "_storage_Use_Count", None)
_pool: dict[torch.dtype, list[torch.Tensor]] = {}
_lock = threading.Lock()


def _holders(base: torch.Tensor) -> tuple[int, int]:
    """(storage use count, Python references to the storage object) as seen from here."""
    storage = base.untyped_storage()
    return _use_count(storage._cdata), sys.getrefcount(storage)


# What a block nobody else reaches looks like, on this torch: measured once, on a fresh one.
_ALONE = _holders(torch.empty(1)) if _use_count is not None else (0, 0)


def _free(base: torch.Tensor) -> bool:
    uses, refs = _holders(base)
    return uses <= _ALONE[0] and refs <= _ALONE[1]


def empty(rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised (rows, cols) tensor, from a recycled block where possible."""
    n = rows * cols
    size = dtype.itemsize
    if device.type != "cpu" or _use_count is None or n * size < MIN_BYTES:
        return torch.empty(rows, cols, dtype=dtype, device=device)
    with _lock:
        blocks = _pool.setdefault(dtype, [])
        for base in blocks:
            if base.numel() >= n and _free(base):
                return base[:n].view(rows, cols)
        base = torch.empty(n, dtype=dtype)
        blocks.append(base)
        if len(blocks) > KEEP:  # forget the smallest block nobody holds
            idle = [b for b in blocks if b is not base and _free(b)]
            if idle:  # by identity: list.remove would compare tensors with ==
                smallest = min(idle, key=torch.Tensor.numel)
                del blocks[next(i for i, b in enumerate(blocks) if b is smallest)]
        return base.view(rows, cols)


def release() -> None:
    """Forget every block nobody holds (their memory goes back to the system): for a
    caller about to measure memory, or done with a model of another shape."""
    with _lock:
        for dtype, blocks in _pool.items():
            _pool[dtype] = [b for b in blocks if not _free(b)]
