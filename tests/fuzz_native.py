"""Hypothesis fuzzing of every native entry point with malformed arguments.

Run by tests/test_fuzz.py in a subprocess, so a crash (segfault, abort, sanitizer
report) fails that test instead of killing the test run. Entry points: the raw
registered ops (torch.ops.deeprec.masked_mse, masked_mse_backward, sparse_linear,
sparse_output_mse, spmm_rows, col_accumulate), the public wrappers forward and
backward, and row_adam_step; the sparse ops on either backend (deeprec's kernels, or
torch's sparse ops after the device checks). One argument at a time is mutated (CSR parts, int32
offsets, weight, bias, h, output, every ColumnIndex component, gradient scales,
optimizer state), at one of three times: before the call; in place between two calls
(the first unmutated); or in place between forward and backward. In-place edits are
written through NumPy, which torch's version counter does not see. The unmutated call
must succeed and equal the pure-PyTorch reference; a mutated call must raise
ValueError/TypeError or equal the reference for the data it used (forward: the data as it
was; backward: as it is). Prints its seed first (DEEPREC_FUZZ_SEED=<seed> replays a run;
unset, each run explores new cases) and FUZZ-OK at the end.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import random_csr

from deeprec import csr
from deeprec.ops import (
    BACKENDS,
    column_index,
    masked_mse,
    masked_mse_reference,
    row_adam_step,
    sparse_linear,
    sparse_linear_reference,
    sparse_output_mse,
    sparse_output_mse_reference,
)

D = torch.float64
ops = torch.ops.deeprec
REFUSED = (ValueError, TypeError)

# ------------------------------------------------------------------ mutations
# Each takes the case dict and a draw function and changes one argument in place.
# Returns False when it does not apply to this case (then the case stays valid).


def _entry(c, draw):
    return draw(0, c["col"].numel() - 1)


CSR_MUTATIONS = {
    "crow_start": lambda c, d: c.__setitem__("crow", _set(c["crow"], 0, d(1, 5))),
    "crow_decrease": lambda c, d: (
        c["B"] >= 2 and c.__setitem__("crow", _set(c["crow"], d(1, c["B"] - 1), -d(1, 10))) is None
    ),
    "crow_past_nnz": lambda c, d: c.__setitem__(
        "crow", _set(c["crow"], -1, c["col"].numel() + d(1, 10**6))
    ),
    "crow_huge": lambda c, d: c.__setitem__("crow", _set(c["crow"], -1, 10**15)),
    "crow_short_of_nnz": lambda c, d: (
        c["col"].numel() > 0
        and c.__setitem__("crow", _set(c["crow"], -1, c["col"].numel() - 1)) is None
    ),
    "crow_int32": lambda c, d: c.__setitem__("crow", c["crow"].int()),
    "crow_short": lambda c, d: c.__setitem__("crow", c["crow"][:-1]),
    "crow_float": lambda c, d: c.__setitem__("crow", c["crow"].double()),
    "crow_2d": lambda c, d: c.__setitem__("crow", c["crow"][None]),
    "col_negative": lambda c, d: (
        c["col"].numel() > 0
        and c.__setitem__("col", _set(c["col"], _entry(c, d), -d(1, 2**30))) is None
    ),
    "col_too_large": lambda c, d: (
        c["col"].numel() > 0
        and c.__setitem__("col", _set(c["col"], _entry(c, d), c["N"] + d(0, 1000))) is None
    ),
    "col_huge": lambda c, d: (
        c["col"].numel() > 0
        and c.__setitem__("col", _set(c["col"].long(), _entry(c, d), 2**62)) is None
    ),
    "col_short": lambda c, d: c["col"].numel() > 0 and c.__setitem__("col", c["col"][:-1]) is None,
    "col_float": lambda c, d: c.__setitem__("col", c["col"].double()),
    "col_noncontiguous": lambda c, d: c.__setitem__(
        "col", torch.stack([c["col"], c["col"]], 1)[:, 0]
    ),
    "val_short": lambda c, d: c["col"].numel() > 0 and c.__setitem__("val", c["val"][:-1]) is None,
    "val_dtype": lambda c, d: c.__setitem__("val", c["val"].float()),
    "val_int": lambda c, d: c.__setitem__("val", c["val"].long()),
    "val_noncontiguous": lambda c, d: c.__setitem__(
        "val", torch.stack([c["val"], c["val"]], 1)[:, 0]
    ),
    "val_nan": lambda c, d: (
        c["col"].numel() > 0
        and c.__setitem__("val", _set(c["val"], _entry(c, d), float("nan"))) is None
    ),
    "row_unsorted": lambda c, d: _break_row(c, flip=True),
    "row_duplicate": lambda c, d: _break_row(c, flip=False),
    "empty_everything": lambda c, d: (
        [c.__setitem__(k, c[k][:0]) for k in ("crow", "col", "val")] and True
    ),
}


def _set(t, i, v):
    t = t.clone()
    t[i] = v
    return t


def _break_row(c, flip: bool) -> bool:
    crow, col = c["crow"], c["col"].clone()
    for r in range(c["B"]):
        a, b = int(crow[r]), int(crow[r + 1])
        if b - a >= 2:
            if flip:
                col[a:b] = col[a:b].flip(0)
            else:
                col[a + 1] = col[a]
            c["col"] = col
            return True
    return False


def _tensor_mutations(key: str) -> dict:
    """Shape, rank, dtype and contiguity mutations of a dense tensor argument."""

    def rows(c, d):
        t = c[key]
        return t.dim() >= 1 and c.__setitem__(key, torch.cat([t, t[:1]])) is None

    def cols(c, d):
        t = c[key]
        return t.dim() == 2 and c.__setitem__(key, torch.cat([t, t[:, :1]], 1)) is None

    def noncontig(c, d):
        t = c[key]
        return t.numel() > 1 and c.__setitem__(key, torch.stack([t, t], -1)[..., 0]) is None

    return {
        f"{key}_rows": rows,
        f"{key}_cols": cols,
        f"{key}_noncontiguous": noncontig,
        f"{key}_dtype": lambda c, d: c.__setitem__(key, c[key].float()),
        f"{key}_flat": lambda c, d: c.__setitem__(key, c[key].reshape(-1)),
        f"{key}_one": lambda c, d: c.__setitem__(key, c[key].reshape(-1)[:1].clone()),
    }


def _index_mutations() -> dict:
    def comp(i, fn):
        def mutate(c, d):
            if c.get("index") is None:
                return False
            idx = list(c["index"])
            new = fn(idx[i], c, d)
            if new is None:
                return False
            idx[i] = new
            c["index"] = csr.ColumnIndex(*idx)
            return True

        return mutate

    def dup(t, c, d):
        if t.numel() < 2:
            return None
        return _set(t, 1, t[0])

    def swap(t, c, d):
        if t.numel() < 2:
            return None
        t = t.clone()
        t[[0, -1]] = t[[-1, 0]]
        return t

    out = {}
    for i, name in enumerate(csr.ColumnIndex._fields):
        out[f"index_{name}_strided"] = comp(
            i, lambda t, c, d: torch.stack([t, t], 1)[:, 0] if t.numel() > 1 else None
        )
        out[f"index_{name}_int32"] = comp(i, lambda t, c, d: t.int())
        out[f"index_{name}_short"] = comp(i, lambda t, c, d: t[:-1] if t.numel() else None)
        out[f"index_{name}_dup"] = comp(i, dup)
        out[f"index_{name}_swap"] = comp(i, swap)
        out[f"index_{name}_big"] = comp(
            i, lambda t, c, d: _set(t, -1, 10**12) if t.numel() else None
        )
        out[f"index_{name}_negative"] = comp(
            i, lambda t, c, d: _set(t, 0, -1) if t.numel() else None
        )

    def other_batch(c, d):
        if c.get("index") is None:
            return False
        crow, col, _ = random_csr(c["B"], c["N"], 0.5, seed=d(0, 2**20))
        c["index"] = column_index(crow, col)
        return True

    out["index_other_batch"] = other_batch
    return out


def _scale_mutations(key: str) -> dict:
    return {
        f"{key}_two": lambda c, d: c.__setitem__(key, torch.ones(2, dtype=D)),
        f"{key}_dtype": lambda c, d: c.__setitem__(key, torch.ones((), dtype=torch.float32)),
        f"{key}_int": lambda c, d: c.__setitem__(key, torch.ones((), dtype=torch.int64)),
    }


GRAD_EDITS = {  # row Adam's gradient: (key, edit)
    "rows_oob": ("gidx", lambda t, c, d: _set(t, -1, c["p"].shape[0] + d(0, 9))),
    "rows_negative": ("gidx", lambda t, c, d: _set(t, 0, -1)),
    "rows_unsorted": ("gidx", lambda t, c, d: t.flip(0) if t.numel() > 1 else None),
    "rows_dup": ("gidx", lambda t, c, d: _set(t, 1, t[0]) if t.numel() > 1 else None),
    "values_width": ("gval", lambda t, c, d: t[:, :-1] if t.dim() == 2 else None),
    "values_dtype": ("gval", lambda t, c, d: t.float()),
}


def _grad_mutation(name: str):
    key, edit = GRAD_EDITS[name]

    def mutate(c, d):
        new = edit(c[key], c, d)
        if new is None:
            return False
        c[key] = new
        return True

    return mutate


MUTATIONS: dict = {
    "none": lambda c, d: True,
    **CSR_MUTATIONS,
    **_tensor_mutations("output"),
    **_tensor_mutations("W"),
    **_tensor_mutations("b"),
    **_tensor_mutations("h"),
    **_tensor_mutations("A"),
    **_tensor_mutations("coef"),
    **_index_mutations(),
    **_scale_mutations("scale"),
    "n_cols_negative": lambda c, d: c.__setitem__("n_cols", -d(1, 5)),
    "n_cols_small": lambda c, d: c.__setitem__("n_cols", max(c["n_cols"] - 1, 0)),
    # row Adam
    **_tensor_mutations("p"),
    **_tensor_mutations("m"),
    **_tensor_mutations("v"),
    **{f"grad_{k}": _grad_mutation(k) for k in GRAD_EDITS},
    "grad_dense": lambda c, d: c.__setitem__("dense_grad", c["gval"] is not None),
    "step_zero": lambda c, d: c.__setitem__("step", 0 if "step" in c else c["no-step"]),
}  # fmt: skip

# ------------------------------------------------------------------ cases per op
H_WIDTHS = st.sampled_from([1, 3, 8, 16, 17, 33])


def make_case(op, B, N, H, density, seed):
    crow, col, val = random_csr(B, N, density, seed=seed)
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, dtype=D, generator=g)

    c = {"op": op, "B": B, "N": N, "H": H, "crow": crow, "col": col, "val": val}
    if op in ("mse", "mse_backward", "mse_wrapper"):
        c["output"] = rnd(B, N)
        c["scale"] = rnd(())
    if op in ("linear", "linear_wrapper"):
        c.update(W=rnd(N, H), b=rnd(H), up=rnd(B, H))
    if op in ("output", "output_wrapper"):
        c.update(h=rnd(B, H), W=rnd(N, H), b=rnd(N), scale=rnd(()))
    if op == "spmm_rows":
        c.update(W=rnd(N, H), scale=rnd(()))
    if op == "col_accumulate":
        c.update(coef=rnd(col.numel()), A=rnd(B, H), n_cols=N, scale=rnd(()))
    if op in ("linear", "output", "col_accumulate") or (
        op.endswith("_wrapper") and op != "mse_wrapper"
    ):
        c["index"] = column_index(crow, col)
    if op == "row_adam":
        shape = (N, H) if H > 1 else (N,)
        c.update(p=rnd(*shape), m=rnd(*shape).abs() * 0.1, v=rnd(*shape).abs() * 0.1, step=3)
        k = max(1, N // 3)
        c["gidx"] = torch.sort(torch.randperm(N, generator=g)[:k]).values
        c["gval"] = rnd(k, *shape[1:])
    return c


def _repeat(values, counts):
    """repeat_interleave that refuses absurd counts (a mutated offset of 10**15 would make
    it allocate petabytes, which ASan aborts on instead of raising)."""
    if bool((counts < 0).any()) or int(counts.sum()) > 10**6:
        raise ValueError("reference: counts out of range")
    return torch.repeat_interleave(values, counts)


def _dense(crow, col, val, B, N):
    dense = torch.zeros(B, N, dtype=D)
    rows = _repeat(torch.arange(B), crow.long().diff())
    dense[rows, col.long()] = val.to(D)
    return dense


def reference(c):
    """The pure-PyTorch answer for the case as it stands (it may raise on bad input)."""
    op, crow, col, val = c["op"], c["crow"], c["col"], c["val"]
    parts = csr.CSRParts(crow, col, val)
    if op in ("mse", "mse_wrapper"):
        out = c["output"].clone().requires_grad_()
        loss = masked_mse_reference(out, crow, col, val)
        return [loss.detach(), *torch.autograd.grad((loss * c["scale"]).sum(), out)]
    if op == "mse_backward":
        out = c["output"].clone().requires_grad_()
        return list(
            torch.autograd.grad((masked_mse_reference(out, crow, col, val) * c["scale"]).sum(), out)
        )
    if op in ("linear", "linear_wrapper"):
        W, b = c["W"].clone().requires_grad_(), c["b"].clone().requires_grad_()
        y = sparse_linear_reference(parts, W, b)
        return [y.detach(), *torch.autograd.grad((y * c["up"][: y.shape[0]]).sum(), (W, b))]
    if op in ("output", "output_wrapper"):
        h, W, b = (c[k].clone().requires_grad_() for k in ("h", "W", "b"))
        loss = sparse_output_mse_reference(h, W, b, parts)
        return [loss.detach(), *torch.autograd.grad((loss * c["scale"]).sum(), (h, W, b))]
    if op == "spmm_rows":
        return [c["scale"] * _dense(crow, col, val, crow.numel() - 1, c["W"].shape[0]) @ c["W"]]
    if op == "col_accumulate":
        # col_accumulate sees only the index: each entry's column and row come from it
        perm, ucol, uptr, rows = c["index"]
        col = torch.zeros(perm.numel(), dtype=torch.int64)
        col[perm] = _repeat(ucol, uptr.diff())
        terms = c["scale"] * c["coef"]
        A, n = c["A"], c["n_cols"]
        dW = torch.zeros(n, A.shape[1], dtype=D).index_add(0, col, terms[:, None] * A[rows])
        db = torch.zeros(n, dtype=D).index_add(0, col, terms)
        return [dW, db, dW[c["index"].ucol], db[c["index"].ucol]]
    if op == "row_adam":
        state = [c[k].clone() for k in ("p", "m", "v")]
        grad = adam_grad(c)
        row_adam_step(*state, grad, c["step"], 1e-2, (0.9, 0.99), 1e-8, 0.01, c["lazy"],
                      impl="reference")  # fmt: skip
        return state
    raise AssertionError(op)


def adam_grad(c):
    """Row Adam's gradient as the case describes it: sparse rows, or (mutated) dense."""
    shape = c["p"].shape
    if c.get("dense_grad"):
        grad = torch.zeros(shape, dtype=c["gval"].dtype)
        grad[c["gidx"]] = c["gval"]
        return grad
    return torch.sparse_coo_tensor(
        c["gidx"][None], c["gval"], (shape[0], *c["gval"].shape[1:]), check_invariants=False
    )


