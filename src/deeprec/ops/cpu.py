"""The CPU side of a launch: torch's thread count for the native thread pool."""

from __future__ import annotations

import torch

from deeprec.ops import _native


def threads() -> int:
    """Native CPU threads: torch's own setting, so both never oversubscribe the cores."""
    return torch.get_num_threads()


def run(kernel: str, args: dict[str, object], err: int, err_tag: int) -> None:
    """deeprec._C.<kernel>_cpu(**args, err, err_tag, num_threads); raises its BadIndex."""
    _native.call(
        f"{kernel}_cpu", {**args, "err": err, "err_tag": err_tag, "num_threads": threads()}
    )
