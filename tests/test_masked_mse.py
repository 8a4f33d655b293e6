"""masked_mse: fused vs reference equivalence, gradients, torch.library contracts, errors."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import random_csr
from hypothesis import given, settings
from hypothesis import strategies as st

from deeprec.ops import _native, fused_available, masked_mse, masked_mse_reference
from deeprec.ops import schema as ops

pytestmark = pytest.mark.usefixtures("native_required")

TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}


def loss_and_grad(output, target, impl, scale=1.0):
    out = output.detach().clone().requires_grad_(True)
    loss = masked_mse(out, target, impl=impl)
    (loss * scale).backward()
    return loss.detach(), out.grad


def test_native_module_is_built():
    assert _native.module() is not None
    assert fused_available("cpu")


@settings(max_examples=150, deadline=None)
@given(
    B=st.integers(1, 24),
    N=st.integers(1, 60),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    index_dtype=st.sampled_from([torch.int32, torch.int64]),
)
def test_fused_matches_reference(B, N, density, seed, dtype, index_dtype):
    target = random_csr(B, N, density, seed=seed, dtype=dtype, index_dtype=index_dtype)
    output = torch.randn(B, N, dtype=dtype, generator=torch.Generator().manual_seed(seed)) * 3
    ref_loss, ref_grad = loss_and_grad(output, target, "reference")
    loss, grad = loss_and_grad(output, target, "fused")
    assert loss.dtype == dtype and loss.shape == ()
    torch.testing.assert_close(loss, ref_loss, **TOL[dtype])
    torch.testing.assert_close(grad, ref_grad, **TOL[dtype])


def test_definition_on_a_hand_example():
    # rows: [_, 4, 0.0(explicit)], [], [2, _, _]; the explicit 0.0 is observed.
    crow = torch.tensor([0, 2, 2, 3])
    col = torch.tensor([1, 2, 0])
    val = torch.tensor([4.0, 0.0, 2.0], dtype=torch.float64)
    output = torch.tensor([[9.0, 3.0, 1.0], [5.0, 5.0, 5.0], [2.5, 7.0, 7.0]], dtype=torch.float64)
    expected_loss = ((3 - 4) ** 2 + (1 - 0) ** 2 + (2.5 - 2) ** 2) / 3
    expected_grad = torch.zeros(3, 3, dtype=torch.float64)
    expected_grad[0, 1], expected_grad[0, 2], expected_grad[2, 0] = (
        2 * (3 - 4) / 3,
        2 * (1 - 0) / 3,
        2 * (2.5 - 2) / 3,
    )
    for impl in ("reference", "fused"):
        loss, grad = loss_and_grad(output, (crow, col, val), impl)
        torch.testing.assert_close(loss, torch.tensor(expected_loss, dtype=torch.float64))
        torch.testing.assert_close(grad, expected_grad)


def test_sparse_csr_tensor_target_equals_triple():
    crow, col, val = random_csr(7, 13, 0.3, seed=3)
    dense = torch.zeros(7, 13, dtype=torch.float64)
    rows = torch.repeat_interleave(torch.arange(7), crow.diff())
    dense[rows, col] = val + 1  # shift so no stored value is 0 and to_sparse_csr keeps them all
    target = dense.to_sparse_csr()
    output = torch.randn(7, 13, dtype=torch.float64)
    triple = (target.crow_indices(), target.col_indices(), target.values())
    torch.testing.assert_close(
        masked_mse(output, target, impl="fused"), masked_mse(output, triple, impl="fused")
    )


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_nothing_stored_gives_zero_loss_and_zero_grad(impl):
    output = torch.randn(4, 6, dtype=torch.float64)
    target = (
        torch.zeros(5, dtype=torch.int64),
        torch.zeros(0, dtype=torch.int64),
        torch.zeros(0, dtype=torch.float64),
    )
    loss, grad = loss_and_grad(output, target, impl)
    assert loss.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(output))


def test_incoming_gradient_scales_the_result():
    target = random_csr(9, 31, 0.2, seed=11)
    output = torch.randn(9, 31, dtype=torch.float64)
    _, ref_grad = loss_and_grad(output, target, "reference", scale=-3.5)
    _, grad = loss_and_grad(output, target, "fused", scale=-3.5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_gradcheck_float64(index_dtype):
    target = random_csr(6, 10, 0.4, seed=5, index_dtype=index_dtype)
    output = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda o: masked_mse(o, target, impl="fused"), (output,))


def test_loss_is_independent_of_thread_count():
    target = random_csr(256, 2000, 0.02, seed=2, dtype=torch.float32)
    output = torch.randn(256, 2000)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, g1 = loss_and_grad(output, target, "fused")
        torch.set_num_threads(max(2, before))
        many, g2 = loss_and_grad(output, target, "fused")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, many) and torch.equal(g1, g2)


def test_opcheck_forward_and_backward():
    crow, col, val = random_csr(5, 8, 0.5, seed=1)
    output = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.deeprec.masked_mse.default, (output, crow, col, val))
    grad = torch.tensor(1.5, dtype=torch.float64)
    torch.library.opcheck(
        torch.ops.deeprec.masked_mse_backward.default, (grad, output.detach(), crow, col, val)
    )


def test_torch_compile_fullgraph():
    crow, col, val = random_csr(8, 20, 0.3, seed=4, dtype=torch.float32, index_dtype=torch.int32)
    lin = torch.nn.Linear(20, 20)
    x = torch.randn(8, 20)

    def step(x, crow, col, val):
        return masked_mse(lin(x), (crow, col, val), impl="fused")

    compiled = torch.compile(step, fullgraph=True)
    loss = compiled(x, crow, col, val)
    loss.backward()
    got = [p.grad.clone() for p in lin.parameters()]
    lin.zero_grad()
    ref = masked_mse(lin(x), (crow, col, val), impl="reference")
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for g, p in zip(got, lin.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6)


def test_reference_is_defined_by_structure_not_values():
    crow = torch.tensor([0, 2])
    col = torch.tensor([0, 1])
    val = torch.tensor([0.0, 0.0], dtype=torch.float64)
    output = torch.tensor([[1.0, 3.0]], dtype=torch.float64)
    assert masked_mse_reference(output, crow, col, val).item() == pytest.approx(5.0)


# ---------------------------------------------------------------- bad input
def _good():
    crow, col, val = random_csr(3, 5, 0.5, seed=0)
    return torch.randn(3, 5, dtype=torch.float64), crow, col, val


BAD_CASES = {
    "crow does not start at 0": (lambda o, c, k, v: (o, (c + 1, k, v)), ValueError, "crow"),
    "crow decreases": (
        lambda o, c, k, v: (o, (torch.tensor([0, 3, 1, len(k)]), k, v)),
        ValueError,
        "non-decreasing",
    ),
    "crow ends before nnz": (
        lambda o, c, k, v: (o, (torch.cat([c[:-1], c[-1:] - 1]), k, v)),
        ValueError,
        "nnz",
    ),
    "crow too short": (lambda o, c, k, v: (o, (c[:-1], k, v)), ValueError, "rows"),
    "negative column": (
        lambda o, c, k, v: (o, (c, torch.cat([k[:1] * 0 - 1, k[1:]]), v)),
        ValueError,
        "outside",
    ),
    "column too large": (
        lambda o, c, k, v: (o, (c, torch.cat([k[:-1], k[-1:] * 0 + 5]), v)),
        ValueError,
        "outside",
    ),
    "col/val length mismatch": (lambda o, c, k, v: (o, (c, k, v[:-1])), ValueError, "col has"),
    "float index": (lambda o, c, k, v: (o, (c, k.double(), v)), TypeError, "int32 or int64"),
    "value dtype differs": (lambda o, c, k, v: (o, (c, k, v.float())), TypeError, "dtype"),
    "integer output": (lambda o, c, k, v: (o.long(), (c, k, v)), TypeError, "floating"),
    "1-D output": (lambda o, c, k, v: (o[0], (c, k, v)), ValueError, "2-D"),
    "2-D crow": (lambda o, c, k, v: (o, (c[None], k, v)), ValueError, "1-D"),
    "not a CSR": (lambda o, c, k, v: (o, o.clone()), TypeError, "sparse CSR"),
    "wrong type": (lambda o, c, k, v: (o, [c, k]), TypeError, "triple"),
    "unsorted row": (
        lambda o, c, k, v: (o, (torch.tensor([0, 2, 2, 2]), torch.tensor([3, 1]), v[:2])),
        ValueError,
        "strictly increasing",
    ),
    "duplicate column": (
        lambda o, c, k, v: (o, (torch.tensor([0, 2, 2, 2]), torch.tensor([1, 1]), v[:2])),
        ValueError,
        "strictly increasing",
    ),
    "csr shape mismatch": (
        lambda o, c, k, v: (o, torch.sparse_csr_tensor(c, k, v, size=(3, 6))),
        ValueError,
        "shape",
    ),
}


@pytest.mark.parametrize("impl", ["reference", "fused", "auto"])
@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_raises_a_clear_error(case, impl):
    make, exc, words = BAD_CASES[case]
    output, target = make(*_good())
    with pytest.raises(exc, match=words):
        masked_mse(output, target, impl=impl)


def test_unsorted_row_after_an_empty_first_row_is_caught():
    target = (torch.tensor([0, 0, 2]), torch.tensor([4, 2]), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"col\[1\] = 2 is not strictly increasing"):
        masked_mse(torch.zeros(2, 5), target, impl="fused")


def test_a_non_contiguous_output_gets_the_same_loss_and_gradient():
    """The wrapper hands the kernel a contiguous copy; the gradient reaches the view."""
    crow, col, val = random_csr(5, 4, 0.5, seed=0)
    base = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    got = {}
    for impl in ("fused", "reference"):
        loss = masked_mse(base.t(), (crow, col, val), impl=impl)
        got[impl] = (loss, *torch.autograd.grad(loss, base))
    for a, b in zip(got["fused"], got["reference"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_unknown_impl():
    output, crow, col, val = _good()
    with pytest.raises(ValueError, match="impl"):
        masked_mse(output, (crow, col, val), impl="fast")


def test_float16_on_cpu_fused_raises_and_auto_falls_back_with_one_warning(monkeypatch):
    """The CPU has float32, float64 and bfloat16 kernels; float16 is refused by fused and
    falls back (with one warning) under auto."""
    monkeypatch.setattr(ops, "_warned", set())
    crow, col, val = random_csr(3, 5, 0.5, seed=0, dtype=torch.float16)
    output = torch.randn(3, 5, dtype=torch.float16)
    with pytest.raises(TypeError, match="no fused kernel"):
        masked_mse(output, (crow, col, val), impl="fused")
    with pytest.warns(RuntimeWarning, match="reference"):
        got = masked_mse(output, (crow, col, val), impl="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        masked_mse(output, (crow, col, val), impl="auto")  # warned once only
    torch.testing.assert_close(got, masked_mse_reference(output, crow, col, val))


def test_missing_native_module_fused_raises_auto_falls_back(monkeypatch):
    monkeypatch.setattr(_native, "_C", None)
    monkeypatch.setattr(_native, "IMPORT_ERROR", "ImportError: simulated")
    monkeypatch.setattr(ops, "_warned", set())
    output, crow, col, val = _good()
    assert not fused_available("cpu")
    with pytest.raises(RuntimeError, match="simulated"):
        masked_mse(output, (crow, col, val), impl="fused")
    with pytest.warns(RuntimeWarning, match="simulated"):
        got = masked_mse(output, (crow, col, val))
    torch.testing.assert_close(got, masked_mse_reference(output, crow, col, val))
