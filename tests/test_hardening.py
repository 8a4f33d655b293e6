"""Validation holes, each as a test that failed before the fix.

Raw ``torch.ops.deeprec.*`` calls get the same checks as the public wrappers; a
caller-supplied ColumnIndex must be exactly the batch's own; native work follows the
calling thread's denormal setting; a skipped CUDA test fails under DEEPREC_REQUIRE_CUDA=1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_csr

from deeprec import csr
from deeprec.ops import (
    BACKENDS,
    column_index,
    row_adam_reference,
    row_adam_step,
    sparse_linear,
    sparse_linear_reference,
    sparse_output_mse,
)

pytestmark = pytest.mark.usefixtures("native_required")
ops = torch.ops.deeprec
BAD = (ValueError, TypeError)


def batch(B=6, N=20, seed=0):
    crow, col, val = random_csr(B, N, 0.3, seed=seed)
    return crow, col, val, torch.randn(B, N, dtype=torch.float64)


# ------------------------------------------------------------------ raw ops
def test_raw_masked_mse_refuses_int32_offsets_and_short_crow():
    crow, col, val, out = batch()
    with pytest.raises(TypeError, match="int64"):
        ops.masked_mse(out, crow.int(), col, val)
    with pytest.raises(ValueError, match="crow has"):
        ops.masked_mse(out, crow[:-2], col, val)
    with pytest.raises(ValueError, match="crow has"):
        ops.masked_mse(torch.randn(60, 20, dtype=torch.float64), crow, col, val)


def test_raw_masked_mse_backward_validates_everything():
    crow, col, val, out = batch()
    g = torch.tensor(1.0, dtype=torch.float64)
    bad_col = col.clone()
    bad_col[0] = 10**6
    with pytest.raises(ValueError, match="outside"):
        ops.masked_mse_backward(g, out, crow, bad_col, val)
    with pytest.raises(ValueError, match="grad"):
        ops.masked_mse_backward(torch.ones(2, dtype=torch.float64), out, crow, col, val)
    with pytest.raises(ValueError, match="contiguous"):
        ops.masked_mse_backward(g, out.t().contiguous().t(), crow, col, val)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_linear_bias_must_have_h_entries(backend):
    crow, col, val, _ = batch()
    W = torch.randn(20, 5, dtype=torch.float64)
    one = torch.randn(1, dtype=torch.float64)
    with pytest.raises(ValueError, match="5 entries"):
        sparse_linear((crow, col, val), W, one, impl="fused", backend=backend)
    idx = column_index(crow, col)
    with pytest.raises(ValueError, match="5 entries"):
        ops.sparse_linear(crow, col, val, *idx, W, one, False, backend)
    # what was silently different before: the reference broadcasts a 1-element bias
    assert sparse_linear_reference(csr.CSRParts(crow, col, val), W, one).shape == (6, 5)


def test_sparse_output_bias_must_have_n_entries():
    crow, col, val, _ = batch()
    W = torch.randn(20, 5, dtype=torch.float64)
    h = torch.randn(6, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="20 entries"):
        sparse_output_mse(h, W, torch.zeros(19, dtype=torch.float64), (crow, col, val))


def mutated_indexes(crow, col):
    """(name, ColumnIndex) pairs that are not this batch's index, each in one way."""
    idx = column_index(crow, col)
    perm, ucol, uptr, rows = idx
    other = column_index(*random_csr(6, 20, 0.3, seed=99)[:2])
    yield "strided perm", idx._replace(perm=torch.stack([perm, perm], 1)[:, 0])
    yield "int32 ucol", idx._replace(ucol=ucol.int())
    dup = ucol.clone()
    dup[1] = dup[0]
    yield "duplicated ucol", idx._replace(ucol=dup)
    yield "unsorted ucol", idx._replace(ucol=ucol.flip(0))
    yield "other batch", other
    swapped = perm.clone()
    swapped[[0, -1]] = swapped[[-1, 0]]
    yield "perm out of group", idx._replace(perm=swapped)
    yield "repeated perm", idx._replace(perm=torch.zeros_like(perm))
    yield "rows of another crow", idx._replace(rows=rows.flip(0))
    yield "uptr wrong", idx._replace(uptr=torch.cat([uptr[:1], uptr[2:], uptr[-1:]]))
    yield "2-D ucol", idx._replace(ucol=ucol[None])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", range(10))
