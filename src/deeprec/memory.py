"""How much memory a run needs (estimated before training) and used (peak, measured).

The estimate counts what scales with the data and the model: the training matrix
(CSR: values, column indices, row offsets), the validation triples, and per weight the
parameter, its gradient and Adam's two moments. Activations of one batch are left out.
"""

from __future__ import annotations

import resource
import sys

import torch

MIB = 2**20


def estimate(matrix, model: torch.nn.Module) -> dict[str, float]:
    """MiB of the training data and of model + gradients + Adam state."""
    t = matrix.train
    data = t.data.nbytes + t.indices.nbytes + t.indptr.nbytes
    data += matrix.val_rows.nbytes + matrix.val_cols.nbytes + matrix.val_ratings.nbytes
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"data_mib": data / MIB, "model_and_optimizer_mib": 4 * weights / MIB}


def proc_kib(path: str, key: str) -> int | None:
    """The value of ``key`` in a /proc file of 'Key:  N kB' lines (Linux), or None."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_bytes() -> int:
    """This process's peak resident set. Linux: VmHWM of /proc/self/status, which belongs to
    the process's own address space; ru_maxrss is carried over across exec, so a command
    started by a large parent (a benchmark, a notebook) would report the parent's peak."""
    hwm = proc_kib("/proc/self/status", "VmHWM")
    if hwm is not None:
        return hwm * 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def peak(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process so far (and peak CUDA memory on a GPU), MiB."""
    out = {"peak_rss_mib": peak_rss_bytes() / MIB}
    if device.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / MIB
    return out
