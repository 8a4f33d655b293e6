"""Hypothesis fuzzing of every native op with malformed CSR batches.

Run by tests/test_fuzz.py in a subprocess, so a crash (segfault, abort) fails that
test instead of killing the test run. Each call must raise a Python exception or
equal the pure-PyTorch reference. Prints FUZZ-OK at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import random_csr

from deeprec.ops import (
    masked_mse,
    masked_mse_reference,
    sparse_linear,
    sparse_linear_reference,
    sparse_output_mse,
    sparse_output_mse_reference,
)

MUTATIONS = [
    "none",
    "crow_start",
    "crow_decrease",
    "crow_past_nnz",
    "crow_short_of_nnz",
    "col_negative",
    "col_too_large",
    "col_huge",
    "val_short",
    "col_short",
    "col_float",
    "val_dtype",
    "crow_float",
    "col_noncontiguous",
    "val_nan",
    "val_inf",
    "row_unsorted",
    "row_duplicate",
    "crow_2d",
    "empty_everything",
]


def mutate(kind: str, crow, col, val, draw_int):
    crow, col, val = crow.clone(), col.clone(), val.clone()
    nnz, B = col.numel(), crow.numel() - 1
    if kind == "crow_start":
        crow[0] = draw_int(1, 5)
    elif kind == "crow_decrease" and B >= 2:
        crow[draw_int(1, B - 1)] = -draw_int(1, 10)
    elif kind == "crow_past_nnz":
        crow[-1] = nnz + draw_int(1, 10**6)
    elif kind == "crow_short_of_nnz" and nnz:
        crow[-1] = nnz - 1
    elif kind == "col_negative" and nnz:
        col[draw_int(0, nnz - 1)] = -draw_int(1, 2**30)
    elif kind == "col_too_large" and nnz:
        col[draw_int(0, nnz - 1)] += draw_int(1, 100) + 10**3
    elif kind == "col_huge" and nnz:
        col = col.long()
        col[draw_int(0, nnz - 1)] = 2**62
    elif kind == "val_short" and nnz:
        val = val[:-1]
    elif kind == "col_short" and nnz:
        col = col[:-1]
    elif kind == "col_float":
        col = col.double()
    elif kind == "val_dtype":
        val = val.float()
    elif kind == "crow_float":
        crow = crow.double()
    elif kind == "col_noncontiguous":
        col = torch.stack([col, col], 1)[:, 0]
    elif kind == "val_nan" and nnz:
        val[draw_int(0, nnz - 1)] = float("nan")
    elif kind == "val_inf" and nnz:
        val[draw_int(0, nnz - 1)] = float("inf")
    elif kind == "row_unsorted":
        for r in range(B):
            a, b = int(crow[r]), int(crow[r + 1])
            if b - a >= 2:
                col[a:b] = col[a:b].flip(0)
                break
    elif kind == "row_duplicate":
        for r in range(B):
            a, b = int(crow[r]), int(crow[r + 1])
            if b - a >= 2:
                col[a + 1] = col[a]
                break
    elif kind == "crow_2d":
        crow = crow[None]
    elif kind == "empty_everything":
        crow, col, val = crow[:0], col[:0], val[:0]
    return crow, col, val


def close(a, b):
    return torch.allclose(a, b, rtol=1e-9, atol=1e-9, equal_nan=True)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    B=st.integers(1, 8),
    N=st.integers(1, 20),
    density=st.floats(0, 1),
    seed=st.integers(0, 2**20),
    kind=st.sampled_from(MUTATIONS),
    op=st.sampled_from(["mse", "linear", "output"]),
    data=st.data(),
)
def fuzz(B, N, density, seed, kind, op, data):
    crow, col, val = random_csr(B, N, density, seed=seed)
    draw_int = lambda lo, hi: data.draw(st.integers(lo, hi))  # noqa: E731
    crow, col, val = mutate(kind, crow, col, val, draw_int)
    g = torch.Generator().manual_seed(seed)
    H = 3
    try:
        if op == "mse":
            out = torch.randn(B, N, dtype=torch.float64, generator=g)
            got = masked_mse(out, (crow, col, val), impl="fused")
            want = masked_mse_reference(out, crow.long(), col, val)
        elif op == "linear":
            W = torch.randn(N, H, dtype=torch.float64, generator=g)
            b = torch.randn(H, dtype=torch.float64, generator=g)
            got = sparse_linear((crow, col, val), W, b, impl="fused")
            want = sparse_linear_reference((crow.long(), col, val), W, b)
        else:
            W = torch.randn(N, H, dtype=torch.float64, generator=g)
            bo = torch.randn(N, dtype=torch.float64, generator=g)
            h = torch.randn(B, H, dtype=torch.float64, generator=g)
            got = sparse_output_mse(h, W, bo, (crow, col, val), impl="fused")
            want = sparse_output_mse_reference(h, W, bo, (crow.long(), col, val))
    except (ValueError, TypeError):
        return  # refused with a Python error: the contract
    assert close(got, want), f"{op}/{kind}: fused {got} != reference {want}"


if __name__ == "__main__":
    fuzz()
    print("FUZZ-OK")
