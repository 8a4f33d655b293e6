"""deeprec::multinomial_nll, the chunked output layer + multinomial loss: equal to its dense
definition (value and every gradient) on random shapes and chunkings, with either backend;
gradcheck, opcheck; every bad index refused in one line; the chunk rule."""

from __future__ import annotations

import pytest
import torch
from conftest import random_csr
from hypothesis import given, settings
from hypothesis import strategies as st

from deeprec.csr import Batch
from deeprec.ops import BACKENDS, multinomial_nll, multinomial_nll_reference
from deeprec.ops.multinomial import CHUNK_BYTES, CHUNK_RANGE, chunk_items

pytestmark = pytest.mark.usefixtures("native_required")


def layer(B, N, H, dtype=torch.float64, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, H, generator=g, dtype=dtype)
    W = torch.randn(N, H, generator=g, dtype=dtype)
    b = torch.randn(N, generator=g, dtype=dtype)
    return [t.to(device).requires_grad_() for t in (h, W, b)]


def value_and_grads(fn, leaves):
    y = fn(*leaves)
    return [y.detach(), *torch.autograd.grad(y, leaves)]


@st.composite
def batches(draw):
    """A who-rated-what batch with odd sizes, empty rows, one-item rows and full rows."""
    B = draw(st.integers(0, 9))
    N = draw(st.integers(1, 61))
    H = draw(st.integers(1, 9))
    rows = []
    for _ in range(B):
        kind = draw(st.sampled_from(["empty", "one", "full", "some", "some"]))
        if kind == "empty":
            rows.append([])
        elif kind == "one":
            rows.append([draw(st.integers(0, N - 1))])
        elif kind == "full":
            rows.append(list(range(N)))
        else:
            rows.append(sorted(draw(st.sets(st.integers(0, N - 1), max_size=N))))
    crow = torch.tensor([0, *torch.tensor([len(r) for r in rows]).cumsum(0).tolist()])
    index_dtype = draw(st.sampled_from([torch.int32, torch.int64]))
    col = torch.tensor([j for r in rows for j in r], dtype=index_dtype)
    chunk = draw(st.integers(1, N + 3))
    return B, N, H, crow.to(torch.int64), col, chunk


def fused(h, W, b, crow, col, chunk, backend):
    return multinomial_nll(h, W, b, (crow, col), impl="fused", chunk=chunk, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40, deadline=None)
@given(case=batches(), seed=st.integers(0, 1000))
def test_the_op_equals_its_dense_definition_in_float64(backend, case, seed):
    B, N, H, crow, col, chunk = case
    leaves = layer(B, N, H, seed=seed)
    got = value_and_grads(
        lambda h, W, b: fused(h, W, b, crow, col, chunk, backend),
        leaves,
    )
    want = value_and_grads(lambda h, W, b: multinomial_nll_reference(h, W, b, crow, col), leaves)
    for a, w in zip(got, want, strict=True):
        torch.testing.assert_close(a, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=20, deadline=None)
@given(case=batches(), seed=st.integers(0, 1000))
def test_float32_matches_to_float32_tolerance(backend, case, seed):
    B, N, H, crow, col, chunk = case
    leaves = layer(B, N, H, dtype=torch.float32, seed=seed)
    got = value_and_grads(
        lambda h, W, b: fused(h, W, b, crow, col, chunk, backend),
        leaves,
    )
    # the definition in float64, so the tolerance is the float32 op's own error
    want = value_and_grads(
        lambda h, W, b: multinomial_nll_reference(h, W, b, crow, col),
        [t.detach().double().requires_grad_() for t in leaves],
    )
    for a, w in zip(got, want, strict=True):
        torch.testing.assert_close(a, w.float(), rtol=2e-5, atol=2e-5)


def test_large_logits_do_not_overflow_and_the_shift_is_exact():
    """Logits in the hundreds (exp overflows float32 without the running max) and a row's
    maximum in a later chunk than its first items (the running sum is rescaled)."""
    crow, col, _ = random_csr(5, 40, 0.3, seed=2, zeros=False)
    h, W, b = layer(5, 40, 3, dtype=torch.float32, seed=3)
    with torch.no_grad():
        b[35:] += 300.0
        b[:5] -= 200.0
    got = multinomial_nll(h, W, b, (crow, col), impl="fused", chunk=8)
    want = multinomial_nll_reference(*(t.double() for t in (h, W, b)), crow, col)
    assert torch.isfinite(got)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-3)


