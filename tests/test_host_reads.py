"""No training step reads a value back to the host, proven on the CPU.

A GPU waits for every read of device memory by the host (a sync), so a training step must
make none: its only read is the loss, about once a second (LossTotal.read, which also
reads the error word in the same transfer). On the CPU nothing syncs, so the tests watch
for what would: a dispatch mode fails on every op that hands a value to the host
(``aten._local_scalar_dense``: ``.item()``, ``float(t)``, ``bool(t)``, indexing with a
0-dim tensor) or whose output size depends on values (``nonzero``, ``unique``,
``masked_select``, ``repeat_interleave`` without ``output_size``, ``coalesce``), and the
tensor methods that read or copy to the host (``item``, ``bool``/``int``/``float`` of a
tensor, ``tolist``, ``numpy``, ``cpu``, ``.to("cpu")``, indexing with a 0-dim tensor or a
boolean mask) are wrapped to fail the same way, since on the CPU some of them never reach
the dispatcher. The failure names the op and the line that made it.

The CPU runs with a GPU's error flow (errors.deferred_on_cpu: refusals wait in the error
word), and every path runs: the rating recipe on the fully sparse path with each backend
(the CPU's native kernels, and the torch ops a GPU runs), with tied weights, with lazy
Adam, with a dense-output layer on the fused loss, the dense reference; Mult-DAE and
Mult-VAE fused on each backend and by reference; from batches built on the host
(streamed) and gathered on the device (resident).
"""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from datasets import write_movielens_csv
from torch.utils._python_dispatch import TorchDispatchMode

import deeprec
from deeprec.config import Config
from deeprec.data import RatingMatrix, load, split
from deeprec.data.resident import ResidentMatrix
from deeprec.ops import errors, schema
from deeprec.training import Trainer, plan, run_epoch

pytestmark = pytest.mark.usefixtures("native_required")

SRC = Path(deeprec.__file__).resolve().parent
aten = torch.ops.aten
# Ops that read a value to the host, or whose output's size depends on values.
READS = {
    aten._local_scalar_dense,
    aten.nonzero,
    aten._unique,
    aten._unique2,
    aten.unique_dim,
    aten.unique_consecutive,
    aten.masked_select,
    aten._coalesce,
}
# The one read a step may make, stated here: the loss, read with the error word in one
# transfer (about once a second, and at the end of the epoch).
ALLOWED = ("training/loop.py", "read")
# Host data by design, which the tensor-method wrappers leave alone: the epoch's row order
# (a CPU generator's permutation) and a streamed batch's CSR, cut from the host matrix
# before its one copy to the device. Ops reading a value are refused there too.
HOST_SIDE = {("data/matrix.py", "batch_rows"), ("data/matrix.py", "batch")}


class HostRead(AssertionError):
    """A training step read a value back to the host."""


TORCH = str(Path(torch.__file__).resolve().parent)
GUARD = {"_where", "_allowed", "__torch_dispatch__", "method", "to"}


def _where() -> str:
    """The innermost line of code outside torch and this guard: where the read was made."""
    here = str(Path(__file__).resolve())
    for f in reversed(traceback.extract_stack()):
        if f.filename.startswith(TORCH) or (f.filename == here and f.name in GUARD):
            continue
        path = Path(f.filename)
        shown = path.relative_to(SRC) if path.is_relative_to(SRC) else path.name
        return f"{shown}:{f.lineno} ({f.name}: {f.line})"
    return "unknown"


def _allowed(host_side: bool = False) -> bool:
    """Inside the allowed loss read (or, with host_side, in host-side batch building)."""
    places = {ALLOWED, *(HOST_SIDE if host_side else ())}
    return any(
        f.filename.endswith(file) and f.name == name
        for f in traceback.extract_stack()
        for file, name in places
    )


