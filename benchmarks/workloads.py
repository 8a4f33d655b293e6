"""The workloads every benchmark measures, defined once.

Each workload is a set of named impls that do the same math (checked once,
outside any timed region, by ``check``) plus the work they do, so reports can
state achieved GB/s or GFLOP/s. Used by the pytest-benchmark suites
(bench_*.py) and by report.py.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from common import rating_batch, seed_dense_masked_mse

from deeprec.config import Config
from deeprec.data import Batch, RatingMatrix, load, split
from deeprec.model import AutoEncoder
from deeprec.ops import fused_available, masked_mse
from deeprec.training import TrainingPlan, batch_loss, plan, run_epoch
from deeprec.training.optim import build as build_optimizer

# (rows per batch, items, fraction rated)
LOSS_SHAPES = {
    "seed": (128, 9559, 0.017),
    "netflix": (512, 17770, 0.0117),
    "ml-20m": (512, 26744, 0.0054),
}
SEED_HIDDEN = (512, 512, 1024)
# Training impls: (name, --fused, --optimizer), built exactly as deeprec.train builds them:
# the reference uses torch's fused Adam; --fused uses ItemAdam (exact, row-sparse gradients)
# and the device's default backend for the sparse layers (deeprec.ops.backends).
TRAIN_IMPLS = (
    ("reference, torch default Adam (per-tensor loop)", False, "torch-adam"),
    ("reference (dense)", False, "adam"),
    ("--fused", True, "adam"),
    ("--fused --optimizer sparse-adam", True, "sparse-adam"),
)
# The other backend of the sparse layers, side by side with the default (a GPU measures
# both: deeprec's CUDA kernels become its default only once measured faster).
OTHER_BACKEND = {"cuda": ("--fused, deeprec's CUDA kernels", "native")}


def train_impls(device: str) -> list[tuple[str, bool, str, str | None]]:
    """TRAIN_IMPLS on ``device`` as (name, fused, optimizer, backend or None: the default),
    with the other backend's --fused where the device has one to compare."""
    impls = [(*impl, None) for impl in TRAIN_IMPLS]
    other = OTHER_BACKEND.get(torch.device(device).type)
    if other is not None:
        impls.append((other[0], True, "adam", other[1]))
    return impls


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@dataclass
class Workload:
    name: str
    impls: dict[str, Callable[[], object]]
    check: Callable[[], None]
    bytes_moved: int = 0  # minimal bytes read + written by one call (loss workloads)
    flops: float = 0.0  # dense-equivalent FLOPs of one call (training workloads)
    baseline: str = ""  # the impl the others are compared with
    notes: dict[str, object] = field(default_factory=dict)


def _fwd_bwd(loss_fn, output):
    out = output.detach().clone().requires_grad_(True)

    def step():
        out.grad = None
        loss_fn(out).backward()

    return step


def loss_workload(shape: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Workload:
    """masked_mse forward+backward: seed dense loss (eager, compiled), CSR reference, fused."""
    B, N, density = LOSS_SHAPES[shape]
    output, parts, dense = rating_batch(B, N, density, device=device, dtype=dtype)
    compiled = torch.compile(seed_dense_masked_mse, dynamic=False)
    impls = {
        "dense eager (seed)": _fwd_bwd(lambda o: seed_dense_masked_mse(o, dense), output),
        "dense torch.compile": _fwd_bwd(lambda o: compiled(o, dense), output),
        "reference (CSR)": _fwd_bwd(lambda o: masked_mse(o, parts, impl="reference"), output),
    }
    if fused_available(device):
        impls["fused"] = _fwd_bwd(lambda o: masked_mse(o, parts, impl="fused"), output)

    def check():
        want = seed_dense_masked_mse(output.double(), dense.double())
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=1e-2)
        for name, impl in (("fused", "fused"), ("reference (CSR)", "reference")):
            if name in impls:
                got = masked_mse(output, parts, impl=impl).double()
                torch.testing.assert_close(got, want, **tol, msg=f"{name} disagrees")
        torch.testing.assert_close(compiled(output, dense).double(), want, **tol)

    nnz = parts[1].numel()
    size = output.element_size()
    moved = B * N * size + nnz * (2 * size + parts[1].element_size()) + (B + 1) * 8
    return Workload(
        f"loss {shape} {str(dtype).removeprefix('torch.')}",
        impls,
        check,
        moved,
        baseline="dense eager (seed)",
        notes={"B": B, "N": N, "nnz": nnz},
    )