def test_gradcheck_in_float64():
    crow, col, _ = random_csr(4, 11, 0.4, seed=5, zeros=False)
    for backend in BACKENDS:
        torch.autograd.gradcheck(
            lambda h, W, b, e=backend: multinomial_nll(
                h, W, b, (crow, col), impl="fused", chunk=3, backend=e
            ),
            layer(4, 11, 3, seed=6),
        )
        torch.autograd.gradcheck(  # no output bias
            lambda h, W, e=backend: multinomial_nll(
                h, W, None, (crow, col), impl="fused", chunk=3, backend=e
            ),
            layer(4, 11, 3, seed=7)[:2],
        )


def test_no_bias_is_a_zero_bias():
    crow, col, _ = random_csr(5, 17, 0.3, seed=2, zeros=False)
    h, W, _ = layer(5, 17, 4, seed=3)
    zero = torch.zeros(17, dtype=torch.float64)
    want = value_and_grads(lambda h, W: multinomial_nll_reference(h, W, zero, crow, col), [h, W])
    for impl in ("fused", "reference"):
        for backend in BACKENDS:
            got = value_and_grads(
                lambda h, W, i=impl, e=backend: multinomial_nll(
                    h, W, None, (crow, col), impl=i, chunk=5, backend=e
                ),
                [h, W],
            )
            for a, w in zip(got, want, strict=True):
                torch.testing.assert_close(a, w, rtol=1e-12, atol=1e-12)


def test_every_input_form_gives_the_same_loss():
    crow, col, val = random_csr(6, 25, 0.3, seed=8, zeros=False)
    h, W, b = layer(6, 25, 4, seed=9)
    forms = [
        (crow, col),
        (crow, col, val),
        torch.sparse_csr_tensor(crow, col, val, (6, 25)),
        Batch.from_csr(crow, col, val, 25),
        (crow.to(torch.int32), col.to(torch.int32)),
    ]
    want = multinomial_nll_reference(h, W, b, crow, col)
    for target in forms:
        got = multinomial_nll(h, W, b, target, impl="fused", chunk=4)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(multinomial_nll(h, W, b, (crow, col), impl="reference"), want)


def test_only_the_gradients_asked_for_are_computed():
    crow, col, _ = random_csr(4, 12, 0.3, seed=1, zeros=False)
    h, W, b = layer(4, 12, 3, seed=2)
    for wrt in ([h], [W, b], [W], [b]):
        got = torch.autograd.grad(multinomial_nll(h, W, b, (crow, col), impl="fused"), wrt)
        want = torch.autograd.grad(multinomial_nll_reference(h, W, b, crow, col), wrt)
        for a, w in zip(got, want, strict=True):
            torch.testing.assert_close(a, w, rtol=1e-10, atol=1e-10)