def call(c, between=lambda: None):
    """The native result for the (possibly mutated) case, as a list of tensors.

    between(): runs after the forward pass and before the backward pass (for ops without
    a backward, before the call)."""
    op = c["op"]
    crow, col, val = c["crow"], c["col"], c["val"]
    if op == "mse":
        out = c["output"].clone().requires_grad_()
        loss = ops.masked_mse(out, crow, col, val)
        between()
        grad = ops.masked_mse_backward(c["scale"], out.detach(), crow, col, val)
        return [loss, grad]
    if op == "mse_wrapper":
        out = c["output"].clone().requires_grad_()
        loss = masked_mse(out, (crow, col, val), impl="fused")
        between()
        return [loss.detach(), *torch.autograd.grad((loss * c["scale"]).sum(), out)]
    if op == "linear":
        W, b = c["W"].clone().requires_grad_(), c["b"].clone().requires_grad_()
        y = ops.sparse_linear(crow, col, val, *c["index"], W, b, False, c["backend"])
        between()
        return [y.detach(), *torch.autograd.grad((y * c["up"][: y.shape[0]]).sum(), (W, b))]
    if op == "linear_wrapper":
        W, b = c["W"].clone().requires_grad_(), c["b"].clone().requires_grad_()
        y = sparse_linear((crow, col, val), W, b, index=c["index"], impl="fused",
                          backend=c["backend"])  # fmt: skip
        between()
        return [y.detach(), *torch.autograd.grad((y * c["up"][: y.shape[0]]).sum(), (W, b))]
    if op in ("output", "output_wrapper"):
        h, W, b = (c[k].clone().requires_grad_() for k in ("h", "W", "b"))
        if op == "output":
            loss = ops.sparse_output_mse(h, W, b, crow, col, val, *c["index"], False,
                                         c["backend"])[0]  # fmt: skip
        else:
            loss = sparse_output_mse(h, W, b, (crow, col, val), index=c["index"], impl="fused",
                                     backend=c["backend"])  # fmt: skip
        between()
        return [loss.detach(), *torch.autograd.grad((loss * c["scale"]).sum(), (h, W, b))]
    between()
    if op == "mse_backward":
        return [ops.masked_mse_backward(c["scale"], c["output"], crow, col, val)]
    if op == "spmm_rows":
        return [ops.spmm_rows(crow, col, val, c["W"], c["scale"], c["backend"])]
    if op == "col_accumulate":
        args = (*c["index"], crow, col, c["coef"], c["A"], c["n_cols"], True, c["scale"])
        return [*ops.col_accumulate(*args, False, c["backend"]),
                *ops.col_accumulate(*args, True, c["backend"])]  # fmt: skip
    if op == "row_adam":
        state = [c[k].clone() if k == "p" else c[k] for k in ("p", "m", "v")]
        state[1:] = [t.clone() if t.is_contiguous() else t for t in state[1:]]
        grad = adam_grad(c)
        row_adam_step(*state, grad, c["step"], 1e-2, (0.9, 0.99), 1e-8, 0.01, c["lazy"],
                      impl="fused")  # fmt: skip
        return state
    raise AssertionError(op)