def _path_and_optimizer(
    name: str, model, fused: bool, device: str, backend: str | None = None
) -> tuple[TrainingPlan, object]:
    """The training path and optimizer deeprec.train would use, or torch's default (per-tensor
    loop) Adam on the reference path, the first baseline's optimizer; ``backend``: the sparse
    layers' backend instead of the device's default."""
    config = Config(fused=fused, optimizer="adam" if name == "torch-adam" else name)
    path = plan(config, torch.device(device))
    if backend is not None:
        path = dataclasses.replace(path, backend=backend)
    if name == "torch-adam":
        return path, torch.optim.Adam(model.parameters(), lr=1e-3, foreach=False)
    return path, build_optimizer(config, model, path)


def dense_flops(n_in: int, hidden=SEED_HIDDEN) -> int:
    """Multiply-adds x 2 of one row through the dense autoencoder (forward)."""
    sizes = [n_in, *hidden]
    layers = [*pairwise(sizes), *pairwise(sizes[::-1])]
    return 2 * sum(a * b for a, b in layers)


def seed_matrix() -> tuple[RatingMatrix, str]:
    """The seed's training matrix: real ml-latest-small when present, else a synthetic twin."""
    data_dir = os.environ.get("DEEPREC_DATA") or (SHARED_DATA if SHARED_DATA.exists() else None)
    try:
        ds = load("ml-latest-small", data_dir, download=False)
        train, val = split(ds.ratings)
        return RatingMatrix.from_split(train, val, "user", ds.scale), "ml-latest-small"
    except Exception:
        import pandas as pd

        rng = np.random.default_rng(0)
        rows = [
            (u, int(i), float(rng.integers(1, 11)) / 2, 0)
            for u in range(595)
            for i in rng.choice(9559, size=166, replace=False)
        ]
        df = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
        return RatingMatrix.from_split(df, df.iloc[:0], "user", (0.5, 5.0)), "synthetic 595x9559"


def epoch_workload(batch_size: int, device: str = "cpu", matrix=None, source: str = "") -> Workload:
    """One training epoch of the seed model on ml-latest-small: reference path vs --fused."""
    if matrix is None:
        matrix, source = seed_matrix()
    runs = {}
    impls = {}
    for name, fused, optimizer, backend in train_impls(device):
        if fused and not fused_available(device):
            continue
        torch.manual_seed(0)
        model = AutoEncoder(matrix.n_cols, SEED_HIDDEN).to(device)
        path, opt = _path_and_optimizer(optimizer, model, fused, device, backend)
        gen = torch.Generator().manual_seed(0)
        runs[name] = (model, path)
        impls[name] = lambda m=model, o=opt, g=gen, p=path: run_epoch(
            m, o, matrix.batches(batch_size, device, generator=g), p
        )

    def check():
        batch = matrix.batch(np.arange(min(batch_size, matrix.n_rows)), device)
        torch.manual_seed(1)
        model = AutoEncoder(matrix.n_cols, SEED_HIDDEN).to(device)
        losses = {n: batch_loss(model, batch, p).item() for n, (_, p) in runs.items()}
        ref = losses["reference (dense)"]
        for name, value in losses.items():
            assert abs(value - ref) <= 1e-4 * max(1.0, abs(ref)), f"{name}: {value} vs {ref}"

    flops = 3 * dense_flops(matrix.n_cols) * matrix.n_rows  # forward + 2x for backward
    return Workload(
        f"epoch seed b{batch_size}",
        impls,
        check,
        flops=flops,
        baseline="reference (dense)",
        notes={"data": source, "rows": matrix.n_rows},
    )


