"""The training loop: a batch's loss on the run's TrainingPlan, an epoch, the learning-rate
schedule, validation, and ``fit``, the one epoch loop, which reports each finished epoch
to its sinks (the run folder, the console, TensorBoard, a tuner's pruning).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from deeprec import precision
from deeprec.config import Config, ConfigError
from deeprec.data import Batch, RatingMatrix
from deeprec.distributed import ALONE, World, all_sum, reduce_gradients
from deeprec.model import AutoEncoder
from deeprec.ops import masked_mse, read_checked
from deeprec.scoring.metrics import ranking_metrics
from deeprec.scoring.predict import predict_entries, score_items
from deeprec.training.assembly import Trainer
from deeprec.training.plan import TrainingPlan

# A sink gets (trainer, record) after each finished epoch, on the main process, in order;
# an exception from one stops training after the sinks before it have run.
Sink = Callable[[Trainer, dict[str, Any]], None]


class TrainingDiverged(ConfigError):
    """The loss became NaN or infinite."""


@contextmanager
def flushed_denormals() -> Iterator[None]:
    """Flush denormal floats to zero for the block, then restore the caller's setting.

    Adam's moment estimates for items a batch never touches decay into denormals, which
    made late CPU epochs much slower (benchmarks/results/measurements.md). Set before
    torch starts its worker threads, which inherit it.
    """
    was_flushing = (torch.tensor([1e-40]) * 1.0).item() == 0.0
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_flushing)


def batch_loss(
    model: AutoEncoder, batch: Batch, path: TrainingPlan, update: int = 0
) -> torch.Tensor:
    """The training loss of one batch: masked MSE of the reconstruction at the stored ratings,
    computed the way ``path`` says (all three give the same value and gradients), or the
    multinomial loss of a ranking model (a variational one's KL term weighted as the plan's
    annealing says at 0-based update ``update``), in the plan's precision."""
    with precision.autocast(path.precision, batch.crow.device):
        return _batch_loss(model, batch, path, update)


def _batch_loss(model: AutoEncoder, batch: Batch, path: TrainingPlan, update: int) -> torch.Tensor:
    if path.objective == "multinomial":
        return model.multinomial_loss(
            batch.crow, batch.col, index=batch.index, impl=path.impl, backend=path.backend,
            beta=path.beta(update),
        )  # fmt: skip
    if path.loss == "sparse":
        return model.sparse_loss(
            *batch.csr, index=batch.index, impl=path.impl, backend=path.backend,
            sparse_grad=path.sparse_grad,
        )  # fmt: skip
    return masked_mse(model(batch.dense()), batch, impl=path.impl)


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
    path: TrainingPlan,
    refeed: bool = False,
    world: World = ALONE,
    loss_every: int = 0,
    on_loss: Callable[[float], None] | None = None,
    first_update: int = 0,
) -> float:
    """One pass over ``batches``; returns the epoch's loss (MSE over all its ratings).
    first_update: the 0-based count of updates before this epoch (a KL schedule reads it).

    The loss is read back every ``loss_every`` steps (0: about once a second; see
    LossTotal) and at the end, where a diverged loss or an index a GPU kernel refused is
    raised; ``on_loss`` gets each value read. Under torchrun ``batches`` are this rank's
    shares of the global batches, and the epoch is run_distributed_epoch's.
    """
    if world.active:
        return run_distributed_epoch(model, optimizer, batches, path, world, first_update)
    model.train()
    losses = LossTotal(loss_every, on_loss)
    for n, batch in enumerate(batches):
        loss = batch_loss(model, batch, path, first_update + n)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if refeed:
            refeed_step(model, optimizer, batch)
        losses.add(loss, batch.nnz if path.objective == "mse" else batch.crow.numel() - 1)
        if losses.due():
            losses.read()
    return losses.read()


