"""The kernels check every index they read; Python checks metadata only; a training step
reads nothing back from the device but the loss every k steps.

Edits that torch's version counter cannot see (through NumPy, .data, a set_() alias, the
storage) must never crash an op: tests/edit_battery.py tries them all in a subprocess.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import random_csr, reference_column_index
from datasets import synthetic_ratings

from deeprec import csr
from deeprec.config import Config
from deeprec.csr import Batch, column_index
from deeprec.data import RatingMatrix
from deeprec.data.resident import ResidentMatrix
from deeprec.model import AutoEncoder
from deeprec.ops import (
    masked_mse,
    masked_mse_reference,
    raise_kernel_errors,
    sparse_linear,
    sparse_output_mse,
)
from deeprec.training import TrainingPlan, run_epoch, validate
from deeprec.training import plan as decide_path
from deeprec.training.optim import build

pytestmark = pytest.mark.usefixtures("native_required")


def matrix(n_users: int = 40, n_items: int = 60) -> RatingMatrix:
    rows = synthetic_ratings(n_users=n_users, n_items=n_items, per_user=8, seed=2)
    df = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    return RatingMatrix.from_split(df, df.iloc[:0], "user", (0.5, 5.0))


def test_edits_torch_cannot_see_never_crash_an_op():
    script = Path(__file__).with_name("edit_battery.py")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    last = r.stdout.strip().splitlines()[-1:] or [""]
    assert r.returncode == 0 and "BATTERY-OK" in r.stdout, (
        f"exited {r.returncode} (negative: killed by a signal) in case {last[0]!r}\n"
        f"{r.stderr[-3000:]}"
    )


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda c, k: c[1].__setitem__(3, 30),
            r"deeprec masked_mse: target: col\[3\] = 30 is outside \[0, 30\)",
        ),
        (lambda c, k: c[1].__setitem__(3, -7), r"col\[3\] = -7 is outside"),
        (lambda c, k: c[0].__setitem__(-1, 10**15), r"crow\[6\] = 1000000000000000"),
        (lambda c, k: c[0].__setitem__(0, 2), r"crow\[0\] = 2 must be 0"),
        (lambda c, k: c[1].__setitem__(k + 1, c[1][k]), r"not strictly increasing"),
    ],
)  # fmt: skip
def test_a_refused_index_is_one_line_naming_op_tensor_position_and_value(edit, message):
    crow, col, val = random_csr(6, 30, 0.3, seed=1, dtype=torch.float64)
    k = int(crow[1])  # the first entry of row 1, which has a successor in its row
    assert int(crow[2]) - k >= 2
    target = (crow.clone(), col.clone(), val)
    edit(target, k)
    out = torch.randn(6, 30, dtype=torch.float64)
    with pytest.raises(ValueError, match=message) as info:
        masked_mse(out, target, impl="fused")
    assert "\n" not in str(info.value)


def test_the_kernels_refuse_an_index_of_another_batch_in_backward():
    """Same rows, same counts, every column moved by one: an index that fits every length
    and order check but groups another batch's entries."""
    crow, col, val = random_csr(6, 30, 0.3, seed=1, dtype=torch.float32)
    dense = torch.zeros(6, 30)
    dense[csr.entry_rows(crow, col.numel()), col] = 1.0
    other = dense.roll(1, dims=1).nonzero()[:, 1]
    assert torch.equal(dense.roll(1, dims=1).sum(1), dense.sum(1)) and not torch.equal(other, col)
    W = torch.randn(30, 4, requires_grad=True)
    y = sparse_linear((crow, col, val), W, None, index=column_index(crow, other), impl="fused")
    with pytest.raises(ValueError, match="deeprec sparse_linear backward: x index"):
        y.sum().backward()


