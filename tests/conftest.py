"""Shared test helpers: random canonical CSR batches and device parametrization."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from deeprec.ops import _native

# Tests run against the installed package; a missing native module must fail CI
# loudly instead of silently skipping every fused test.
REQUIRE_NATIVE = os.environ.get("DEEPREC_ALLOW_NO_NATIVE", "0") != "1"
# On a GPU machine a skipped CUDA test is a failure: a wrong arch or an old driver makes
# every kernel unusable, and "all skipped" must not read as "all passed".
REQUIRE_CUDA = os.environ.get("DEEPREC_REQUIRE_CUDA", "0") == "1"


def cuda_problem() -> str | None:
    """Why the CUDA tests cannot run here, or None."""
    reason = _native.unavailable_reason("cuda")
    return None if reason is None else f"needs a CUDA GPU and deeprec's CUDA kernels ({reason})"


def pytest_runtest_setup(item):
    if "cuda" in item.keywords:
        problem = cuda_problem()
        if problem is not None:
            if REQUIRE_CUDA:
                pytest.fail(f"DEEPREC_REQUIRE_CUDA=1: {problem}", pytrace=False)
            pytest.skip(problem)
    if "multi_gpu" in item.keywords and torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")


def random_csr(
    B: int,
    N: int,
    density: float,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    index_dtype: torch.dtype = torch.int64,
    device: str = "cpu",
    zeros: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A canonical (sorted, duplicate-free) CSR batch of ratings as (crow, col, val).

    With ``zeros`` some stored ratings are exactly 0.0, which must still count.
    """
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, N, generator=g) < density
    ratings = torch.randint(1, 11, (B, N), generator=g).to(torch.float64) / 2
    if zeros:
        ratings[torch.rand(B, N, generator=g) < 0.1] = 0.0
    crow = torch.zeros(B + 1, dtype=torch.int64)
    crow[1:] = mask.sum(1).cumsum(0)
    rows, cols = mask.nonzero(as_tuple=True)
    val = ratings[rows, cols]
    return (
        crow.to(device),
        cols.to(index_dtype).to(device),
        val.to(dtype).to(device),
    )


def reference_column_index(crow, col) -> tuple[torch.Tensor, ...]:
    """(perm, ucol, uptr, rows) of a canonical CSR batch from the definition, in numpy: what
    deeprec.csr.column_index must build (entries grouped by column, rows ascending)."""
    crow, col = crow.cpu().numpy(), col.cpu().numpy().astype(np.int64)
    rows = np.repeat(np.arange(crow.size - 1), np.diff(crow))
    perm = np.lexsort((rows, col))  # by column, then row: CSR order inside each column
    ucol, counts = np.unique(col, return_counts=True)
    uptr = np.concatenate([[0], np.cumsum(counts)])
    return tuple(torch.from_numpy(np.asarray(a, dtype=np.int64)) for a in (perm, ucol, uptr, rows))


def pytest_sessionstart(session):
    # The CI sanitizer step must really test the ASan/UBSan build, not an installed twin.
    if os.environ.get("DEEPREC_EXPECT_SANITIZED") == "1":
        C = _native.module()
        if C is None or not getattr(C, "SANITIZED", False):
            raise pytest.UsageError(
                "DEEPREC_EXPECT_SANITIZED=1 but deeprec._C is not the sanitized build"
            )


@pytest.fixture
def native_required():
    if _native.module() is None:
        if REQUIRE_NATIVE:
            pytest.fail(f"deeprec._C is not importable: {_native.IMPORT_ERROR}")
        pytest.skip("native module not built")


def sleep_cycles(ms: float) -> int:
    """torch.cuda._sleep's argument for about ``ms`` milliseconds on this GPU, measured
    (its clock rate differs from GPU to GPU)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    probe = 20_000_000
    start.record()
    torch.cuda._sleep(probe)
    end.record()
    end.synchronize()
    return int(probe / max(start.elapsed_time(end), 1e-3) * ms)


def run_while_default_stream_is_busy(fn, poison_numel: int = 0):
    """fn() on a side stream while the default stream sleeps; returns fn's tensors as the
    side stream saw them, plus whether the default stream was still busy at that point.

    A kernel launched on the default (or any other) stream instead of the current one
    would still be queued behind the sleep when the side stream copies its results, so
    the copies would hold whatever the buffers held before: NaN poison, when the caching
    allocator hands back the poisoned block of ``poison_numel`` floats freed just before.
    Nothing synchronises both streams before the copies are taken. The sleep is sized
    from a timed run of fn (50 times its wall time, at least 0.2 s), so it outlasts fn on
    any GPU.
    """
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        fn()  # warm-up (allocator, first launches)
        side.synchronize()
        t0 = time.perf_counter()
        fn()
        side.synchronize()
        fn_ms = (time.perf_counter() - t0) * 1e3
    cycles = sleep_cycles(max(200.0, 50.0 * fn_ms))
    with torch.cuda.stream(side):
        if poison_numel:
            torch.full((poison_numel,), float("nan"), device="cuda")  # freed at once, poisoned
        torch.cuda.current_stream().synchronize()
    torch.cuda._sleep(cycles)  # on the default stream
    with torch.cuda.stream(side):
        result = fn()
        snapshot = [t.detach().clone() for t in result]
    side.synchronize()
    busy = not torch.cuda.default_stream().query()
    torch.cuda.synchronize()
    return snapshot, busy


def bf16_gradient_bounds(h, W, b, crow, col):
    """Per-element bounds on how far a bf16 multinomial op's gradients (dh, dW, db) may lie
    from its reference's on the same inputs. Each logit-gradient element G_ij may differ by
    four bf16 ulps (2^-6 relative): a logit rounded the other way, another exp, its own
    rounding (plus float32's error in c_i p_ij, which G cancels); the GEMMs carry that
    through |G| |W| (dh), |G|^T |h| (dW) and the column sums of |G| (db), and each output
    is rounded once more (2^-8 of itself, added by the caller). G comes from the float64
    definition; a bound of the gradient's magnitude instead would not hold where the
    gradient is a near-cancelling sum."""
    h, W = h.detach().double(), W.detach().double()
    b = b.detach().double() if b is not None else None
    B = h.shape[0]
    rows = torch.repeat_interleave(torch.arange(B), crow.diff())
    p = torch.nn.functional.linear(h, W, b).softmax(1)
    cp = crow.diff().double()[:, None] * p
    G = cp.clone()
    G[rows, col.long()] -= 1.0
    # four bf16 ulps of G, and a few float32 ulps of c_i p_ij: G is formed in float32 as
    # c_i p_ij - 1, whose error is relative to c_i p_ij, not to a G near 0 (a sure item)
    err = (2.0**-6 * G.abs() + 2.0**-20 * cp) / max(B, 1)
    return err @ W.abs(), err.t() @ h.abs(), err.sum(0)


def assert_within_bf16_bounds(got, want, bounds, what=""):
    """Each of got's gradients within its bound (and 2^-8 of the reference's own value)."""
    for name, a, w, bound in zip(("dh", "dW", "db"), got, want, bounds, strict=True):
        err = (a.double() - w.double()).abs()
        limit = bound + 2.0**-8 * w.double().abs() + 1e-12
        worst = float((err - limit).max()) if err.numel() else -1.0
        assert worst <= 0, f"{what} {name}: error exceeds its bound by {worst:.3g}"
