"""The training loop: a batch's loss on the run's TrainingPath, an epoch, the learning-rate
schedule, validation, and the checkpoint written after each epoch.

``fit(run)`` trains a Run prepared by deeprec.run from where it stands (epoch 0, or a
resumed epoch) up to its config's epoch count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from deeprec import __version__, checkpoint, memory, optim
from deeprec.config import Config, ConfigError, TrainingPath, decide_path
from deeprec.data import Batch, RatingMatrix
from deeprec.distributed import ALONE, World, all_sum, reduce_gradients
from deeprec.model import AutoEncoder
from deeprec.ops import masked_mse, read_checked
from deeprec.predict import predict_entries
from deeprec.run import (
    Run,
    build_model,
    model_inputs,
    plot_losses,
    write_config,
    write_metrics,
)


class TrainingDiverged(ConfigError):
    """The loss became NaN or infinite."""


@contextmanager
def flushed_denormals() -> Iterator[None]:
    """Flush denormal floats to zero for the block, then restore the caller's setting.

    Adam's moment estimates for items a batch never touches decay into denormals, which
    made late CPU epochs 2.6x slower (2.33 s vs 0.88 s on ml-latest-small). Set before
    torch starts its worker threads, which inherit it.
    """
    was_flushing = (torch.tensor([1e-40]) * 1.0).item() == 0.0
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_flushing)


def batch_loss(model: AutoEncoder, batch: Batch, path: TrainingPath) -> torch.Tensor:
    """The training loss of one batch: masked MSE of the reconstruction at the stored ratings,
    computed the way ``path`` says (all three give the same value and gradients)."""
    if path.loss == "sparse":
        return model.sparse_loss(
            *batch.csr, index=batch.index, impl="fused", sparse_grad=path.sparse_grad
        )
    return masked_mse(model(batch.dense()), batch, impl=path.impl)


def train_epochs(
    config: Config,
    matrix: RatingMatrix,
    device: torch.device,
    after_epoch: Callable[[int, AutoEncoder, RatingMatrix, Any], None] | None = None,
) -> tuple[AutoEncoder, RatingMatrix, Any]:
    """A fresh model of ``config`` trained on ``matrix`` for ``config.epochs``, as ``fit``
    trains a run (seed, optimizer, batch order, learning-rate schedule) but with no run
    folder: for searches and blends that train many models. ``after_epoch(epoch, model,
    inputs, offsets)`` runs after each epoch and may raise to stop. Returns (model, the
    matrix it reads, the residual offsets or None)."""
    inputs, offsets = model_inputs(config, matrix)
    torch.manual_seed(config.seed)
    model = build_model(config, matrix.n_cols).to(device)
    path = decide_path(config, device)
    opt = optim.build(config.optimizer, model, config.lr, config.weight_decay, path.sparse_grad)
    order = torch.Generator().manual_seed(config.seed)
    with flushed_denormals():
        for epoch in range(1, config.epochs + 1):
            set_lr(opt, epoch_lr(config, epoch))
            run_epoch(
                model,
                opt,
                inputs.batches(config.batch_size, device, generator=order),
                path,
                loss_every=config.loss_every,
            )
            if after_epoch is not None:
                after_epoch(epoch, model, inputs, offsets)
    return model, inputs, offsets


def refeed_step(model: AutoEncoder, optimizer: Any, batch: Batch) -> None:
    """Dense re-feeding: fit f(f(x)) to f(x) over every item, f(x) held fixed."""
    with torch.no_grad():
        target = model(batch.dense())
    loss = torch.nn.functional.mse_loss(model(target), target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


class LossTotal:
    """An epoch's training loss, summed where it is computed and read back only now and then.

    Each step adds its loss times its rating count on the device, with no sync; ``read``
    copies the running total to the host together with the kernels' error word (one
    transfer, the step's only sync), raises a kernel's ValueError or a diverged loss, and
    returns the epoch's loss so far. ``due`` says when to read: every ``every`` steps, or
    with every=0 about once a second, so a progress bar still moves.
    """

    def __init__(self, every: int = 0, on_read: Callable[[float], None] | None = None) -> None:
        self.every, self.on_read = every, on_read
        self.total: torch.Tensor | None = None
        self.count = 0
        self.steps = 0
        self.last_read = time.monotonic()

    def add(self, loss: torch.Tensor, n: int) -> None:
        term = loss.detach().double() * n
        self.total = term if self.total is None else self.total + term
        self.count += n
        self.steps += 1

    def due(self) -> bool:
        if self.every:
            return self.steps % self.every == 0
        return time.monotonic() - self.last_read >= 1.0

    def read(self) -> float:
        self.last_read = time.monotonic()
        if self.total is None:
            return 0.0
        value = read_checked(self.total) / max(self.count, 1)
        if not math.isfinite(value):
            raise TrainingDiverged(f"loss became {value}")
        if self.on_read is not None:
            self.on_read(value)
        return value


def run_epoch(
    model: AutoEncoder,
    optimizer: Any,
    batches: Iterable[Batch],
    path: TrainingPath,
    refeed: bool = False,
    world: World = ALONE,
    loss_every: int = 0,
    on_loss: Callable[[float], None] | None = None,
) -> float:
    """One pass over ``batches``; returns the epoch's loss (MSE over all its ratings).

    The loss is read back every ``loss_every`` steps (0: about once a second; see
    LossTotal) and at the end, where a diverged loss or an index a GPU kernel refused is
    raised; ``on_loss`` gets each value read. Under torchrun ``batches`` are this rank's
    shares of the global batches, and the epoch is run_distributed_epoch's.
    """
    if world.active:
        return run_distributed_epoch(model, optimizer, batches, path, world)
    model.train()
    losses = LossTotal(loss_every, on_loss)
    for batch in batches:
        loss = batch_loss(model, batch, path)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if refeed:
            refeed_step(model, optimizer, batch)
        losses.add(loss, batch.nnz)
        if losses.due():
            losses.read()
    return losses.read()


def run_distributed_epoch(
    model: AutoEncoder,
    optimizer: Any,
    batches: Iterable[Batch],
    path: TrainingPath,
    world: World,
) -> float:
    """run_epoch for one rank: the loss is normalised by the global count of ratings in
    the global batch and the gradients are summed across ranks (deeprec.distributed), so
    the update equals one process's on the whole batch."""
    model.train()
    sparse = model.item_parameters() if path.sparse_grad else []
    sparse_ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if id(p) not in sparse_ids]
    loss_sum, count = 0.0, 0.0
    for batch in batches:
        n_local = batch.col.numel()
        loss = batch_loss(model, batch, path) if n_local else None
        local = read_checked(loss) * n_local if loss is not None else 0.0
        n_global, sse = all_sum([float(n_local), local], world, batch.col.device)
        if n_global == 0:
            continue
        value = sse / n_global
        if not math.isfinite(value):
            raise TrainingDiverged(f"loss became {value}")
        optimizer.zero_grad(set_to_none=True)
        if loss is not None:
            loss.backward()
        reduce_gradients(dense, sparse, n_local / n_global, world)
        optimizer.step()
        loss_sum += sse
        count += n_global
    return loss_sum / max(count, 1.0)


