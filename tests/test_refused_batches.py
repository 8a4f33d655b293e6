"""Where refusals wait in the error word (a GPU, or the CPU with its error flow), a refused
batch leaves defined values and nothing is applied from it, and the refusal is raised at
the next read. On a GPU the word is per stream and read on its stream."""

from __future__ import annotations

import pytest
import torch
from conftest import random_csr

from deeprec.csr import column_index
from deeprec.ops import (
    BACKENDS,
    errors,
    masked_mse,
    multinomial_nll,
    raise_kernel_errors,
    sparse_linear,
    sparse_output_mse,
)

pytestmark = pytest.mark.usefixtures("native_required")


def layer(B, N, H, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(*s, dtype=torch.float64, generator=g).to(device).requires_grad_()
        for s in ((B, H), (N, H), (N,))
    ]


@pytest.fixture(autouse=True)
def clean_word():
    """A refusal a failed test left unread does not leak into the next."""
    yield
    errors.word(torch.device("cpu")).zero_()


def broken_row(device="cpu"):
    """A batch whose rows 1 and 2 are refused (the offset between them is past the end),
    and its index."""
    crow, col, val = random_csr(5, 12, 0.4, seed=1, device=device)
    index = column_index(crow, col)
    crow = crow.clone()
    crow[2] = 10**9
    return crow, col, val, index


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_refused_batch_gives_finite_values_and_waits_in_the_word(backend):
    crow, col, val, index = broken_row()
    h, W, b = layer(5, 12, 3)
    with errors.deferred_on_cpu():
        loss, resid = torch.ops.deeprec.sparse_output_mse(
            h, W, b, crow, col, val, *index, False, backend
        )
        grads = torch.autograd.grad(loss, (h, W, b))
        assert torch.isfinite(loss) and all(bool(torch.isfinite(g).all()) for g in grads)
        # the weight and bias gradients come through the column index, which a refused
        # batch fails as a whole: exactly zero, never what the buffers held before
        assert float(grads[1].abs().max()) == 0 and float(grads[2].abs().max()) == 0
        # the whole refused batch is set aside: every residual, and the loss, 0
        assert bool((resid == 0).all()) and float(loss.detach()) == 0, resid
        with pytest.raises(ValueError, match=r"crow\[2\] = 1000000000 breaks the offsets"):
            raise_kernel_errors("cpu")
        raise_kernel_errors("cpu")  # read and reset


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_refused_multinomial_batch_contributes_nothing_on_the_torch_ops(backend):
    crow, col, *_ = broken_row()
    h, W, b = layer(5, 12, 3)
    with errors.deferred_on_cpu():
        loss = multinomial_nll(h, W, b, (crow, col), impl="fused", chunk=5, backend=backend)
        grads = torch.autograd.grad(loss, (h, W, b))
        assert torch.isfinite(loss) and all(bool(torch.isfinite(g).all()) for g in grads)
        if backend == "torch":  # the whole batch is set aside: no loss, no gradient
            assert float(loss.detach()) == 0 and all(float(g.abs().max()) == 0 for g in grads)
        with pytest.raises(ValueError, match="multinomial_nll"):
            errors.read_checked(loss.detach())


def test_the_reference_route_defers_too():
    crow, col, val, *_ = broken_row()
    out = torch.randn(5, 12, dtype=torch.float64, requires_grad=True)
    with errors.deferred_on_cpu():
        loss = masked_mse(out, (crow, col, val), impl="reference")
        (grad,) = torch.autograd.grad(loss, out)
        assert float(loss.detach()) == 0 and float(grad.abs().max()) == 0
        with pytest.raises(ValueError, match=r"deeprec masked_mse: target: crow\[2\]"):
            raise_kernel_errors()


@pytest.mark.cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_refusals_wait_in_the_word_of_their_stream(backend):
    """A refusal on a side stream is recorded in that stream's word and read on that stream:
    raise_kernel_errors finds it, after the side stream's work, with no race."""
    crow, col, val, *_ = broken_row("cuda")
    W = torch.randn(12, 3, dtype=torch.float64, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(10**6)  # the refusal is written late on the side stream
        out = sparse_linear((crow, col, val), W, None, impl="fused", backend=backend)
    assert torch.isfinite(out).all()  # reads on the side stream's result: defined values
    with pytest.raises(ValueError, match=r"crow\[2\] = 1000000000"):
        raise_kernel_errors("cuda")
    raise_kernel_errors("cuda")  # read and reset


@pytest.mark.cuda
def test_cuda_losses_are_summed_in_double():
    """float32 predictions, two million ratings: the loss as the CPU sums it (double), where
    a float sum would be off by about 1e-5."""
    g = torch.Generator().manual_seed(0)
    B, N = 1000, 4000
    crow, col, val = random_csr(B, N, 0.5, seed=2, dtype=torch.float32)
    out = torch.rand(B, N, generator=g) * 5
    cpu = masked_mse(out, (crow, col, val), impl="fused")
    gpu = masked_mse(out.cuda(), (crow.cuda(), col.cuda(), val.cuda()), impl="fused")
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=2e-7, atol=0)
    h, W, b = (t.detach().float() for t in layer(B, N, 16))
    cpu = sparse_output_mse(h, W, b, (crow, col, val), impl="fused", backend="native")
    for backend in BACKENDS:
        gpu = sparse_output_mse(h.cuda(), W.cuda(), b.cuda(), (crow.cuda(), col.cuda(), val.cuda()),
                                impl="fused", backend=backend)  # fmt: skip
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=2e-6, atol=0)


def empty_batch(refused: bool):
    """Three rows and no ratings (col and val have no data, so possibly no data pointer);
    refused: row 1's end offset points past the (empty) entries."""
    crow = torch.tensor([0, 0, 1 if refused else 0, 0])
    return crow, torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("refused", [False, True])
@pytest.mark.parametrize("H", [0, 3])
def test_empty_buffers_are_never_written_through(backend, refused, H):
    """Empty tensors (no ratings, a zero-width layer) in every op, refused or not: defined,
    zero results, the refusal raised where it is read. Under the CI sanitizer step a memset
    or memcpy through an empty tensor's null data pointer is a reported fault."""
    crow, col, val = empty_batch(refused)
    h, W, b = layer(3, 5, H)
    out = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    with errors.deferred_on_cpu():
        results = [
            masked_mse(out, (crow, col, val), impl="fused"),
            sparse_output_mse(h, W, b, (crow, col, val), impl="fused", backend=backend),
            sparse_linear((crow, col, val), W, None, impl="fused", backend=backend).sum(),
        ]
        grads = torch.autograd.grad(sum(results), (out, h, W, b), allow_unused=True)
        for t in (*results, *(g for g in grads if g is not None)):
            assert bool(torch.isfinite(t).all()) and float(t.detach().abs().sum()) == 0, t
        if refused:
            with pytest.raises(ValueError, match=r"crow\[2\] = 1"):
                raise_kernel_errors("cpu")
        raise_kernel_errors("cpu")  # nothing (more) waits