class HostReads(TorchDispatchMode):
    """Fails on the first op that would make a GPU wait for the host. A deeprec op is run
    by its CPU kernel with the mode still on, so the ops inside it are watched too (torch
    hands a mode each op once, and would not show it what the op's kernel does)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if func.namespace == "deeprec":
            op = next(op for op in schema.OPS if op.name == packet.__name__)
            with self:
                return op.kernels["cpu"](*args, **kwargs)
        reads = packet in READS or (
            packet is aten.repeat_interleave and kwargs.get("output_size") is None
        )
        if reads and not _allowed():
            raise HostRead(f"host read: aten.{packet.__name__} at {_where()}")
        return func(*args, **kwargs)


def by_value_index(name, real):
    """Indexing with a 0-dim tensor (its value becomes a Python int) or a boolean mask (its
    true count sizes the result) reads the index's values on the host."""

    def method(self, index, *args):
        parts = index if isinstance(index, tuple) else (index,)
        for part in parts:
            by_value = isinstance(part, torch.Tensor) and (
                part.dim() == 0 or part.dtype == torch.bool
            )
            if by_value and not _allowed():
                kind = "a 0-dim tensor" if part.dim() == 0 else "a boolean mask"
                raise HostRead(f"host read: Tensor.{name} with {kind} at {_where()}")
        return real(self, index, *args)

    return method


@contextmanager
def no_host_reads() -> Iterator[None]:
    """Inside: a GPU's error flow on the CPU, and every host read fails naming its line."""
    mp = pytest.MonkeyPatch()

    def refuse(name, real):
        def method(self, *args, **kwargs):
            if not _allowed(host_side=True):
                raise HostRead(f"host read: Tensor.{name} at {_where()}")
            return real(self, *args, **kwargs)

        return method

    for name in ("item", "__bool__", "__int__", "__float__", "__index__", "tolist", "numpy",
                 "cpu"):  # fmt: skip
        mp.setattr(torch.Tensor, name, refuse(name, getattr(torch.Tensor, name)))
    for name in ("__getitem__", "__setitem__"):
        mp.setattr(torch.Tensor, name, by_value_index(name, getattr(torch.Tensor, name)))
    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        device = kwargs.get("device", args[0] if args else None)
        to_cpu = isinstance(device, (str, torch.device)) and torch.device(device).type == "cpu"
        if to_cpu and not _allowed(host_side=True):
            raise HostRead(f"host read: Tensor.to(cpu) at {_where()}")
        return real_to(self, *args, **kwargs)

    mp.setattr(torch.Tensor, "to", to)
    try:
        with errors.deferred_on_cpu(), HostReads():
            yield
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = write_movielens_csv(tmp_path_factory.mktemp("reads") / "toy")
    ds = load(str(path))
    train, val = split(ds.ratings, "user-time")
    return str(path), RatingMatrix.from_split(train, val, "user", ds.scale)


RATING = dict(hidden=[8, 4], epochs=1, batch_size=16, split="user-time")
RANKING = dict(RATING, objective="multinomial", last_activation="none")
PATHS = {
    "rating --fused": dict(RATING, fused=True),
    "rating --fused tied": dict(RATING, fused=True, tied=True),
    "rating --fused sparse-adam": dict(RATING, fused=True, optimizer="sparse-adam"),
    "rating --fused tied sparse-adam": dict(RATING, fused=True, tied=True, optimizer="sparse-adam"),
    "rating --fused, dense output": dict(RATING, fused=True, last_activation="sigmoid"),
    "rating reference": dict(RATING),
    "Mult-DAE --fused": dict(RANKING, fused=True),
    "Mult-VAE --fused": dict(RANKING, fused=True, variational=True, hidden=[8]),
    "Mult-DAE reference": dict(RANKING),
}


def steps(toy, options: dict, backend: str, resident: bool, n: int = 3) -> tuple[float, Trainer]:
    """``n`` training steps of a fresh model on ``options``, with batches streamed from the
    host or gathered on the device, the sparse layers on ``backend``; the epoch's loss."""
    path, matrix = toy
    config = Config(data=path, **options)
    device = torch.device("cpu")
    chosen = dataclasses.replace(plan(config, device), backend=backend, resident=resident)
    t = Trainer.assemble(config, matrix, device, training_plan=chosen)
    source = ResidentMatrix(matrix, device) if resident else matrix
    batches = source.batches(config.batch_size, device, generator=t.shuffle, max_batches=n)
    with no_host_reads():  # the steps, and building their batches
        loss = run_epoch(t.model, t.optimizer, batches, t.plan)
    return loss, t