def epoch_lr(config: Config, epoch: int) -> float:
    """The learning rate of 1-based ``epoch`` under the config's schedule (resume-exact)."""
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / config.epochs))
    return config.lr


def set_lr(optimizer: Any, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def validate(
    model: AutoEncoder,
    matrix: RatingMatrix,
    device: torch.device,
    offsets: Any = None,
    world: World = ALONE,
    source: Any = None,
) -> dict[str, float]:
    """RMSE and MAE at the validation ratings, clipped to the scale and unclipped.

    source: where the batches come from (matrix, or a ResidentMatrix of it). Under
    torchrun each rank predicts the entries of its rows (row % size == rank) and the sums
    are all-reduced.
    """
    rows, cols, truth = matrix.val_rows, matrix.val_cols, matrix.val_ratings
    if world.active:
        mine = rows % world.size == world.rank
        rows, cols, truth = rows[mine], cols[mine], truth[mine]
    pred = predict_entries(model, matrix, rows, cols, device, offsets=offsets, source=source)
    err = pred - truth.astype(np.float64)
    err_c = np.clip(pred, *matrix.scale) - truth.astype(np.float64)
    sums = [
        float(len(err)),
        (err_c**2).sum(),
        np.abs(err_c).sum(),
        (err**2).sum(),
        np.abs(err).sum(),
    ]
    n, sq_c, ab_c, sq, ab = all_sum(sums, world, device)  # unchanged when alone
    nan = float("nan")
    return {
        "val_rmse": math.sqrt(sq_c / n) if n else nan,
        "val_mae": ab_c / n if n else nan,
        "val_rmse_unclipped": math.sqrt(sq / n) if n else nan,
        "val_mae_unclipped": ab / n if n else nan,
    }


def checkpoint_payload(run: Run, epoch: int) -> dict[str, Any]:
    """The whole training state after ``epoch``: plain data, loadable with weights_only."""
    rng = {"shuffle": run.shuffle.get_state(), "torch": torch.get_rng_state()}
    if run.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "deeprec": __version__,
        "config": run.config.to_dict(),
        "model_config": run.model.config,
        "state_dict": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "epoch": epoch,
        "history": run.history,
        "rng": rng,
        "data": run.data_info(),
        "row_ids": torch.from_numpy(run.matrix.row_ids),
        "col_ids": torch.from_numpy(run.matrix.col_ids),
    }