def test_opcheck_forward_and_backward():
    crow, col, _ = random_csr(5, 13, 0.3, seed=4, zeros=False)
    h, W, b = (t.detach() for t in layer(5, 13, 3, dtype=torch.float32, seed=1))
    for backend in BACKENDS:
        args = (h, W, b, crow, col, 4, backend)
        torch.library.opcheck(torch.ops.deeprec.multinomial_nll.default, args)
        _, lse = torch.ops.deeprec.multinomial_nll(*args)
        grad = torch.tensor(1.5)
        back = (grad, h, W, b, crow, col, lse, 4, backend, True, True)
        torch.library.opcheck(torch.ops.deeprec.multinomial_nll_backward.default, back)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "what,edit,says",
    [
        ("col = N", lambda crow, col: col.__setitem__(3, 20), "col[3] = 20 is outside [0, 20)"),
        ("col = -1", lambda crow, col: col.__setitem__(3, -1), "col[3] = -1 is outside"),
        ("col repeats", lambda crow, col: col.__setitem__(3, int(col[2])), "not strictly"),
        ("crow start", lambda crow, col: crow.__setitem__(0, 1), "crow[0] = 1 must be 0"),
        ("crow decreases", lambda crow, col: crow.__setitem__(2, 0), "crow[2] = 0 breaks"),
        ("crow end", lambda crow, col: crow.__setitem__(-1, 10**9), "breaks the offsets"),
    ],
)
def test_bad_indices_are_one_line_naming_the_op(backend, what, edit, says):
    crow, col, _ = random_csr(4, 20, 0.4, seed=3, zeros=False)
    assert int(crow[1]) > 3 and int(crow[2]) > int(crow[1]), "positions 2 and 3 share row 0"
    h, W, b = layer(4, 20, 3, seed=4)
    edit(crow, col)
    for stage in ("forward", "backward"):
        with pytest.raises(ValueError) as err:
            if stage == "forward":
                multinomial_nll(h, W, b, (crow, col), impl="fused", chunk=6, backend=backend)
            else:  # the batch breaks between forward and backward: the backward checks again
                good_crow, good_col, _ = random_csr(4, 20, 0.4, seed=3, zeros=False)
                loss = multinomial_nll(h, W, b, (good_crow, good_col), impl="fused", chunk=6,
                                       backend=backend)  # fmt: skip
                edit(good_crow.numpy(), good_col.numpy())  # unseen by the version counter
                loss.backward()
        message = str(err.value)
        assert "\n" not in message and says in message, message
        op = "multinomial_nll" if stage == "forward" else "multinomial_nll backward"
        assert message.startswith(f"deeprec {op}: target: "), message


def test_metadata_errors_are_one_line():
    crow, col, _ = random_csr(4, 20, 0.4, seed=3, zeros=False)
    h, W, b = (t.detach() for t in layer(4, 20, 3, seed=4))
    bad = [
        (lambda: multinomial_nll(h[:, :2], W, b, (crow, col)), ValueError, r"h must be \(B, 3\)"),
        (lambda: multinomial_nll(h.float(), W, b, (crow, col)), TypeError, "dtype"),
        (lambda: multinomial_nll(h, W, b.float(), (crow, col)), TypeError, "bias: dtype"),
        (lambda: multinomial_nll(h, W, b[:5], (crow, col)), ValueError, "bias must be"),
        (lambda: multinomial_nll(h[:3], W, b, (crow, col)), ValueError, "crow has 5 entries"),
        (lambda: multinomial_nll(h, W, b, (crow, col.float())), TypeError, "col int32"),
        (lambda: fused(h, W, b, crow, col, 0, "native"), ValueError, "chunk must be"),
        (lambda: fused(h, W, b, crow, col, 4, "x"), ValueError, "backend must be"),
        (lambda: multinomial_nll(h, W, b, "x"), TypeError, "target must be"),
    ]
    for call, kind, says in bad:
        with pytest.raises(kind, match=says) as err:
            call()
        assert "\n" not in str(err.value)


def test_the_reference_refuses_bad_indices_too():
    crow, col, _ = random_csr(4, 20, 0.4, seed=3, zeros=False)
    h, W, b = (t.detach() for t in layer(4, 20, 3, seed=4))
    col[3] = 99
    with pytest.raises(ValueError, match="outside"):
        multinomial_nll(h, W, b, (crow, col), impl="reference")


def test_the_chunk_holds_about_chunk_bytes_of_logits():
    lo, hi = CHUNK_RANGE
    for B, N, size in [(512, 87_585, 4), (128, 87_585, 4), (512, 87_585, 8), (7, 50, 4),
                       (4096, 10**6, 4), (1, 10**6, 4)]:  # fmt: skip
        c = chunk_items(B, N, size)
        assert 1 <= c <= N
        if c < N:
            assert c % 128 == 0 and lo <= c <= hi
            assert c == lo or c * B * size <= CHUNK_BYTES  # at most the budget...
            assert c == hi or (c + 128) * B * size > CHUNK_BYTES  # ...and as much as fits
    assert chunk_items(512, 87_585, 4) == 1024