def test_python_reads_no_index_value_on_the_fused_path(monkeypatch):
    """The fused ops check metadata only: the host value checks are never called, and
    every index value the kernels refuse comes from the kernels."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the fused path read index values in Python")

    monkeypatch.setattr(csr, "check_values", forbidden)
    crow, col, val = random_csr(5, 40, 0.3, seed=3, dtype=torch.float32)
    batch = Batch(crow, col, val, 40, int(torch.unique(col).numel()))
    h = torch.randn(5, 8, requires_grad=True)
    W = torch.randn(40, 8, requires_grad=True)
    bias = torch.zeros(40, requires_grad=True)
    for target in ((crow, col, val), batch):
        out = torch.randn(5, 40, requires_grad=True)
        masked_mse(out, target, impl="fused").backward()
        sparse_linear(target, W, bias[:8].detach(), impl="fused").sum().backward()
        sparse_output_mse(h, W, bias, target, impl="fused").backward()


def test_batch_fields_alias_no_other_memory():
    m = matrix()
    for b in (m.batch(np.arange(9)), next(ResidentMatrix(m, "cpu").batches(9, shuffle=False))):
        tensors = [b.crow, b.col, b.val, b.rows, *b.index]
        spans = [(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in tensors]
        for i, (p, n) in enumerate(spans):
            for q, k in spans[i + 1 :]:
                assert n == 0 or k == 0 or p + n <= q or q + k <= p, "two fields share memory"
        with pytest.raises(dataclasses.FrozenInstanceError):
            b.col = b.col.clone()
        assert not hasattr(b, "host")


def test_batch_from_csr_checks_values_where_they_enter():
    crow, col, val = random_csr(4, 10, 0.5, seed=5, dtype=torch.float32)
    b = Batch.from_csr(crow, col, val, 10)
    assert b.n_unique == len(set(col.tolist()))
    for got, want in zip(b.index, reference_column_index(crow, col), strict=True):
        assert torch.equal(got, want)
    bad = col.clone()
    bad[0] = 10
    with pytest.raises(ValueError, match="outside"):
        Batch.from_csr(crow, bad, val, 10)


def test_column_index_equals_its_definition_with_or_without_the_count():
    for seed in range(20):
        crow, col, _ = random_csr(7, 25, 0.05 * (seed % 10), seed=seed)
        want = reference_column_index(crow, col)
        for n_unique in (None, len(set(col.tolist()))):
            for got, w in zip(column_index(crow, col, n_unique), want, strict=True):
                assert got.dtype == torch.int64 and torch.equal(got, w)


def test_entry_rows_is_safe_for_any_offsets():
    col = torch.arange(5)
    for crow in ([0, 2, 5], [0, 10**15, 5], [0, -3, 5], [7, 1, 2], [0, 5, 0]):
        rows = csr.entry_rows(torch.tensor(crow), 5)
        assert rows.shape == (5,) and int(rows.min()) >= 0 and int(rows.max()) <= 2
    assert csr.entry_rows(torch.tensor([0, 2, 5]), 5).tolist() == [0, 0, 1, 1, 1]
    assert col.numel() == 5


# ------------------------------------------------------------------ no host reads in a step
CONVERSIONS = ("item", "tolist", "numpy", "cpu", "__int__", "__bool__", "__float__", "__index__")
SIZE_UNKNOWN = ("nonzero", "unique", "unique_consecutive", "bincount", "repeat_interleave")


@contextmanager
def counting_host_reads():
    """Counts calls of the Tensor methods that copy values to the host, and of the ops whose
    output size depends on values, while the block runs."""
    calls: list[str] = []
    saved = {}
    for name in CONVERSIONS:
        real = getattr(torch.Tensor, name)
        saved[(torch.Tensor, name)] = real

        def counted(self, *a, _real=real, _name=name, **k):
            calls.append(_name)
            return _real(self, *a, **k)

        setattr(torch.Tensor, name, counted)
    for owner in (torch, torch.Tensor):
        for name in SIZE_UNKNOWN:
            real = getattr(owner, name, None)
            if real is None:
                continue
            saved[(owner, name)] = real

            def counted_op(*a, _real=real, _name=name, **k):
                calls.append(_name)
                return _real(*a, **k)

            setattr(owner, name, counted_op)
    try:
        yield calls
    finally:
        for (owner, name), real in saved.items():
            setattr(owner, name, real)


@pytest.mark.parametrize(
    "optimizer,last", [("adam", "none"), ("sparse-adam", "none"), ("adam", "sigmoid")]
)
def test_fused_training_steps_read_nothing_back_but_the_loss(optimizer, last):
    """The sparse path (exact and lazy row Adam), and the dense model with the fused loss."""
    m = matrix(n_users=200, n_items=90)
    config = Config(fused=True, hidden=[16, 8], optimizer=optimizer, last_activation=last)
    device = torch.device("cpu")
    path = decide_path(config, device)
    assert path.loss == ("sparse" if last == "none" else "fused")
    model = AutoEncoder(m.n_cols, [16, 8], last_activation=last)
    opt = build(config, model, path)
    batches = ResidentMatrix(m, device).batches(16, generator=torch.Generator().manual_seed(0))
    run_epoch(model, opt, [next(batches)], path)  # warm-up: the optimizer's state, the order
    with counting_host_reads() as calls:
        loss = run_epoch(model, opt, batches, path, loss_every=5)
    # 12 steps remain: reads at steps 5 and 10 and at the end of the epoch
    assert calls == ["__float__"] * 3, calls
    assert np.isfinite(loss)


def test_validation_reads_its_predictions_back_once():
    m = matrix(n_users=200, n_items=90)
    held = RatingMatrix(m.train, m.row_ids, m.col_ids, m.by, *np.nonzero(m.train.toarray()),
                        m.train.data, m.scale)  # fmt: skip
    model = AutoEncoder(m.n_cols, [16, 8])
    source = ResidentMatrix(held, "cpu")
    with counting_host_reads() as calls:
        metrics = validate(model, held, torch.device("cpu"), TrainingPlan("sparse"), source=source)
    assert calls == ["cpu", "numpy"], calls  # one transfer of every prediction
    assert np.isfinite(metrics["val_rmse"])


def test_the_count_sees_a_host_read():
    """The counter is not blind: a step that reads the loss each time is counted."""
    with counting_host_reads() as calls:
        torch.ones(3).sum().item()
        torch.unique(torch.tensor([2, 1, 2]))
    assert calls == ["item", "unique"]


@pytest.mark.cuda
def test_cuda_training_steps_make_no_host_sync():
    m = matrix(n_users=200, n_items=90)
    config = Config(fused=True, hidden=[16, 8])
    device = torch.device("cuda")
    path = decide_path(config, device)
    model = AutoEncoder(m.n_cols, [16, 8]).to(device)
    opt = build(config, model, path)
    batches = ResidentMatrix(m, device).batches(16, generator=torch.Generator().manual_seed(0))
    run_epoch(model, opt, [next(batches), next(batches)], path)  # warm-up
    steps = [next(batches) for _ in range(6)]  # built before the checked region
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = []
        from deeprec.training import LossTotal, batch_loss

        total = LossTotal(every=10**9)
        for b in steps:
            loss = batch_loss(model, b, path)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total.add(loss, b.nnz)
            losses.append(loss)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert np.isfinite(total.read())


@pytest.mark.cuda
def test_cuda_kernels_report_a_refused_index_without_killing_the_context():
    crow, col, val = random_csr(6, 30, 0.3, seed=1, dtype=torch.float32, device="cuda")
    out = torch.randn(6, 30, device="cuda")
    bad = col.clone()
    bad[3] = 30
    loss = masked_mse(out, (crow, bad, val), impl="fused")  # queued; no sync, no assert
    with pytest.raises(ValueError, match=r"deeprec masked_mse: target: col\[3\] = 30"):
        raise_kernel_errors("cuda")
    raise_kernel_errors("cuda")  # read and reset: nothing pending any more
    good = masked_mse(out, (crow, col, val), impl="fused")
    torch.testing.assert_close(good, masked_mse_reference(out, crow, col, val))
    assert torch.isfinite(loss)


def test_edit_battery_and_fuzzer_run_under_ci_sanitizers():
    """The CI sanitizer step runs this file's battery too (a cheap guard that the step
    lists it, so ASan sees the edits)."""
    ci = Path(__file__).resolve().parents[1] / ".ci" / "run"
    text = ci.read_text()
    assert "tests/test_kernel_checks.py" in text and "tests/test_fuzz.py" in text
    assert os.path.exists(Path(__file__).with_name("edit_battery.py"))


def test_kernel_arguments_travel_by_name():
    """Every launch names every argument; the names are the fields of the kernel's argument
    struct and its device's launch struct (KERNEL_ARGS), so a misnamed or missing one is a
    TypeError and an argument given out of order still lands in its own place."""
    from deeprec.ops import _native, errors
    from deeprec.ops.native import ptr

    C = _native.module()
    out = torch.randn(3, 5, dtype=torch.float64)
    crow = torch.tensor([0, 2, 2, 3])
    col = torch.tensor([1, 4, 0])
    val = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    args = dict(out=ptr(out), crow=ptr(crow), col=ptr(col), val=ptr(val), B=3, N=5, nnz=3,
                dtype=C.DTYPE_CODES["float64"], index_dtype=C.INDEX_CODES["int64"], grad=0,
                grad_scale=0, err=ptr(errors.word(torch.device("cpu"))), err_tag=1,
                num_threads=1)  # fmt: skip
    loss_in_order, loss_shuffled = torch.empty((), dtype=torch.float64), torch.empty(())
    loss_shuffled = loss_shuffled.double()
    _native.call("masked_mse_cpu", {**dict(list(args.items())[:9]), "loss": ptr(loss_in_order),
                                    **dict(list(args.items())[9:])})  # fmt: skip
    _native.call("masked_mse_cpu", {"loss": ptr(loss_shuffled), **dict(reversed(args.items()))})
    want = masked_mse_reference(out, crow, col, val)
    torch.testing.assert_close(loss_in_order, want)
    torch.testing.assert_close(loss_shuffled, want)
    for bad in ({**args}, {**args, "loss": 0, "H": 4}, {**args, "los": 0}):
        with pytest.raises(TypeError, match="masked_mse_cpu: arguments"):
            _native.call("masked_mse_cpu", bad)
    cpu_tail = ("err", "err_tag", "num_threads")
    cuda_tail = ("partials", "counter", "err", "err_tag", "device", "stream")
    for name, names in C.KERNEL_ARGS.items():  # the kernel's fields, then its device's
        if name.endswith("_cpu"):
            assert names[-3:] == cpu_tail, name
            cuda = C.KERNEL_ARGS.get(name.replace("_cpu", "_cuda"))
            if cuda is not None:
                assert cuda == (*names[:-3], *cuda_tail), name


def _declared_fields() -> dict[str, tuple[str, ...]]:
    """Each kernel's argument names as its family header declares them: the X-macro lists
    DEEPREC_<KERNEL>_ARGS(X) X(type, name) ... of csrc/<family>/<family>.h."""
    import re

    csrc = Path(__file__).resolve().parents[1] / "csrc"
    found = {}
    for header in csrc.glob("*/*.h"):
        text = header.read_text().replace("\\\n", " ")
        for m in re.finditer(r"#define DEEPREC_(\w+)_ARGS\(X\)(.*)", text):
            fields = re.findall(r"X\(([^,()]+(?:\*)?),\s*(\w+)\)", m.group(2))
            found[m.group(1).lower()] = tuple(name for _, name in fields)
    return found


def test_the_bound_names_are_the_declared_fields():
    """One declaration per kernel: the names deeprec._C binds, in order, are exactly the
    fields its header's X-macro declares (the same list gives the struct the kernel reads
    by name), and every kernel the table binds has such a declaration."""
    from deeprec.ops import _native

    C = _native.module()
    declared = _declared_fields()
    kernels = {n.rsplit("_", 1)[0] for n in C.KERNEL_ARGS}
    assert kernels == set(declared), (sorted(kernels), sorted(declared))
    for kernel, fields in declared.items():
        assert C.KERNEL_ARGS[f"{kernel}_cpu"][: len(fields)] == fields, kernel
        assert len(C.KERNEL_ARGS[f"{kernel}_cpu"]) == len(fields) + 3, kernel
