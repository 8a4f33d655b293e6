"""Every SIMD variant of the CPU kernels (DEEPREC_ISA): selectable, refused when the CPU
cannot run it, and exact. The exactness checks run under each variant this CPU supports, in
float64 and float32, with hidden widths that reach each variant's widest loop and its tail."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import assert_within_bf16_bounds, bf16_gradient_bounds, random_csr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deeprec.ops import _native, masked_mse, multinomial_nll, sparse_linear, sparse_output_mse
from deeprec.ops.row_adam import row_adam_step

VARIANTS = _native.supported_isas()
# 1..3: scalar tails only; 8/16: one AVX2/AVX-512 float vector (4/8 doubles); 17, 33, 67:
# full vectors plus a tail; 130: several unrolled iterations of the widest loop.
WIDTHS = [1, 3, 8, 16, 17, 33, 67, 130]
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=2e-5, atol=2e-5),
    torch.bfloat16: dict(rtol=1e-4, atol=1e-6),  # the loss, from the reference's bf16 logits
}


@pytest.fixture(params=VARIANTS)
def variant(request):
    before = _native.active_isa()
    _native.use_isa(request.param)
    assert _native.active_isa() == request.param
    yield request.param
    _native.use_isa(before)


def test_this_cpu_runs_at_least_the_baseline():
    assert VARIANTS[0] == "baseline" and _native.active_isa() == VARIANTS[-1]


def grads(loss, params):
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(
    max_examples=12,
    deadline=None,
    # the fixture only selects the variant; it holds for every example
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(H=st.sampled_from(WIDTHS), seed=st.integers(0, 10_000))
def test_sparse_ops_match_the_reference_under_each_variant(variant, dtype, H, seed):
    B, N = 9, 41
    crow, col, val = random_csr(B, N, 0.3, seed=seed, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(N, H, dtype=dtype, generator=g, requires_grad=True)
    b = torch.randn(N, dtype=dtype, generator=g, requires_grad=True)
    bh = torch.randn(H, dtype=dtype, generator=g, requires_grad=True)
    h = torch.randn(B, H, dtype=dtype, generator=g, requires_grad=True)
    up = torch.randn(B, H, dtype=dtype, generator=g)
    out = {}
    for impl in ("fused", "reference"):
        lin = sparse_linear((crow, col, val), W, bh, impl=impl)
        loss = sparse_output_mse(h, W, b, (crow, col, val), impl=impl)
        total = (lin * up).sum() + loss
        out[impl] = [lin, loss, *grads(total, [W, bh, b, h])]
    for a, r in zip(out["fused"], out["reference"], strict=True):
        torch.testing.assert_close(a, r, **TOL[dtype], msg=f"{variant} H={H}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("lazy", [False, True])
def test_row_adam_matches_the_reference_under_each_variant(variant, dtype, lazy):
    for H in WIDTHS:
        g = torch.Generator().manual_seed(H)
        N = 23
        p = torch.randn(N, H, dtype=dtype, generator=g)
        m, v = torch.zeros_like(p), torch.zeros_like(p)
        pr, mr, vr = p.clone(), m.clone(), v.clone()
        for step in range(1, 4):
            rows = torch.randperm(N, generator=g)[:7].sort().values
            values = torch.randn(7, H, dtype=dtype, generator=g)
            grad = torch.sparse_coo_tensor(rows[None], values, (N, H)).coalesce()
            hyper = (step, 1e-2, (0.9, 0.999), 1e-8, 0.01, lazy)
            row_adam_step(p, m, v, grad, *hyper, impl="fused")
            row_adam_step(pr, mr, vr, grad, *hyper, impl="reference")
        for a, r in ((p, pr), (m, mr), (v, vr)):
            torch.testing.assert_close(a, r, **TOL[dtype], msg=f"{variant} H={H}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_masked_mse_matches_under_each_variant(variant, dtype):
    """bf16: the loss from the same bf16 values; the gradient within one bf16 rounding."""
    crow, col, val = random_csr(17, 333, 0.1, seed=4, dtype=dtype)
    out = torch.randn(17, 333, dtype=torch.float64).to(dtype).requires_grad_()
    a = masked_mse(out, (crow, col, val), impl="fused")
    r = masked_mse(out, (crow, col, val), impl="reference")
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-6, atol=0)
    torch.testing.assert_close(a, r, **tol)
    ga, gr = grads(a, [out])[0], grads(r, [out])[0]
    if dtype == torch.bfloat16:
        tol = dict(rtol=2**-8, atol=1e-30)
    torch.testing.assert_close(ga, gr, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_multinomial_epilogues_match_the_reference_under_each_variant(variant, dtype):
    """The native epilogues (row max, sum of exp, the softmax gradient) at chunk widths that
    reach each variant's lane loops and their tails, against the dense definition. Logits
    reach a few hundred, where exp overflows float unless each row's maximum is right.
    bf16: the tolerances of tests/test_precision.py (the same bf16 logits; each gradient
    element within conftest.bf16_gradient_bounds)."""
    B, N, H = 7, 131, 5
    crow, col, _ = random_csr(B, N, 0.2, seed=11, dtype=dtype)
    g = torch.Generator().manual_seed(5)
    h = (torch.randn(B, H, dtype=dtype, generator=g) * 12).requires_grad_(True)
    W = (torch.randn(N, H, dtype=dtype, generator=g) * 12).requires_grad_(True)
    b = torch.randn(N, dtype=dtype, generator=g).requires_grad_(True)
    want = multinomial_nll(h, W, b, (crow, col), impl="reference")
    want_grads = grads(want, [h, W, b])
    for chunk in WIDTHS:
        got = multinomial_nll(h, W, b, (crow, col), impl="fused", chunk=chunk, backend="native")
        torch.testing.assert_close(got, want, **TOL[dtype], msg=f"{variant} chunk={chunk}")
        got_grads = grads(got, [h, W, b])
        if dtype == torch.bfloat16:
            bounds = bf16_gradient_bounds(h, W, b, crow, col)
            assert_within_bf16_bounds(got_grads, want_grads, bounds, f"{variant} chunk={chunk}")
            continue
        for a, r in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(a, r, **TOL[dtype], msg=f"{variant} chunk={chunk}")


def run(env_isa: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEEPREC_ISA": env_isa}
    return subprocess.run([sys.executable, "-m", *args], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("name", VARIANTS)
def test_deeprec_isa_selects_the_variant_and_info_prints_it(name):
    done = run(name, "deeprec.info")
    assert done.returncode == 0
    assert any(line.split() == ["cpu_simd_variant", name] for line in done.stdout.splitlines())


@pytest.mark.parametrize(
    "name,message",
    [
        ("sse9", "is not a SIMD variant"),
        *[(n, "this CPU cannot run it") for n in ("avx2", "avx512") if n not in VARIANTS],
    ],
)
def test_an_impossible_variant_is_a_one_line_error(name, message, tmp_path):
    done = run(name, "deeprec.train", "--fused", "--epochs", "1", "--out", str(tmp_path / "r"))
    assert done.returncode == 2
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "DEEPREC_ISA" in err[0], done.stderr