@pytest.mark.cuda
def test_cuda_epilogues_equal_the_definition():
    """Both epilogues on the GPU: the torch ops (what runs there now) and the native CUDA
    kernels (what a measured GPU run may switch on), against the float64 definition."""
    crow, col, _ = random_csr(37, 301, 0.2, seed=1, zeros=False, device="cuda")
    leaves = layer(37, 301, 17, seed=2, device="cuda")
    want = value_and_grads(lambda h, W, b: multinomial_nll_reference(h, W, b, crow, col), leaves)
    for backend in BACKENDS:
        got = value_and_grads(
            lambda h, W, b, e=backend: multinomial_nll(
                h, W, b, (crow, col), impl="fused", chunk=64, backend=e
            ),
            leaves,
        )
        for a, w in zip(got, want, strict=True):
            torch.testing.assert_close(a, w, rtol=1e-10, atol=1e-10)
    bad = col.clone()
    bad[3] = 301
    for backend in BACKENDS:
        from deeprec.ops import raise_kernel_errors

        multinomial_nll(*leaves, (crow, bad), impl="fused", chunk=64, backend=backend)
        with pytest.raises(ValueError, match=r"col\[3\] = 301 is outside"):
            raise_kernel_errors("cuda")


@pytest.fixture
def threads():
    """Run with a given torch thread count, restored after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_chunks_side_by_side_equal_chunks_one_after_another(threads, backend, dtype):
    """With two threads and enough chunks the chunks run side by side on the pool
    (ops/chunk_pool.py): the same loss and gradients as one thread running them in turn,
    and the same bits on every run whichever worker took which chunk."""
    from deeprec.ops.multinomial import _side_by_side

    crow, col, _ = random_csr(12, 97, 0.3, seed=4)
    leaves = [t.detach().to(dtype).requires_grad_() for t in layer(12, 97, 6, seed=2)]

    def run():
        return value_and_grads(lambda h, W, b: fused(h, W, b, crow, col, 5, backend), leaves)

    threads(1)
    assert not _side_by_side(torch.device("cpu"), 20)
    one = run()
    threads(2)
    assert _side_by_side(torch.device("cpu"), 20)
    runs = [run() for _ in range(4)]
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-2, atol=2e-3)
    for a, w in zip(runs[0], one, strict=True):
        torch.testing.assert_close(a.double(), w.double(), **tol)
    for other in runs[1:]:
        for a, w in zip(other, runs[0], strict=True):
            assert torch.equal(a, w), "side-by-side chunks gave different bits on another run"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_refusal_in_a_side_by_side_chunk_reaches_the_caller(threads, backend):
    """A column out of range that only a late chunk reads: refused by the worker that runs it,
    raised in the calling thread in one line; deferred, it waits in the caller's word."""
    from deeprec.ops import errors, raise_kernel_errors

    threads(2)
    crow, col, _ = random_csr(6, 60, 0.3, seed=5)
    col = col.clone()
    col[-1] = 60  # the last row's last item: past the catalogue, in the last chunk
    h, W, b = layer(6, 60, 4)
    with pytest.raises(ValueError, match=r"multinomial_nll.*col\[\d+\] = 60"):
        fused(h, W, b, crow, col, 3, backend)
    if backend == "native":
        with errors.deferred_on_cpu():
            loss = fused(h, W, b, crow, col, 3, backend)
            assert torch.isfinite(loss)
            with pytest.raises(ValueError, match=r"col\[\d+\] = 60"):
                raise_kernel_errors("cpu")


def test_refusals_in_many_side_by_side_chunks_raise_one_message(threads):
    """Offsets broken for every chunk: each worker records the refusal and the caller raises
    it once, the message naming the op and the offset (never a worker's bare refusal)."""
    threads(2)
    crow, col, _ = random_csr(6, 60, 0.3, seed=5)
    crow = crow.clone()
    crow[2] = 10**9
    h, W, b = layer(6, 60, 4)
    for _ in range(30):  # the workers race for the word: every ordering gives one message
        with pytest.raises(ValueError, match=r"multinomial_nll.*crow\[2\] = 1000000000"):
            fused(h, W, b, crow, col, 1, "native")
        # and in the backward, the batch broken after the forward (each chunk refuses)
        ok_crow, ok_col, _ = random_csr(6, 60, 0.3, seed=5)
        loss = fused(h, W, b, ok_crow, ok_col, 1, "native")
        ok_crow.numpy()[2] = 10**9  # through NumPy: autograd's version counter does not see it
        with pytest.raises(ValueError, match=r"multinomial_nll.*crow\[2\] = 1000000000"):
            torch.autograd.grad(loss, (h, W, b))