OUTCOMES = {"valid": 0, "refused": 0, "accepted": 0}
OPS = ["mse", "mse_wrapper", "mse_backward", "linear", "linear_wrapper", "output",
       "output_wrapper", "spmm_rows", "col_accumulate", "row_adam"]  # fmt: skip


def close(got, want) -> bool:
    return len(got) == len(want) and all(
        a.shape == b.shape and torch.allclose(a.to(D), b, rtol=1e-9, atol=1e-9, equal_nan=True)
        for a, b in zip(got, want, strict=True)
    )


def in_place_plan(c, mutated):
    """The mutation as invisible in-place writes into c's own tensors: a function that
    makes them (through NumPy, unseen by the version counter), or None when the mutation
    changes a shape, dtype or layout and so cannot be made in place."""
    writes = []
    for key, new in mutated.items():
        old = c.get(key)
        if key == "index" and new is not old and old is not None:
            pairs = list(zip(old, new, strict=True))
        elif isinstance(new, torch.Tensor) and new is not old:
            pairs = [(old, new)]
        else:
            continue
        for o, n in pairs:
            if o is n:
                continue
            if not (isinstance(o, torch.Tensor) and isinstance(n, torch.Tensor)):
                return None
            if o.shape != n.shape or o.dtype != n.dtype or not o.is_contiguous():
                return None
            writes.append((o, n.contiguous().clone()))
    if not writes:
        return None

    def apply():
        for o, n in writes:
            o.numpy()[...] = n.numpy()

    return apply


