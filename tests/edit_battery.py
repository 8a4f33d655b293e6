"""Edits torch cannot see, made to a batch's indices before or between an op's calls.

Run by tests/test_kernel_checks.py in a subprocess, so a crash (segfault, bus error,
sanitizer report) fails that test instead of killing the test run. Each case prints its
name before it runs, so a crash names the case that caused it.

An index tensor is written through a path that does not bump its version counter
(``t.numpy()``, ``t.data``, ``torch.from_numpy(t.numpy())``, a ``set_()`` alias,
``untyped_storage().copy_()``), then the op is called (forward), or the edit falls
between the op's forward and backward. Every public op, on a batch built the public way
(RatingMatrix.batches) and on a caller's plain (crow, col, val) triple, on every path: the
fused op on each backend (deeprec's kernels, torch's ops after the device checks) and the
reference route. The op must either raise a one-line ValueError naming the op, or return
what the pure-PyTorch reference returns for the data it used. Prints BATTERY-OK and the
counts at the end.
"""

from __future__ import annotations

import itertools
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import random_csr
from datasets import synthetic_ratings

from deeprec.csr import Batch, CSRParts
from deeprec.data import RatingMatrix
from deeprec.ops import (
    masked_mse,
    masked_mse_reference,
    multinomial_nll,
    multinomial_nll_reference,
    row_adam_reference,
    row_adam_step,
    sparse_linear,
    sparse_linear_reference,
    sparse_output_mse,
    sparse_output_mse_reference,
)

H = 4
counts: Counter = Counter()


# ------------------------------------------------------------------ invisible writes
def via_numpy(t, i, v):
    t.numpy()[i] = v


def via_data(t, i, v):
    t.data[i] = v


def via_from_numpy(t, i, v):
    torch.from_numpy(t.numpy())[i] = v


def via_set_alias(t, i, v):
    alias = torch.empty(0, dtype=t.dtype)
    alias.set_(t.untyped_storage(), t.storage_offset(), t.shape, t.stride())
    alias[i] = v


def via_storage_copy(t, i, v):
    storage = t.untyped_storage()
    changed = torch.empty(0, dtype=t.dtype).set_(storage).clone()  # the whole storage
    changed.as_strided(t.shape, t.stride(), t.storage_offset())[i] = v
    storage.copy_(changed.untyped_storage())


WRITES = [via_numpy, via_data, via_from_numpy, via_set_alias, via_storage_copy]


def invisible(write, t, i, v) -> None:
    before = t._version
    write(t, i, v)
    assert t._version == before, f"{write.__name__} bumped the version counter"


# ------------------------------------------------------------------ the data
def public_batch():
    df = pd.DataFrame(synthetic_ratings(n_users=12, n_items=30, per_user=6, seed=4),
                      columns=["user", "item", "rating", "timestamp"])  # fmt: skip
    m = RatingMatrix.from_split(df, df.iloc[:0], "user", (0.5, 5.0))
    b = next(m.batches(6, shuffle=False))
    assert b.index.perm.numel() == b.nnz  # built now: later edits are edits of a built index
    return b, m.n_cols


def triple_batch():
    crow, col, val = random_csr(6, 30, 0.25, seed=7, dtype=torch.float32)
    return (crow, col, val), 30


def parts(data) -> CSRParts:
    return data.csr if isinstance(data, Batch) else CSRParts(*data)


def edits(data, N):
    """(name, tensor, position, value): one damaging index write each."""
    crow, col, _ = parts(data)
    nnz, B = col.numel(), crow.numel() - 1
    k = int(crow[2]) + 1  # an entry that is not the first of its row
    yield "col = N", col, k, N
    yield "col = -1", col, k, -1
    yield "col huge", col, k, 2**62
    yield "col repeats", col, k, int(col[k - 1])
    yield "crow end huge", crow, B, 10**15
    yield "crow negative", crow, 2, -5
    yield "crow decreases", crow, 1, int(crow[3]) + 1
    yield "crow start", crow, 0, 1
    if isinstance(data, Batch):
        perm, ucol, uptr, rows = data.index
        yield "perm past nnz", perm, 0, nnz
        yield "perm repeats", perm, 1, int(perm[0])
        yield "rows past B", rows, 0, B
        yield "rows wrong", rows, nnz - 1, 0
        yield "ucol past N", ucol, ucol.numel() - 1, N
        yield "uptr past nnz", uptr, 1, nnz + 5


