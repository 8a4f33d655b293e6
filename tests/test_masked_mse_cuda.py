"""CUDA masked_mse: equivalence in every dtype, determinism, streams, large grids.

Skipped without a GPU; run by benchmarks/gpu_check.sh (also under compute-sanitizer).
"""

from __future__ import annotations

import pytest
import torch
from conftest import random_csr, run_while_default_stream_is_busy

from deeprec.ops import _native, masked_mse, raise_kernel_errors

pytestmark = pytest.mark.cuda

TOL = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=2e-3, atol=1e-4),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-3),
}


def loss_and_grad(output, target, impl, scale=1.0):
    out = output.detach().clone().requires_grad_(True)
    loss = masked_mse(out, target, impl=impl)
    (loss * scale).backward()
    return loss.detach(), out.grad


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("shape", [(1, 1), (3, 70), (128, 9559), (5000, 33)])
def test_cuda_fused_matches_float64_reference(dtype, index_dtype, shape):
    B, N = shape
    crow, col, val = random_csr(
        B, N, 0.05 if N > 100 else 0.4, seed=B, dtype=dtype, index_dtype=index_dtype, device="cuda"
    )
    output = (torch.randn(B, N, device="cuda") * 2).to(dtype)
    loss, grad = loss_and_grad(output, (crow, col, val), "fused", scale=0.7)
    # The fp32-accumulating kernel is compared against float64 math on the same inputs.
    ref_loss, ref_grad = loss_and_grad(output.double(), (crow, col, val.double()), "reference", 0.7)
    assert loss.dtype == dtype and grad.dtype == dtype
    torch.testing.assert_close(loss.double(), ref_loss, **TOL[dtype])
    torch.testing.assert_close(grad.double(), ref_grad, **TOL[dtype])


def test_cuda_loss_is_bitwise_deterministic():
    crow, col, val = random_csr(3000, 2000, 0.02, seed=1, dtype=torch.float32, device="cuda")
    output = torch.randn(3000, 2000, device="cuda")
    first = masked_mse(output, (crow, col, val), impl="fused")
    for _ in range(5):
        assert torch.equal(masked_mse(output, (crow, col, val), impl="fused"), first)


def test_cuda_runs_on_the_current_stream():
    B, N = 512, 4000
    crow, col, val = random_csr(B, N, 0.02, seed=2, dtype=torch.float32, device="cuda")
    output = torch.randn(B, N, device="cuda")
    expected = loss_and_grad(output, (crow, col, val), "reference")
    torch.cuda.synchronize()

    def fused():
        return loss_and_grad(output, (crow, col, val), "fused")

    got, busy = run_while_default_stream_is_busy(fused, poison_numel=B * N)
    assert busy, "the default stream's sleep ended too soon for this test to mean anything"
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_cuda_empty_batch_and_no_ratings():
    for B in (0, 4):
        crow = torch.zeros(B + 1, dtype=torch.int64, device="cuda")
        col = torch.zeros(0, dtype=torch.int64, device="cuda")
        val = torch.zeros(0, device="cuda")
        loss, grad = loss_and_grad(torch.randn(B, 9, device="cuda"), (crow, col, val), "fused")
        assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0


def test_cuda_gradcheck_float64():
    target = random_csr(6, 10, 0.4, seed=5, device="cuda")
    output = torch.randn(6, 10, dtype=torch.float64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(lambda o: masked_mse(o, target, impl="fused"), (output,))


def test_cuda_opcheck_and_compile():
    crow, col, val = random_csr(5, 8, 0.5, seed=1, dtype=torch.float32, device="cuda")
    output = torch.randn(5, 8, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.deeprec.masked_mse.default, (output, crow, col, val))
    compiled = torch.compile(
        lambda o: masked_mse(o, (crow, col, val), impl="fused"), fullgraph=True
    )
    torch.testing.assert_close(
        compiled(output),
        masked_mse(output, (crow, col, val), impl="reference"),
        rtol=1e-5,
        atol=1e-6,
    )


def test_cuda_bad_input_is_refused():
    """Metadata is refused before launch; an index value by the kernel, raised at the next
    read of the error word (no host sync in the op itself)."""
    crow, col, val = random_csr(4, 8, 0.5, seed=0, dtype=torch.float32, device="cuda")
    bad_col = col.clone()
    bad_col[-1] = 10**6
    with pytest.raises(ValueError, match="outside"):
        masked_mse(torch.randn(4, 8, device="cuda"), (crow, bad_col, val), impl="fused")
        raise_kernel_errors("cuda")
    with pytest.raises(ValueError, match=r"devices|on cpu|on cuda"):
        masked_mse(torch.randn(4, 8, device="cuda"), (crow.cpu(), col, val), impl="fused")
    assert _native.unavailable_reason("cuda") is None