def run_distributed_epoch(
    model: AutoEncoder,
    optimizer: Any,
    batches: Iterable[Batch],
    path: TrainingPlan,
    world: World,
    first_update: int = 0,
) -> float:
    """run_epoch for one rank: the loss is normalised by the global count of ratings in
    the global batch and the gradients are summed across ranks (deeprec.distributed), so
    the update equals one process's on the whole batch."""
    model.train()
    sparse = model.item_parameters() if path.sparse_grad else []
    sparse_ids = {id(p) for p in sparse}
    # what takes no gradient in this pass (RecVAE's resting half, its prior) is not reduced:
    # its grad stays None, so the optimizer leaves it and its moments alone on every rank
    dense = [p for p in model.parameters() if id(p) not in sparse_ids and p.requires_grad]
    loss_sum, count = 0.0, 0.0
    for n, batch in enumerate(batches):
        n_local = batch.col.numel()
        loss = batch_loss(model, batch, path, first_update + n) if n_local else None
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
    path: TrainingPlan,
    offsets: Any = None,
    world: World = ALONE,
    source: Any = None,
) -> dict[str, float]:
    """RMSE and MAE at the validation ratings, clipped to the scale and unclipped.

    source: where the batches come from (matrix, or a ResidentMatrix of it). path: the
    run's plan, whose ops it predicts with (a reference run validates without the kernels). Under
    torchrun each rank predicts the entries of its rows (row % size == rank) and the sums
    are all-reduced.
    """
    rows, cols, truth = matrix.val_rows, matrix.val_cols, matrix.val_ratings
    if world.active:
        mine = rows % world.size == world.rank
        rows, cols, truth = rows[mine], cols[mine], truth[mine]
    pred = predict_entries(model, matrix, rows, cols, path, device, offsets=offsets, source=source)
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


def validate_trainer(trainer: Trainer) -> dict[str, float]:
    """validate() of a Trainer's model on its own validation ratings, the way it trains; a
    ranking model (multinomial) by the top-k metrics of its validation users instead."""
    t = trainer
    if t.plan.objective == "multinomial":
        return validate_ranking(t.model, t.inputs, t.device, t.plan, t.matrix)
    return validate(t.model, t.inputs, t.device, t.plan, t.offsets, t.world, source=t.source)


# Per-epoch ranking validation scores at most this many validation users (a fixed, seeded
# sample of them; every one below it), as Liang et al. validate on 10,000 held-out users:
# ranking all 200,948 users of ML-32M's size took longer than the epoch. evaluate ranks
# every user.
VALIDATION_USERS = 10_000


def validate_ranking(
    model: AutoEncoder,
    inputs: RatingMatrix,
    device: torch.device,
    path: TrainingPlan,
    matrix: RatingMatrix | None = None,
) -> dict[str, float]:
    """NDCG@10 and Recall@20 of the model's top items for the validation users (relevant:
    a validation rating >= 4; training items excluded), as evaluate reports them; at most
    VALIDATION_USERS of them, the same ones every epoch. The model reads ``inputs``; the
    training items left out and the validation ratings are ``matrix``'s (default: the
    inputs; a model learning from liked items reads fewer than the user rated)."""
    matrix = inputs if matrix is None else matrix
    users = np.unique(matrix.user_view()[0])
    if len(users) > VALIDATION_USERS:
        pick = np.random.default_rng(0).choice(len(users), VALIDATION_USERS, replace=False)
        users = users[np.sort(pick)]
    if len(users) == 0:
        return {"val_ndcg@10": float("nan"), "val_recall@20": float("nan")}

    def scores(part: np.ndarray) -> np.ndarray:  # a slice of the users at a time
        return score_items(model, inputs, part, path, device)

    got = ranking_metrics(scores, users, matrix, reps=0)
    return {"val_ndcg@10": got["ndcg@10"], "val_recall@20": got["recall@20"]}


