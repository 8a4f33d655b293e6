"""Every public op under torch.compile, forward and backward, against the reference: a torch
sparse CSR tensor (fullgraph=False: torch refuses sparse tensors in a full graph), a
(crow, col, val) triple (fullgraph True and False: the column index is a registered op
whose fake declares its data-dependent size), and a deeprec Batch."""

from __future__ import annotations

import pytest
import torch
from conftest import random_csr

from deeprec.csr import Batch, CSRParts
from deeprec.ops import (
    masked_mse,
    masked_mse_reference,
    multinomial_nll,
    multinomial_nll_reference,
    sparse_linear,
    sparse_linear_reference,
    sparse_output_mse,
    sparse_output_mse_reference,
)

pytestmark = pytest.mark.usefixtures("native_required")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
B, N, H = 6, 30, 4


def data(device):
    crow, col, val = random_csr(B, N, 0.3, seed=1, dtype=torch.float32, device=device)
    g = torch.Generator().manual_seed(2)
    p = {
        "out": torch.randn(B, N, generator=g),
        "W": torch.randn(N, H, generator=g),
        "b": torch.randn(H, generator=g),
        "h": torch.randn(B, H, generator=g),
        "Wo": torch.randn(N, H, generator=g),
        "bo": torch.randn(N, generator=g),
    }
    return (crow, col, val), {k: v.to(device) for k, v in p.items()}


def calls(op):
    """(fused call, reference call), each mapping (target, leaves) to a scalar."""
    if op == "masked_mse":
        return (
            lambda t, q: masked_mse(q["out"], t, impl="fused"),
            lambda parts, q: masked_mse_reference(q["out"], *parts),
        )
    if op == "sparse_linear":
        return (
            lambda t, q: sparse_linear(t, q["W"], q["b"], impl="fused").square().sum(),
            lambda parts, q: sparse_linear_reference(parts, q["W"], q["b"]).square().sum(),
        )
    if op == "multinomial_nll":  # chunks of 7 items: several, and a ragged last one
        return (
            lambda t, q: multinomial_nll(q["h"], q["Wo"], q["bo"], t, impl="fused", chunk=7),
            lambda parts, q: multinomial_nll_reference(q["h"], q["Wo"], q["bo"], *parts[:2]),
        )
    return (
        lambda t, q: sparse_output_mse(q["h"], q["Wo"], q["bo"], t, impl="fused"),
        lambda parts, q: sparse_output_mse_reference(q["h"], q["Wo"], q["bo"], parts),
    )


def value_and_grads(fn, target, p):
    leaves = {k: v.clone().requires_grad_() for k, v in p.items()}
    y = fn(target, leaves)
    wrt = list(leaves.values())
    grads = torch.autograd.grad(y, wrt, allow_unused=True)
    zeros = [torch.zeros_like(w) for w in wrt]
    return [y.detach(), *(g if g is not None else z for g, z in zip(grads, zeros, strict=True))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "op", ["masked_mse", "sparse_linear", "sparse_output_mse", "multinomial_nll"]
)
@pytest.mark.parametrize(
    "form,fullgraph",
    [("csr tensor", False), ("triple", True), ("triple", False), ("batch", True)],
)
def test_every_op_compiles_and_matches_the_reference(device, op, form, fullgraph):
    torch._dynamo.reset()
    (crow, col, val), p = data(device)
    if form == "csr tensor":
        target = torch.sparse_csr_tensor(crow, col, val, (B, N))
    elif form == "triple":
        target = (crow, col, val)
    else:
        target = Batch.from_csr(crow, col, val, N)
    fused, reference = calls(op)
    compiled = torch.compile(fused, fullgraph=fullgraph)
    got = value_and_grads(compiled, target, p)
    want = value_and_grads(reference, CSRParts(crow, col, val), p)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_the_column_index_op_passes_opcheck():
    crow, col, _ = random_csr(5, 12, 0.4, seed=3)
    for n in (-1, len(set(col.tolist()))):
        torch.library.opcheck(torch.ops.deeprec.column_index.default, (crow, col, n))