def test_a_column_index_must_be_exactly_this_batchs(which, backend):
    crow, col, val, _ = batch()
    _name, bad = list(mutated_indexes(crow, col))[which]
    W = torch.randn(20, 4, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    h = torch.randn(6, 4, dtype=torch.float64)
    bo = torch.randn(20, dtype=torch.float64)
    # Forward reads no index; the weight gradients do, and refuse one that is not exactly
    # this batch's (wrong metadata is refused at once).
    Wg, bog = W.clone().requires_grad_(), bo.clone().requires_grad_()
    with pytest.raises(BAD, match="index"):
        y = sparse_linear((crow, col, val), Wg, b, index=bad, impl="fused", backend=backend)
        y.sum().backward()
    with pytest.raises(BAD, match="index"):
        loss, _ = ops.sparse_output_mse(h, Wg, bog, crow, col, val, *bad, False, backend)
        loss.backward()
    # and the real index passes
    sparse_output_mse(h, W, bo, (crow, col, val), index=column_index(crow, col), impl="fused",
                      backend=backend)  # fmt: skip


def test_an_index_of_a_damaged_crow_is_built_safely_and_refused():
    col = torch.tensor([0, 1], dtype=torch.int64)
    crow = torch.tensor([0, 10**15], dtype=torch.int64)
    W = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    x = (crow, col, torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"crow\[1\] = 1000000000000000"):
        sparse_linear(x, W, None, impl="fused")
    index = column_index(crow, col)  # reads no value: nothing to fault on
    assert index.rows.tolist() == [0, 0]
    with pytest.raises(ValueError, match="crow"):
        sparse_linear(x, W, None, index=index, impl="fused")


# ------------------------------------------------------------------ row Adam
@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("shape", [(50, 17), (30, 70), (40,)])
def test_row_adam_reference_equals_native_and_torch_adam(lazy, shape):
    torch.manual_seed(0)
    p0 = torch.randn(*shape, dtype=torch.float64)
    states = {
        impl: [p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)]
        for impl in ("fused", "reference")
    }
    dense_p = p0.clone().requires_grad_()
    adam = torch.optim.Adam([dense_p], lr=0.01, weight_decay=0.1)
    for step in range(1, 5):
        rows = torch.sort(torch.randperm(shape[0])[:7]).values
        vals = torch.randn(7, *shape[1:], dtype=torch.float64)
        g = torch.sparse_coo_tensor(rows[None], vals, shape)
        for impl, st in states.items():
            row_adam_step(*st, g, step, 0.01, (0.9, 0.999), 1e-8, 0.1, lazy, impl=impl)
        dense_p.grad = g.to_dense()
        adam.step()
    for a, b in zip(states["fused"], states["reference"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    if not lazy:
        torch.testing.assert_close(states["reference"][0], dense_p.detach(), rtol=1e-12, atol=1e-12)


def test_row_adam_checks_devices_and_index_dtype():
    p = torch.zeros(5, 3, dtype=torch.float64)
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    g = torch.sparse_coo_tensor(torch.tensor([[1]]), torch.ones(1, 3, dtype=torch.float64), (5, 3))
    args = (1, 0.1, (0.9, 0.999), 1e-8, 0.0, False)
    with pytest.raises(BAD, match="exp_avg"):
        row_adam_step(p, m.float(), v, g, *args)
    with pytest.raises(BAD, match="contiguous"):
        row_adam_step(torch.zeros(3, 5, dtype=torch.float64).t(), m, v, g, *args)
    with pytest.raises(BAD, match="hyperparameters"):
        row_adam_step(p, m, v, g, 0, 0.1, (0.9, 0.999), 1e-8, 0.0, False)
    with pytest.raises(BAD, match="shape"):
        row_adam_step(p, m, v, torch.ones(4, 3, dtype=torch.float64), *args)
    if torch.cuda.is_available():
        with pytest.raises(BAD, match=r"cuda|cpu"):
            row_adam_step(p, m, v, g.cuda(), *args)


def test_row_adam_reference_is_the_auto_fallback(monkeypatch):
    from deeprec.ops import _native

    monkeypatch.setattr(_native, "_C", None)
    monkeypatch.setattr(_native, "IMPORT_ERROR", "ImportError: simulated")
    p = torch.randn(6, 2, dtype=torch.float64)
    want = [p.clone(), torch.zeros_like(p), torch.zeros_like(p)]
    got = [p.clone(), torch.zeros_like(p), torch.zeros_like(p)]
    g = torch.sparse_coo_tensor(
        torch.tensor([[0, 4]]), torch.ones(2, 2, dtype=torch.float64), (6, 2)
    )
    with pytest.warns(RuntimeWarning, match="reference row_adam_step"):
        row_adam_step(*got, g, 1, 0.1, (0.9, 0.999), 1e-8, 0.0, False)
    row_adam_reference(
        *want,
        torch.tensor([0, 4]),
        torch.ones(2, 2, dtype=torch.float64),
        0.1 / 0.1,
        1 / np.sqrt(1 - 0.999),
        0.9,
        0.999,
        1e-8,
        0.0,
        False,
    )
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------ denormals
def test_native_denormal_mode_follows_the_calling_thread_both_ways():
    """Pool workers used to keep the flush-to-zero bit of whatever was set when they were
    created. Now every job runs with the caller's bits, in either order."""
    B, N = 512, 1000
    crow = torch.arange(B + 1, dtype=torch.int64)
    col = torch.arange(B, dtype=torch.int64) % N
    val = torch.zeros(B, dtype=torch.float64)
    out = torch.zeros(B, N, dtype=torch.float64)
    out[torch.arange(B), col] = 1e-300
    scale = torch.tensor(1e-10, dtype=torch.float64)  # gradient 2e-10/B * 1e-300: denormal

    def stored_grads():
        return ops.masked_mse_backward(scale, out, crow, col, val)[torch.arange(B), col]

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for first, second in ((True, False), (False, True), (True, False)):
            for flush in (first, second):
                assert torch.set_flush_denormal(flush)
                g = stored_grads()
                torch.set_flush_denormal(False)
                if flush:
                    assert torch.count_nonzero(g) == 0, "flushing was asked for on every row"
                else:
                    expected = (2e-10 / B) * 1e-300
                    assert bool((g > 0).all()), f"{int((g == 0).sum())} rows flushed"
                    assert np.allclose(g.numpy(), expected, rtol=1e-6, atol=0)
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


# ------------------------------------------------------------------ REQUIRE_CUDA
def test_require_cuda_turns_a_cuda_skip_into_a_failure(tmp_path):
    tests = Path(__file__).parent
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "DEEPREC_REQUIRE_CUDA": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           str(tests / "test_masked_mse_cuda.py"), "-k", "empty"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 1 and "DEEPREC_REQUIRE_CUDA=1" in r.stdout, r.stdout[-2000:]
    env.pop("DEEPREC_REQUIRE_CUDA")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and "skipped" in r.stdout, r.stdout[-2000:]


def test_the_compiled_module_belongs_to_this_package():
    """_C carries the package version and argument convention; the dtype codes come from it."""
    import deeprec
    from deeprec.ops import _native

    C = _native.module()
    if C is None:
        pytest.skip(f"native module not importable: {_native.IMPORT_ERROR}")
    assert C.__version__ == deeprec.__version__ and C.ABI == _native.NATIVE_ABI
    names = {str(d).removeprefix("torch."): code for d, code in _native.DTYPE_CODE.items()}
    assert names == C.DTYPE_CODES and set(names) == {"float32", "float64", "float16", "bfloat16"}
    index = {str(d).removeprefix("torch."): code for d, code in _native.INDEX_CODE.items()}
    assert index == C.INDEX_CODES and set(index) == {"int32", "int64"}
    from deeprec.ops.errors import CHECKS

    assert dict(C.CHECKS) == CHECKS  # the device checks report under the kernels' codes


@pytest.mark.parametrize("version, abi", [("0.0.1", None), ("same", 1), ("same", None)])
def test_a_stale_build_is_refused_with_one_line(version, abi):
    import types

    import deeprec
    from deeprec.ops import _native

    fake = types.SimpleNamespace(__version__=deeprec.__version__ if version == "same" else version)
    if abi is not None:
        fake.ABI = abi
    reason = _native._stale(fake)
    assert reason is not None and "\n" not in reason
    assert reason.startswith("stale build: deeprec._C is from deeprec")
    assert "pip install ." in reason
    from deeprec.ops.errors import CHECKS

    ok = types.SimpleNamespace(__version__=deeprec.__version__, ABI=_native.NATIVE_ABI,
                               CHECKS=dict(CHECKS))  # fmt: skip
    assert _native._stale(ok) is None
    # the same version and convention, but refusals reported under other check codes
    other = types.SimpleNamespace(**{**vars(ok), "CHECKS": {**CHECKS, "col_range": 99}})
    reason = _native._stale(other)
    assert reason is not None and "check codes" in reason and "\n" not in reason