def fit(
    trainer: Trainer,
    sinks: Sequence[Sink] = (),
    *,
    quiet: bool = False,
    label: str = "",
    evaluate: bool = True,
) -> dict[str, float]:
    """Train from where ``trainer`` stands up to its config's epochs; returns the last
    epoch's validation metrics.

    After each epoch the record (epoch, train_loss, seconds, lr and, with ``evaluate``,
    the validation metrics) goes to each sink in order. The first epoch says how long an
    epoch will take when that is a minute or more. quiet: no progress bar (none either when
    output is not a terminal) and no estimate; label: what the bar names ("trial 3 ",
    "U-AutoRec "). A diverged loss or Ctrl-C stops with a message to which each sink with
    a ``stop_note(interrupted)`` adds its own (the last checkpoint, how to resume); after
    Ctrl-C a sink with ``flush(trainer)`` first records every finished epoch.
    """
    t, config, world = trainer, trainer.config, trainer.world
    metrics: dict[str, float] = {}
    steps = math.ceil(t.inputs.n_rows / config.batch_size)
    if config.max_batches:
        steps = min(steps, config.max_batches)
    epoch = len(t.history)
    first = epoch + 1
    # RecVAE's epoch: encoder passes, then a decoder pass (deeprec.recvae); else one pass
    phases = t.model.phases(config.encoder_passes) if config.recvae else [""]
    try:
        with flushed_denormals():
            for epoch in range(len(t.history) + 1, config.epochs + 1):
                t0 = time.perf_counter()
                lr = epoch_lr(config, epoch)
                set_lr(t.optimizer, lr)
                for n, phase in enumerate(phases):
                    if phase:
                        t.model.set_phase(phase)
                    batches = t.source.batches(
                        config.batch_size,
                        t.device,
                        generator=t.shuffle,
                        max_batches=config.max_batches,
                        part=(world.rank, world.size),
                    )
                    if epoch == first and n == 0 and not quiet and world.main:
                        batches = with_estimate(batches, steps * len(phases), tqdm.write, label)
                    bar = tqdm(
                        batches,
                        total=steps,
                        desc=f"{label}epoch {epoch}/{config.epochs}{f' {phase}' if phase else ''}",
                        leave=False,
                        disable=True if quiet or not world.main else None,
                    )
                    # the last pass's loss is the epoch's (RecVAE: the decoder's, no dropout)
                    train_loss = run_epoch(
                        t.model,
                        t.optimizer,
                        bar,
                        t.plan,
                        config.refeed,
                        world,
                        config.loss_every,
                        on_loss=lambda value, bar=bar: bar.set_postfix(loss=f"{value:.4f}"),
                        first_update=(epoch - 1) * steps,
                    )
                if config.recvae:
                    t.model.end_epoch()
                    t.model.set_phase(phases[0])
                seconds = time.perf_counter() - t0
                metrics = validate_trainer(t) if evaluate else {}
                record = {"epoch": epoch, "train_loss": train_loss, "seconds": seconds}
                for key in ("val_rmse", "val_ndcg@10"):
                    if key in metrics:
                        record[key] = metrics[key]
                t.history.append(record)
                if world.main:
                    for sink in sinks:
                        sink(t, {**record, "lr": lr, **metrics})
    except TrainingDiverged as exc:
        raise TrainingDiverged(_with_notes(f"{exc} in epoch {epoch}", sinks, False)) from None
    except KeyboardInterrupt:
        _flush(t, sinks if world.main else ())
        # the epoch's record is in the history once it finished (validation included)
        where = f"after epoch {epoch}" if len(t.history) >= epoch else f"in epoch {epoch}"
        raise KeyboardInterrupt(_with_notes(where, sinks, True)) from None
    return metrics


# The epoch-time estimate: said once, for an epoch expected to take at least ESTIMATE_FROM
# seconds, from the steps timed over the first ESTIMATE_AFTER seconds (the first step, which
# allocates the run's buffers, not counted).
ESTIMATE_AFTER = 5.0
ESTIMATE_FROM = 60.0


def with_estimate(
    batches: Iterable[Batch], steps: int, say: Callable[[str], None], label: str = ""
) -> Iterator[Batch]:
    """``batches``, saying once how long the whole epoch of ``steps`` steps will take when
    it will take long (a catalogue's scale). Each step is timed from one batch's request to
    the next: on a GPU, whose launches do not wait, the first estimate can be short."""
    start, said = None, False
    for n, batch in enumerate(batches):
        now = time.perf_counter()
        if n == 1:
            start = now
        elif start is not None and not said and now - start >= ESTIMATE_AFTER:
            said = True
            per = (now - start) / (n - 1)
            if per * steps >= ESTIMATE_FROM:
                say(
                    f"{label}about {_duration(per * steps)} per epoch ({steps:,} steps at "
                    f"{per:.2f} s, timed over {n - 1})"
                )
        yield batch


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _flush(trainer: Trainer, sinks: Sequence[Sink]) -> None:
    """Each sink's flush(trainer), on the way out of a Ctrl-C: a second Ctrl-C skips the rest."""
    try:
        for sink in sinks:
            if (flush := getattr(sink, "flush", None)) is not None:
                flush(trainer)
    except KeyboardInterrupt:
        pass


def _with_notes(text: str, sinks: Sequence[Sink], interrupted: bool) -> str:
    notes = [note(interrupted) for sink in sinks if (note := getattr(sink, "stop_note", None))]
    return "; ".join([text, *(n for n in notes if n)])


def console(report: Callable[[str], None] = tqdm.write) -> Sink:
    """A sink printing one line per epoch: loss, validation RMSE, seconds."""

    def line(_trainer: Trainer, record: dict[str, Any]) -> None:
        rmse = f"  val RMSE {record['val_rmse']:.4f}" if "val_rmse" in record else ""
        if "val_ndcg@10" in record:
            rmse = f"  val NDCG@10 {record['val_ndcg@10']:.4f}"
        report(
            f"epoch {record['epoch']:3d}  train loss {record['train_loss']:.4f}"
            f"{rmse}  {record['seconds']:.2f}s"
        )

    return line
