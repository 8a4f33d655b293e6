"""Validation once per batch (#14): deeprec's own batches are checked when built and not at
every op call; anything else, or one of ours changed since, is checked again."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import random_csr
from datasets import synthetic_ratings

from deeprec import csr
from deeprec.data import RatingMatrix
from deeprec.data.resident import ResidentMatrix
from deeprec.ops import masked_mse


def our_batch(device: str = "cpu", resident: bool = False):
    df = pd.DataFrame(synthetic_ratings(), columns=["user", "item", "rating", "timestamp"])
    m = RatingMatrix.from_split(df, df.iloc[:0], "user", (0.5, 5.0))
    source = ResidentMatrix(m, device) if resident else m
    return next(source.batches(8, device, shuffle=False))


@pytest.mark.parametrize("resident", [False, True])
def test_our_batches_are_remembered_and_skip_the_check(resident, monkeypatch):
    b = our_batch(resident=resident)
    parts = csr.CSRParts(*b.csr)
    assert csr._known(parts, b.n_cols)
    seen = []
    known = csr._known
    monkeypatch.setattr(csr, "_known", lambda *a: seen.append(known(*a)) or seen[-1])
    out = torch.randn(8, b.n_cols, requires_grad=True)
    masked_mse(out, b.csr, impl="fused").backward()
    assert seen and all(seen)  # every check the op made found the batch already checked
    assert not known(parts, b.n_cols + 1)  # another width is another question


@pytest.mark.parametrize("resident", [False, True])
def test_a_remembered_batch_changed_in_place_is_checked_again(resident):
    b = our_batch(resident=resident)
    out = torch.randn(8, b.n_cols)
    masked_mse(out, b.csr, impl="fused")
    b.col[3] = b.n_cols + 10**6  # would be an out-of-bounds read
    assert not csr._known(csr.CSRParts(*b.csr), b.n_cols)
    with pytest.raises(ValueError, match="column"):
        masked_mse(out, b.csr, impl="fused")


def test_tensors_that_are_not_ours_are_checked_at_every_call():
    crow, col, val = random_csr(6, 30, 0.3, seed=1, dtype=torch.float32)
    out = torch.randn(6, 30)
    masked_mse(out, (crow, col, val), impl="fused")
    assert not csr._known(csr.CSRParts(crow, col, val), 30)
    col[0] = 10**6
    with pytest.raises(ValueError):
        masked_mse(out, (crow, col, val), impl="fused")


def test_a_dead_batch_leaves_no_entry_and_a_new_col_is_not_trusted():
    b = our_batch()
    key = id(b.crow)
    assert key in csr._checked
    crow = b.crow
    swapped = csr.CSRParts(crow, b.col.clone(), b.val)  # same values, another tensor
    assert not csr._known(swapped, b.n_cols)
    del b, swapped, crow
    import gc

    gc.collect()
    assert key not in csr._checked


def test_eager_fused_loss_gradient_equals_the_reference_float64():
    crow, col, val = random_csr(11, 57, 0.2, seed=3)
    out = torch.randn(11, 57, dtype=torch.float64, requires_grad=True)
    a = masked_mse(out, (crow, col, val), impl="fused")
    (ga,) = torch.autograd.grad(a * 3.0, out)
    r = masked_mse(out, (crow, col, val), impl="reference")
    (gr,) = torch.autograd.grad(r * 3.0, out)
    torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ga, gr, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda o: masked_mse(o, (crow, col, val), impl="fused"), (out,), eps=1e-6
    )


@pytest.mark.parametrize("resident", [False, True])
def test_a_remembered_index_changed_in_place_is_checked_again(resident):
    from deeprec.model import AutoEncoder

    b = our_batch(resident=resident)
    index = b.index
    parts = csr.CSRParts(*b.csr)
    assert csr._index_known(index, parts, b.n_cols)
    model = AutoEncoder(b.n_cols, [6])
    model.sparse_loss(*b.csr, index=index, impl="fused").backward()  # fine as built
    index.perm[[0, 1]] = index.perm[[1, 0]]  # another batch's order: wrong sums if trusted
    assert not csr._index_known(index, parts, b.n_cols)
    with pytest.raises(ValueError, match="index"):
        model.sparse_loss(*b.csr, index=index, impl="fused")