# Long-tailed batch shapes: (rows, items, mean ratings per row, Zipf-Mandelbrot offset), the
# synthetic twins' parameters (deeprec.data.synthetic).
LONG_TAILED = {"netflix": (512, 17_770, 209, 80.0), "ml-32m": (512, 87_585, 159, 40.0)}


def long_tailed_batch(shape: str, device: str = "cpu", seed: int = 0) -> Batch:
    """A batch whose items follow the real catalogs' long tail (popular items in most rows)
    and whose rows' lengths are log-normal, as in the synthetic twins: at the ML-32M shape
    it touches about a third of the catalog, where uniform items touched 60%."""
    B, N, per_row, q = LONG_TAILED[shape]
    rng = np.random.default_rng(seed)
    weights = 1.0 / (np.arange(1, N + 1) + q)
    weights /= weights.sum()
    sizes = np.clip(rng.lognormal(np.log(per_row) - 0.78, 1.25, B), 1, N // 4).astype(int)
    rows = [np.sort(rng.choice(N, size=k, replace=False, p=weights)) for k in sizes]
    crow = torch.tensor(np.concatenate([[0], np.cumsum(sizes)]), dtype=torch.int64)
    col = torch.from_numpy(np.concatenate(rows).astype(np.int64))
    val = torch.from_numpy(rng.integers(1, 11, len(col)).astype(np.float32) / 2)
    n_unique = int(np.unique(col.numpy()).size)
    return Batch(crow.to(device), col.to(device), val.to(device), N, n_unique,
                 torch.arange(B, device=device))  # fmt: skip


def step_workload(
    shape: str = "netflix", device: str = "cpu", long_tailed: bool = False
) -> Workload:
    """One training step (forward, loss, backward, Adam) of the seed model at a batch shape:
    uniformly random items (LOSS_SHAPES) or a long-tailed batch (LONG_TAILED)."""
    if long_tailed:
        batch = long_tailed_batch(shape, device)
        B, N = batch.crow.numel() - 1, batch.n_cols
        col = batch.col
    else:
        B, N, density = LOSS_SHAPES[shape]
        _, (crow, col, val), _ = rating_batch(B, N, density, device=device)
        n_unique = int(torch.unique(col).numel())
        batch = Batch(crow, col.long(), val, N, n_unique, torch.arange(B, device=device))
    # Built once, outside the timed step; the epoch workloads build it inside each step,
    # as training does.
    batch.index  # noqa: B018
    impls = {}
    models = {}
    for name, fused, optimizer, backend in train_impls(device):
        if fused and not fused_available(device):
            continue
        torch.manual_seed(0)
        model = AutoEncoder(N, SEED_HIDDEN).to(device)
        path, opt = _path_and_optimizer(optimizer, model, fused, device, backend)
        models[name] = (model, path)

        def step(m=model, o=opt, p=path):
            loss = batch_loss(m, batch, p)
            o.zero_grad(set_to_none=True)
            loss.backward()
            o.step()

        impls[name] = step

    def check():
        torch.manual_seed(1)
        model = AutoEncoder(N, SEED_HIDDEN).to(device)
        vals = {n: batch_loss(model, batch, p).item() for n, (_, p) in models.items()}
        ref = vals["reference (dense)"]
        assert all(abs(v - ref) <= 1e-4 * max(1.0, abs(ref)) for v in vals.values()), vals

    notes = {"B": B, "N": N, "nnz": int(col.numel())}
    if long_tailed:
        notes["items touched"] = f"{batch.index.ucol.numel() / N:.0%}"
    return Workload(
        f"step {shape} b{B}{' long-tailed' if long_tailed else ''}",
        impls,
        check,
        flops=3 * dense_flops(N) * B,
        baseline="reference (dense)",
        notes=notes,
    )
