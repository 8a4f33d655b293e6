"""CUDA sparse path: ops, whole model, row-sparse Adam against the references; determinism.

Skipped without a GPU; run by benchmarks/gpu_check.sh (also under compute-sanitizer).
"""

from __future__ import annotations

import pytest
import torch
from conftest import random_csr, run_while_default_stream_is_busy

from deeprec.model import AutoEncoder
from deeprec.ops import (
    BACKENDS,
    column_index,
    masked_mse,
    row_adam_step,
    sparse_linear,
    sparse_output_mse,
)

pytestmark = pytest.mark.cuda

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-5)}


def dense_of(crow, col, val, B, N):
    dense = torch.zeros(B, N, dtype=val.dtype, device=val.device)
    dense[torch.repeat_interleave(torch.arange(B, device=val.device), crow.diff()), col] = val
    return dense


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 40, 5), (300, 2000, 64), (3000, 50, 200)])
def test_cuda_sparse_model_equals_dense_reference(dtype, shape, backend):
    B, N, H = shape
    crow, col, val = random_csr(B, N, 0.05 if N > 100 else 0.3, seed=B, dtype=dtype, device="cuda")
    torch.manual_seed(0)
    model = AutoEncoder(N, (H, 8)).to("cuda", dtype)
    ref = masked_mse(model(dense_of(crow, col, val, B, N)), (crow, col, val), impl="reference")
    fused = model.sparse_loss(crow, col, val, impl="fused", backend=backend)
    torch.testing.assert_close(fused, ref, **TOL[dtype])
    params = list(model.parameters())
    g_ref = torch.autograd.grad(ref, params)
    g_fused = torch.autograd.grad(fused, params)
    for (name, _), a, b in zip(model.named_parameters(), g_fused, g_ref, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_sparse_ops_are_deterministic_and_on_the_current_stream(backend):
    crow, col, val = random_csr(512, 4000, 0.02, seed=1, dtype=torch.float32, device="cuda")
    idx = column_index(crow, col)
    W = torch.randn(4000, 128, device="cuda", requires_grad=True)
    b = torch.randn(128, device="cuda", requires_grad=True)
    h = torch.randn(512, 128, device="cuda", requires_grad=True)
    bo = torch.randn(4000, device="cuda", requires_grad=True)

    def run():
        out = sparse_linear((crow, col, val), W, b, index=idx, impl="fused", backend=backend)
        loss = sparse_output_mse(h, W, bo, (crow, col, val), index=idx, impl="fused",
                                 backend=backend)  # fmt: skip
        return [out, loss, *torch.autograd.grad(loss + out.square().mean(), (W, b, h, bo))]

    first = run()
    torch.cuda.synchronize()
    again, busy = run_while_default_stream_is_busy(run, poison_numel=4000 * 128)
    assert busy, "the default stream's sleep ended too soon for this test to mean anything"
    for a, b_ in zip(first, again, strict=True):
        assert torch.equal(a, b_)


@pytest.mark.multi_gpu
def test_cuda_ops_leave_the_callers_current_device_alone():
    with torch.cuda.device(0):
        crow, col, val = random_csr(8, 30, 0.3, seed=3, dtype=torch.float32, device="cuda:1")
        out = torch.randn(8, 30, device="cuda:1", requires_grad=True)
        masked_mse(out, (crow, col, val), impl="fused").backward()
        W = torch.randn(30, 4, device="cuda:1", requires_grad=True)
        sparse_linear((crow, col, val), W, torch.zeros(4, device="cuda:1"), impl="fused")
        assert torch.cuda.current_device() == 0


@pytest.mark.parametrize("lazy", [False, True])
def test_cuda_row_adam_matches_cpu(lazy):
    torch.manual_seed(0)
    N, H = 300, 33
    p = torch.randn(N, H, dtype=torch.float64)
    state = [p.clone(), torch.zeros_like(p), torch.zeros_like(p)]
    state_cuda = [t.cuda() for t in state]
    for step in range(1, 4):
        rows = torch.sort(torch.randperm(N)[:50]).values
        g = torch.sparse_coo_tensor(rows[None], torch.randn(50, H, dtype=torch.float64), (N, H))
        row_adam_step(*state, g, step, 1e-2, (0.9, 0.999), 1e-8, 0.01, lazy)
        row_adam_step(*state_cuda, g.cuda(), step, 1e-2, (0.9, 0.999), 1e-8, 0.01, lazy)
    for a, b in zip(state, state_cuda, strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-12, atol=1e-12)
