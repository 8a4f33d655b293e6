"""Timing and machine facts shared by every benchmark script and report.

Timings are medians of repeated runs taken in one process; CUDA work is
synchronized before each clock read. Ratios are only ever formed between
numbers measured in the same run.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict[str, object]:
    """What the numbers were measured on: CPU model, threads, GPU, versions."""
    from deeprec.environment import collect

    info: dict[str, object] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "deeprec_build": {
            k: v for k, v in collect().items() if "kernels" in k or "simd" in k or k == "cuda_archs"
        },
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_sms"] = props.multi_processor_count
        info["cuda"] = torch.version.cuda
    return info


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def measure(
    fn: Callable[[], object],
    *,
    device: str = "cpu",
    runs: int = 21,
    warmup: int = 3,
    min_time: float = 0.0,
) -> dict[str, float]:
    """Median, min and interquartile spread (seconds) of ``runs`` timed calls of ``fn``.

    Each timed sample repeats ``fn`` enough times to last at least ``min_time``.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    inner = 1
    if min_time > 0:
        t0 = time.perf_counter()
        fn()
        sync(device)
        one = max(time.perf_counter() - t0, 1e-7)
        inner = max(1, int(min_time / one))
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync(device)
        samples.append((time.perf_counter() - t0) / inner)
    q = statistics.quantiles(samples, n=4)
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "q1": q[0],
        "q3": q[2],
        "runs": runs,
        "inner": inner,
    }


def copy_bandwidth(device: str = "cpu", nbytes: int = 256 * 2**20) -> float:
    """Measured copy bandwidth in GB/s (bytes read + bytes written)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    t = measure(lambda: dst.copy_(src), device=device, runs=9, warmup=2)["median"]
    return 2 * nbytes / t / 1e9


def write_bandwidth(device: str = "cpu", nbytes: int = 256 * 2**20) -> float:
    """Measured fill (write-only) bandwidth in GB/s."""
    dst = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    t = measure(lambda: dst.fill_(0.0), device=device, runs=9, warmup=2)["median"]
    return nbytes / t / 1e9


def matmul_rate(device: str = "cpu", n: int = 1024, dtype: torch.dtype = torch.float32) -> float:
    """Measured square matrix-product rate in GFLOP/s."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = measure(lambda: a @ b, device=device, runs=9, warmup=2)["median"]
    return 2 * n**3 / t / 1e9


def rating_batch(
    B: int,
    N: int,
    density: float,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
):
    """A random canonical CSR batch of 0.5..5 ratings plus its dense twin and an output.

    Returns (output, (crow, col, val), dense_target); about density * N ratings per row.
    """
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, N, generator=g) < density
    dense = (torch.randint(1, 11, (B, N), generator=g).float() / 2) * mask
    crow = torch.zeros(B + 1, dtype=torch.int64)
    crow[1:] = mask.sum(1).cumsum(0)
    rows, cols = mask.nonzero(as_tuple=True)
    parts = (
        crow.to(device),
        cols.to(torch.int32).to(device),
        dense[rows, cols].to(dtype).to(device),
    )
    output = (torch.rand(B, N, generator=g) * 5).to(dtype).to(device)
    return output, parts, dense.to(dtype).to(device)


def seed_dense_masked_mse(output: torch.Tensor, dense_target: torch.Tensor) -> torch.Tensor:
    """The seed's loss (NVIDIA DeepRecommender MSEloss): dense target, mask = target != 0."""
    mask = (dense_target != 0).to(output.dtype)
    return ((output * mask - dense_target) ** 2).sum() / mask.sum()


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        x += 1


@contextlib.contextmanager
def busy_beside(busy: bool) -> Iterator[None]:
    """With ``busy``, one process spinning on a core for the block (a loaded machine)."""
    if not busy:
        yield
        return
    stop = multiprocessing.Event()
    spinner = multiprocessing.Process(target=_spin, args=(stop,))
    spinner.start()
    try:
        yield
    finally:
        stop.set()
        spinner.join()
