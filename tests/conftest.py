"""Shared test helpers: random canonical CSR batches and device parametrization."""

from __future__ import annotations

import os

import pytest
import torch

from deeprec import _native

# Tests run against the installed package; a missing native module must fail CI
# loudly instead of silently skipping every fused test.
REQUIRE_NATIVE = os.environ.get("DEEPREC_ALLOW_NO_NATIVE", "0") != "1"


def cuda_ready() -> bool:
    return _native.unavailable_reason("cuda") is None


cuda = pytest.mark.skipif(not cuda_ready(), reason="needs a CUDA GPU and deeprec's CUDA kernels")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "cuda" in item.keywords and not cuda_ready():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU and deeprec's CUDA kernels"))


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