@pytest.mark.parametrize("resident", [False, True], ids=["streamed", "resident"])
@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("name", list(PATHS))
def test_a_training_step_reads_nothing_back(toy, name, backend, resident):
    loss, t = steps(toy, PATHS[name], backend, resident)
    assert loss == loss and loss > 0  # the one allowed read happened, and trained
    if "--fused" in name and "dense output" not in name:
        assert t.plan.loss == "sparse" and t.plan.backend == backend


def test_the_guard_fails_on_a_planted_item(toy, monkeypatch):
    """The same steps with one ``.item()`` planted in the input layer's values: the guard
    names the op and the planted line."""
    from deeprec import model as model_module

    real = model_module.AutoEncoder.input_values

    def planted(self, crow, col, val, rows=None):
        if int(crow[-1]) < 0:  # a host read, as code that "just checks" would make
            raise AssertionError
        return real(self, crow, col, val, rows)

    monkeypatch.setattr(model_module.AutoEncoder, "input_values", planted)
    with pytest.raises(HostRead, match=r"host read: .* at test_host_reads") as err:
        steps(toy, PATHS["rating --fused"], "torch", resident=True)
    assert "int(crow[-1])" in str(err.value)


def test_the_guard_fails_on_a_planted_copy_to_the_host(toy, monkeypatch):
    from deeprec.ops import sparse_layers

    real = sparse_layers._spmm

    def planted(kernels, crow, *args):
        crow.tolist()
        return real(kernels, crow, *args)

    monkeypatch.setattr(sparse_layers, "_spmm", planted)
    with pytest.raises(HostRead, match=r"Tensor\.tolist"):
        steps(toy, PATHS["rating --fused"], "native", resident=False)


def test_the_guard_fails_on_a_planted_read_inside_an_ops_kernel(toy, monkeypatch):
    """A 0-dim index inside the device checks, which run inside a registered op's kernel on
    the torch backend (the form of the multinomial check's 22 reads per step, now gone)."""
    from deeprec.ops import device_checks

    real = device_checks.Problems.add

    def planted(self, check, bad, value, bound, offset=0):
        value[bad.to(torch.int8).argmax()]  # a Python int from a device value
        return real(self, check, bad, value, bound, offset)

    monkeypatch.setattr(device_checks.Problems, "add", planted)
    with pytest.raises(HostRead, match=r"0-dim tensor at test_host_reads"):
        steps(toy, PATHS["Mult-DAE --fused"], "torch", resident=True)


@pytest.mark.parametrize("lazy", [False, True])
def test_tied_gradients_merge_without_a_host_read(lazy):
    """Tied weights get the input and the output layer's row-sparse gradients summed; on a
    GPU that sum keeps both row lists (uncoalesced; the CPU's sum merges them itself, so
    training on the CPU never gets here). Such a gradient is merged with no host read and
    moves the parameter as the merged gradient does."""
    from deeprec.ops import row_adam_step

    g = torch.Generator().manual_seed(0)
    N, H = 12, 3
    ids = torch.tensor([1, 4, 7, 1, 4, 7, 9])  # two gradients' rows, concatenated
    values = torch.randn(ids.numel(), H, dtype=torch.float64, generator=g)
    summed = torch.sparse_coo_tensor(ids[None], values, (N, H))
    assert not summed.is_coalesced()
    p0 = torch.randn(N, H, dtype=torch.float64, generator=g)
    states = {k: [p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)] for k in "ab"}
    for step in (1, 2):
        with no_host_reads():
            row_adam_step(*states["a"], summed, step, 0.1, (0.9, 0.999), 1e-8, 0.01, lazy)
        row_adam_step(*states["b"], summed.coalesce(), step, 0.1, (0.9, 0.999), 1e-8, 0.01, lazy)
    for got, want in zip(states["a"], states["b"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    if lazy:  # only the named rows moved
        moved = (states["a"][0] != p0).any(1).nonzero().flatten().tolist()
        assert moved == [1, 4, 7, 9]