def fit(
    run: Run,
    save_every: int = 1,
    quiet: bool = False,
    report: Callable[[str], None] = tqdm.write,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, float]:
    """Train ``run`` up to its config's epochs; returns the final validation metrics.

    After each epoch: one line to ``report``, metrics.json, model.pt every ``save_every``
    epochs and at the end, and ``on_epoch`` (rank 0) with the epoch's record plus its
    learning rate (TensorBoard logging, a tuner's pruning; an exception from it stops the
    run after that epoch's files are written). config.toml is written first. A diverged
    loss stops with the last good checkpoint named; Ctrl-C leaves the last completed
    epoch's files whole.
    """
    config, world = run.config, run.world
    if world.main:
        write_config(run)
    metrics: dict[str, float] = {}
    steps = math.ceil(run.matrix.n_rows / config.batch_size)
    if config.max_batches:
        steps = min(steps, config.max_batches)
    with flushed_denormals():
        for epoch in range(len(run.history) + 1, config.epochs + 1):
            batches = run.source.batches(
                config.batch_size,
                run.device,
                generator=run.shuffle,
                max_batches=config.max_batches,
                part=(world.rank, world.size),
            )
            bar = tqdm(
                batches,
                total=steps,
                desc=f"epoch {epoch}",
                leave=False,
                disable=True if quiet or not world.main else None,
            )
            t0 = time.perf_counter()
            try:
                set_lr(run.optimizer, epoch_lr(config, epoch))
                train_loss = run_epoch(
                    run.model,
                    run.optimizer,
                    bar,
                    run.path,
                    config.refeed,
                    world,
                    config.loss_every,
                    on_loss=lambda value, bar=bar: bar.set_postfix(loss=f"{value:.4f}"),
                )
            except TrainingDiverged as exc:
                raise TrainingDiverged(
                    f"{exc} in epoch {epoch}; the last good checkpoint is {run.out / 'model.pt'} "
                    "(try a lower --lr)"
                ) from None
            seconds = time.perf_counter() - t0
            metrics = validate(
                run.model, run.inputs, run.device, run.offsets, world, source=run.source
            )
            run.history.append(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "val_rmse": metrics["val_rmse"],
                    "seconds": seconds,
                }
            )
            if not world.main:
                continue
            report(
                f"epoch {epoch:3d}  train loss {train_loss:.4f}  "
                f"val RMSE {metrics['val_rmse']:.4f}  {seconds:.2f}s"
            )
            if epoch == config.epochs or epoch % save_every == 0:
                checkpoint.save(run.out / "model.pt", checkpoint_payload(run, epoch))
            write_metrics(run, metrics, memory.peak(run.device))
            if on_epoch is not None:
                on_epoch({**run.history[-1], "lr": epoch_lr(config, epoch), **metrics})
    if world.main:
        plot_losses(run.history, run.out / "loss.png")
    return metrics