# ------------------------------------------------------------------ the ops
def params(N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "out": torch.randn(6, N, generator=g),
        "W": torch.randn(N, H, generator=g),
        "b": torch.randn(H, generator=g),
        "h": torch.randn(6, H, generator=g),
        "bo": torch.randn(N, generator=g),
    }


# Every path an op can take: (impl, backend).
PATHS = [("fused", "native"), ("fused", "torch"), ("reference", "native")]


def op_forward(name, data, p, grad, path=PATHS[0]):
    """The op's result (a list of tensors: value, then gradients if ``grad``)."""
    impl, backend = path
    leaves = {k: v.clone().requires_grad_(grad) for k, v in p.items()}
    if name == "masked_mse":
        y = masked_mse(leaves["out"], data, impl=impl)
        wrt = [leaves["out"]]
    elif name == "sparse_linear":
        y = sparse_linear(data, leaves["W"], leaves["b"], impl=impl, backend=backend)
        y = y.square().sum()
        wrt = [leaves["W"], leaves["b"]]
    elif name == "multinomial_nll":  # chunks of 7 items: several chunks, a ragged last one
        y = multinomial_nll(leaves["h"], leaves["W"], leaves["bo"], data, impl=impl, chunk=7,
                            backend=backend)  # fmt: skip
        wrt = [leaves["h"], leaves["W"], leaves["bo"]]
    else:
        y = sparse_output_mse(leaves["h"], leaves["W"], leaves["bo"], data, impl=impl,
                              backend=backend)  # fmt: skip
        wrt = [leaves["h"], leaves["W"], leaves["bo"]]
    return y, wrt


def reference(name, snapshot: CSRParts, p):
    """The reference value and gradients for the data as it is now (a cloned snapshot);
    raises ValueError/IndexError/RuntimeError when the reference itself cannot take it."""
    leaves = {k: v.clone().requires_grad_() for k, v in p.items()}
    crow, col, _ = snapshot
    if crow.numel() and (int(crow[0]) != 0 or int(crow[-1]) != col.numel()
                         or bool((crow.diff() < 0).any())):  # fmt: skip
        raise ValueError("reference: bad offsets")
    if name == "masked_mse":
        y = masked_mse_reference(leaves["out"], *snapshot)
        wrt = [leaves["out"]]
    elif name == "sparse_linear":
        y = sparse_linear_reference(snapshot, leaves["W"], leaves["b"]).square().sum()
        wrt = [leaves["W"], leaves["b"]]
    elif name == "multinomial_nll":
        y = multinomial_nll_reference(leaves["h"], leaves["W"], leaves["bo"], crow, col)
        wrt = [leaves["h"], leaves["W"], leaves["bo"]]
    else:
        y = sparse_output_mse_reference(leaves["h"], leaves["W"], leaves["bo"], snapshot)
        wrt = [leaves["h"], leaves["W"], leaves["bo"]]
    return [y.detach(), *torch.autograd.grad(y, wrt)]


def canonical(snapshot: CSRParts, N: int) -> bool:
    crow, col, _ = snapshot
    c, k = crow.numpy(), col.numpy()
    if c[0] != 0 or c[-1] != k.size or (np.diff(c) < 0).any():
        return False
    if k.size and (k.min() < 0 or k.max() >= N):
        return False
    return all((np.diff(k[c[i] : c[i + 1]]) > 0).all() for i in range(c.size - 1))


def judge(case, got, want_fn, valid, forward_saw=None):
    """got: ("raised", message) or ("ok", tensors). A refusal must be a one-line ValueError
    naming the op; a result must be the reference's for the data used: the data as it is,
    or (forward_saw, for an edit between forward and backward) all of it as forward saw it,
    where the op's backward reads what forward kept (the reference route's autograd)."""
    kind, value = got
    if kind == "raised":
        assert "\n" not in value and value.startswith("deeprec "), f"{case}: {value!r}"
        counts["raised"] += 1
        return
    if forward_saw is not None and all(
        torch.allclose(a, b, rtol=1e-4, atol=1e-5)
        for a, b in zip(value, forward_saw(), strict=True)
    ):
        counts["reference"] += 1
        return
    assert valid, f"{case}: accepted a malformed batch"
    want = want_fn()
    for a, b in zip(value, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"{case}: {m}")
    counts["reference"] += 1