def attempt(fn):
    """The native call's result, or None when it refused with a Python error."""
    try:
        return fn()
    except REFUSED:
        return None


def expected(fn):
    """The reference's answer, or None when it cannot make sense of the data either."""
    try:
        return fn()
    except Exception:
        return None


def judge(op, kind, got, want):
    if got is None:
        OUTCOMES["refused"] += 1
        return  # refused with a Python error: the contract
    assert want is not None, f"{op}/{kind}: accepted input the reference cannot evaluate"
    assert close(got, want), f"{op}/{kind}: accepted, but native != reference"
    OUTCOMES["accepted"] += 1


@settings(max_examples=5000, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    op=st.sampled_from(OPS),
    B=st.integers(1, 8),
    N=st.integers(1, 20),
    H=H_WIDTHS,
    density=st.floats(0, 1),
    seed=st.integers(0, 2**20),
    kind=st.sampled_from(sorted(MUTATIONS)),
    when=st.sampled_from(["before", "between calls", "between forward and backward"]),
    lazy=st.booleans(),
    backend=st.sampled_from(BACKENDS),
    data=st.data(),
)
def fuzz(op, B, N, H, density, seed, kind, when, lazy, backend, data):
    c = make_case(op, B, N, H, density, seed)
    c["lazy"], c["backend"] = lazy, backend
    draw = lambda lo, hi: data.draw(st.integers(lo, hi))  # noqa: E731
    mutated = dict(c)
    changed = False
    if kind != "none":
        try:  # False: does not apply to this case; KeyError: names an argument op lacks
            changed = MUTATIONS[kind](mutated, draw) is not False
        except KeyError:
            changed = False
    plan = in_place_plan(c, mutated) if changed and when != "before" else None
    if changed and when != "before" and plan is None:
        changed = False  # not an edit that can be made in place: run the valid case
    if not changed:
        want = reference(c)
        got = call(c)  # a valid call must succeed
        assert close(got, want), f"{op}/valid: native != reference"
        OUTCOMES["valid"] += 1
        return
    if when == "before":
        judge(op, kind, attempt(lambda: call(mutated)), expected(lambda: reference(mutated)))
        return
    before = reference(c)
    if when == "between calls":
        assert close(call(c), before), f"{op}/valid: native != reference"
        plan()
        judge(op, kind, attempt(lambda: call(c)), expected(lambda: reference(c)))
        return
    # Between forward and backward: forward saw the data as it was. Backward saw it as it
    # is where it reads it again, or as it was where it kept what forward computed from it
    # (sparse_output_mse keeps its residuals, not the ratings).
    got = attempt(lambda: call(c, between=plan))
    after = expected(lambda: reference(c))
    has_backward = op in ("mse", "mse_wrapper", "linear", "linear_wrapper", "output",
                          "output_wrapper")  # fmt: skip
    if not has_backward:
        judge(op, kind, got, after)
    elif got is not None and close(got, before):
        OUTCOMES["accepted"] += 1
    else:
        want = None if after is None else [before[0], *after[1:]]
        judge(op, f"{kind} between forward and backward", got, want)


if __name__ == "__main__":
    run_seed = int(os.environ.get("DEEPREC_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
    print(f"fuzz seed {run_seed} (DEEPREC_FUZZ_SEED={run_seed} replays it)", flush=True)
    seed(run_seed)(fuzz)()
    print("FUZZ-OK", " ".join(f"{k}={v}" for k, v in OUTCOMES.items()))
