"""The native thread pool (csrc/parallel/cpu.cpp): workers that spin between jobs and then
sleep must still run every chunk exactly once, whatever the thread count, from several
Python threads at once, after fork, and with spinning turned off (OMP_WAIT_POLICY=passive).

Each check compares results bitwise with a one-thread run: the kernels' results do not
depend on the thread count, so a chunk skipped or run twice shows up as a difference.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch
from conftest import random_csr

from deeprec.ops import _native, masked_mse

pytestmark = pytest.mark.usefixtures("native_required")


def loss_and_grad(output, target):
    out = output.detach().clone().requires_grad_(True)
    loss = masked_mse(out, target, impl="fused")
    loss.backward()
    return loss.detach(), out.grad


@pytest.fixture
def problem():
    target = random_csr(300, 1500, 0.05, seed=11, dtype=torch.float32)
    output = torch.randn(300, 1500, generator=torch.Generator().manual_seed(3))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    expected = loss_and_grad(output, target)
    torch.set_num_threads(before)
    yield output, target, expected
    torch.set_num_threads(before)


def test_every_thread_count_back_to_back_and_after_sleeping(problem):
    output, target, (loss, grad) = problem
    # Counts that grow and shrink the pool, calls back to back (workers still spinning)
    # and after a pause longer than the spin (workers asleep on the condition variable):
    # the same results, and never more threads than asked for.
    for threads in (3, 1, 8, 2, 4, 3, 2):
        torch.set_num_threads(threads)
        for pause in (0.0, 0.0, 0.01):
            time.sleep(pause)
            got_loss, got_grad = loss_and_grad(output, target)
            assert torch.equal(got_loss, loss) and torch.equal(got_grad, grad), threads
            assert threads_used(threads) <= threads


def threads_used(threads: int) -> int:
    """Distinct threads running one 64-chunk job of busy chunks (the most of 3 tries)."""
    C = _native.module()
    return max(C.parallel_threads_used(64, threads, 1, 200) for _ in range(3))


def test_a_job_uses_at_most_its_thread_count_after_a_wider_one():
    assert threads_used(8) >= 2  # the pool has grown to 7 workers, and they take part
    for threads in (1, 2, 3, 2, 1):
        assert threads_used(threads) <= threads, threads


FORK_WHILE_BUSY = textwrap.dedent(
    """
    import os, sys, threading, time, torch
    sys.path.insert(0, {tests!r})
    from conftest import random_csr
    from deeprec.ops.masked_mse import launch_kernel
    from deeprec.ops.native import CPU

    output = torch.randn(64, 300, generator=torch.Generator().manual_seed(3))
    target = random_csr(64, 300, 0.05, seed=11, dtype=torch.float32)
    torch.set_num_threads(2)
    stop = False

    def busy():  # enters the pool again and again, with the GIL released
        loss = output.new_empty(())
        while not stop:
            launch_kernel(CPU, output, *target, loss, None, None)

    worker = threading.Thread(target=busy)
    worker.start()
    for _ in range(150):
        pid = os.fork()
        if pid == 0:  # must get a pool of its own, whatever the other thread held
            loss = output.new_empty(())
            launch_kernel(CPU, output, *target, loss, None, None)
            os._exit(0)
        deadline = time.monotonic() + 10
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                assert status == 0, status
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                print("child hung")
                os._exit(4)
            time.sleep(0.001)
    stop = True
    worker.join()
    print("ok")
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_fork_while_another_thread_is_in_the_pool():
    code = FORK_WHILE_BUSY.format(tests=os.path.dirname(__file__))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.stdout, done.stderr[-2000:])


def test_several_python_threads_at_once(problem):
    output, target, (loss, grad) = problem
    torch.set_num_threads(3)
    failures: list[str] = []

    def work(k: int) -> None:
        for i in range(40):
            got_loss, got_grad = loss_and_grad(output, target)
            if not (torch.equal(got_loss, loss) and torch.equal(got_grad, grad)):
                failures.append(f"thread {k} call {i}")

    workers = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert failures == []


SCRIPT = textwrap.dedent(
    """
    import hashlib, os, sys, torch
    sys.path.insert(0, {tests!r})
    from conftest import random_csr
    from deeprec.ops.masked_mse import launch_kernel
    from deeprec.ops.native import CPU

    output = torch.randn(300, 1500, generator=torch.Generator().manual_seed(3))
    target = random_csr(300, 1500, 0.05, seed=11, dtype=torch.float32)
    loss, grad = output.new_empty(()), torch.empty_like(output)

    def run():  # the kernels alone: torch's own OpenMP is not fork-safe, ours must be
        launch_kernel(CPU, output, *target, loss, None, None)
        launch_kernel(CPU, output, *target, None, grad, None)
        return float(loss), hashlib.sha256(grad.numpy().tobytes()).hexdigest()

    torch.set_num_threads(1)
    expected = run()
    torch.set_num_threads(2)
    assert run() == expected, "parent"
    if {fork}:
        pid = os.fork()
        if pid == 0:  # the child gets its own pool: the parent's workers do not exist here
            os._exit(0 if run() == expected else 3)
        assert os.waitpid(pid, 0)[1] == 0, "forked child"
    print("ok")
    """
)


@pytest.mark.parametrize("policy", ["", "passive"])
def test_fork_and_passive_wait_policy(policy):
    env = dict(os.environ, OMP_WAIT_POLICY=policy)
    tests = os.path.dirname(__file__)
    code = SCRIPT.format(tests=tests, fork=hasattr(os, "fork"))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