def attempt(fn):
    try:
        return "ok", fn()
    except ValueError as exc:
        return "raised", str(exc)


def run_op_cases():
    for make in (public_batch, triple_batch):
        for name in ("masked_mse", "sparse_linear", "sparse_output_mse", "multinomial_nll"):
            paths = PATHS[::2] if name == "masked_mse" else PATHS  # no backends to choose
            for path, write, when in itertools.product(paths, WRITES, ("before", "between")):
                n_edits = len(list(edits(*make())))
                for e in range(n_edits):
                    data, N = make()
                    what, t, i, v = list(edits(data, N))[e]
                    case = (f"{make.__name__} {name} {'/'.join(path)} {what} via "
                            f"{write.__name__} {when}")  # fmt: skip
                    print(case, flush=True)
                    p = params(N)
                    forward_saw = None
                    if when == "before":
                        op_forward(name, data, p, grad=False, path=path)  # a first call, unedited
                        invisible(write, t, i, v)
                        snap = CSRParts(*(x.clone() for x in parts(data)))

                        def call(data=data, p=p, name=name, path=path):
                            y, wrt = op_forward(name, data, p, grad=True, path=path)
                            return [y.detach(), *torch.autograd.grad(y, wrt)]
                    else:
                        unedited = CSRParts(*(x.clone() for x in parts(data)))
                        y, wrt = op_forward(name, data, p, grad=True, path=path)
                        invisible(write, t, i, v)
                        snap = CSRParts(*(x.clone() for x in parts(data)))
                        forward_saw = lambda n=name, s=unedited, p=p: reference(n, s, p)  # noqa: E731

                        def call(y=y, wrt=wrt):
                            return [y.detach(), *torch.autograd.grad(y, wrt)]

                    got = attempt(call)
                    index_edit = what.split()[0] in ("perm", "rows", "ucol", "uptr")
                    # masked_mse and multinomial_nll read no column index; the sparse
                    # ops' fused backward does
                    reads_index = name not in ("masked_mse", "multinomial_nll")
                    reads_index = reads_index and path[0] == "fused"
                    valid = canonical(snap, N) and not (reads_index and index_edit)
                    judge(case, got, lambda n=name, s=snap, p=p: reference(n, s, p), valid,
                          forward_saw)  # fmt: skip


def run_adam_cases():
    N = 20
    for impl, write in itertools.product(("fused", "reference"), WRITES):
        for what, i, v in (("row = N", 2, N), ("row = -1", 0, -1), ("row repeats", 3, 2),
                           ("row huge", 1, 2**62)):  # fmt: skip
            case = f"row_adam_step {impl} {what} via {write.__name__}"
            print(case, flush=True)
            p = torch.randn(N, H)
            m, s = torch.zeros_like(p), torch.zeros_like(p)
            ids = torch.tensor([[1, 4, 7, 9, 15]])
            grad = torch.sparse_coo_tensor(ids, torch.randn(5, H), (N, H)).coalesce()
            invisible(write, grad._indices()[0], i, v)
            before = p.clone()
            got = attempt(
                lambda p=p, m=m, s=s, grad=grad, impl=impl: row_adam_step(
                    p, m, s, grad, 1, 1e-2, (0.9, 0.999), 1e-8, 0.0, False, impl=impl
                )
            )
            assert got[0] == "raised", f"{case}: accepted {grad._indices()}"
            assert torch.equal(p, before), f"{case}: the parameter moved"
            judge(case, got, None, False)
    # and an untouched gradient still matches the reference
    p = torch.randn(N, H)
    q = p.clone()
    ids = torch.tensor([1, 4, 7])
    vals = torch.randn(3, H)
    grad = torch.sparse_coo_tensor(ids[None], vals, (N, H)).coalesce()
    row_adam_step(p, torch.zeros_like(p), torch.zeros_like(p), grad, 1, 1e-2, (0.9, 0.999),
                  1e-8, 0.0, False, impl="fused")  # fmt: skip
    row_adam_reference(q, torch.zeros_like(q), torch.zeros_like(q), ids, vals, 1e-2 / 0.1,
                       1 / (1 - 0.999) ** 0.5, 0.9, 0.999, 1e-8, 0.0, False)  # fmt: skip
    torch.testing.assert_close(p, q)


if __name__ == "__main__":
    run_op_cases()
    run_adam_cases()
    print(f"BATTERY-OK raised={counts['raised']} reference={counts['reference']}")
