"""Independent chunks of one op side by side on the CPU, each with single-threaded GEMMs.

The multinomial op runs a few hundred chunk GEMMs per step. Split across every thread, each
GEMM ends at a barrier that waits for its slowest thread: beside one busy process on two
cores, every barrier waits for the thread the other process holds, and the fused step falls
behind the dense one (three large GEMMs, three barriers: 0.70x). Here each worker takes whole
chunks, its GEMMs and epilogue on one thread, and claims the next chunk when done: a worker
that loses its core holds back one chunk, not every GEMM (benchmarks/precision.py --busy).

The workers are persistent threads (torch releases the GIL in its kernels), one per torch
thread, each set to one intra-op thread (torch's thread count is per thread for OpenMP and
MKL). A worker reports kernel refusals into the calling thread's error word. After fork()
the child starts a fresh pool.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from deeprec.ops import errors

_lock = threading.Lock()
# One pool per worker count asked for (a caller's torch thread count): never shut down, so a
# thread that changes its count cannot pull a pool from under another's submissions.
_pools: dict[int, ThreadPoolExecutor] = {}


def _one_thread(started: threading.Barrier) -> None:
    torch.set_num_threads(1)
    started.wait()


def _workers(n: int) -> ThreadPoolExecutor:
    """The pool of ``n`` workers, each set to one intra-op thread (made here once)."""
    with _lock:
        pool = _pools.get(n)
        if pool is None:
            pool = ThreadPoolExecutor(n, thread_name_prefix="deeprec-chunk")
            started = threading.Barrier(n)
            for f in [pool.submit(_one_thread, started) for _ in range(n)]:
                f.result()  # every worker started and set to one thread
            torch.set_num_threads(n)  # the setting new threads inherit: the caller's again
            _pools[n] = pool
        return pool


def _forget_after_fork() -> None:
    _pools.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def threads() -> int:
    """How many workers a call here uses: the calling thread's torch thread count."""
    return torch.get_num_threads()


def run(n: int, task: Callable[[int], None]) -> None:
    """task(0) ... task(n - 1), each on one worker, in whatever order and thread; returns
    when all are done, raising the first task's exception (in index order) if any raised,
    else the kernel refusals they recorded in the caller's word (as the caller's own
    kernels would have, unless the caller defers them)."""
    workers = threads()
    cpu = torch.device("cpu")
    word = errors.word(cpu)

    def in_worker(i: int) -> None:
        # a thread's grad mode and dispatch state are its own: the op's kernel runs below
        # autograd, so its chunks do too
        with errors.cpu_word(word, lent=True), torch.no_grad():
            task(i)

    pool = _workers(workers)
    futures = [pool.submit(in_worker, i) for i in range(n)]
    first = None
    for f in futures:
        exc = f.exception()
        if exc is not None and first is None:
            first = exc
    if first is not None:
        raise first
    if not errors.deferred(cpu):
        errors.raise_from(word)
