"""A training run's lifecycle: the device, the data a Config names, its Trainer and its
RunFolder; starting one, resuming one, training it to its epochs and saving it.

What ``train`` and the workflows that train (blends, the search) stand on; a finished run
loaded back for evaluation or recommendation is ``deeprec.inference.trained``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from deeprec import __version__, checkpoint, distributed, memory
from deeprec.config import Config, ConfigError
from deeprec.data import DataError, Dataset, RatingMatrix, load, split
from deeprec.data.frames import IN_MEMORY
from deeprec.distributed import ALONE, World
from deeprec.training.assembly import Trainer
from deeprec.training.loop import Sink, TrainingDiverged, console, fit
from deeprec.training.plan import plan
from deeprec.training.run_folder import FolderSink, RunFolder


def resolve_device(name: str) -> torch.device:
    """'auto' (cuda when torch sees one, else cpu), 'cpu', 'cuda', 'cuda:1'."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device (cpu, cuda, cuda:1, auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: torch sees no CUDA device")
    return device


def prepare_data(config: Config, data_dir: str | None) -> tuple[Dataset, RatingMatrix]:
    """Load, split and index the data a config names."""
    dataset = load(config.data, data_dir, config.scale_range())
    return dataset, matrix_of(config, dataset)


def matrix_of(config: Config, dataset: Dataset) -> RatingMatrix:
    """The dataset split and indexed as ``config`` says."""
    train_df, val_df = split(dataset.ratings, **config.split_options())
    if val_df.empty:
        raise DataError(
            f"{dataset.path}: the {config.split} split leaves no validation rating whose user "
            "and item also occur in training; use more data or another "
            "--split/--quantile/--val-frac"
        )
    return RatingMatrix.from_split(train_df, val_df, config.by, dataset.scale)


@dataclass
class Run:
    """A training run: its data, its Trainer and its folder (built by start or resume)."""

    dataset: Dataset
    trainer: Trainer
    folder: RunFolder

    @property
    def config(self) -> Config:
        return self.trainer.config

    @property
    def matrix(self) -> RatingMatrix:
        return self.trainer.matrix

    def data_info(self) -> dict[str, Any]:
        return data_info(self.config, self.dataset, self.matrix)


def data_info(config: Config, dataset: Dataset, matrix: RatingMatrix) -> dict[str, Any]:
    """What the checkpoint records about the data (checked again on load)."""
    return {
        "name": config.data,
        "path": str(dataset.path),
        "fingerprint": matrix.fingerprint(),
        "n_rows": matrix.n_rows,
        "n_cols": matrix.n_cols,
        "scale": list(matrix.scale),
    }


def _agree(config: Config, matrix: RatingMatrix, device: torch.device, world: World) -> None:
    """Under torchrun: every rank holds the same data and resolved config, or none trains."""
    text = json.dumps(config.to_dict(), sort_keys=True).encode()
    distributed.agree(
        world, device, data=matrix.fingerprint(), config=hashlib.sha256(text).hexdigest()
    )


def default_out(config: Config) -> Path:
    """runs/<data>-<split>-<by>-<time>."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{Path(config.data).name}-{config.split}-{config.by}-{stamp}"


def check_world(config: Config, world: World) -> None:
    """What multi-process training does not cover yet, refused by name."""
    if world.active and config.refeed:
        raise ConfigError("--refeed is not supported under torchrun (one process only)")


def _assemble(
    config: Config, data_dir: str | None, device: torch.device, world: World
) -> tuple[Dataset, Trainer]:
    check_world(config, world)
    chosen = plan(config, device)  # decided once, before any data is loaded
    dataset, matrix = prepare_data(config, data_dir)
    _agree(config, matrix, device, world)
    return dataset, Trainer.assemble(config, matrix, device, world, chosen, dataset.titles)


def start(
    config: Config,
    data_dir: str | None,
    device: torch.device,
    out: Path | None = None,
    world: World = ALONE,
    overwrite: bool = False,
    carry: Dataset | None = None,
) -> Run:
    """A new run of ``config``, ready to train, writing to ``out``; a folder that already
    holds a run (a model.pt) is refused unless ``overwrite``.

    carry: ratings held in memory (deeprec.data.frames), written into the run folder's
    data/ first and read from there, as every later command reads them."""
    config.check()
    folder = RunFolder(out or default_out(config))
    refuse_taken(folder, out is not None and not overwrite)
    if carry is not None:
        config = carried_config(config, folder, carry)
    dataset, trainer = _assemble(config, data_dir, device, world)
    return Run(dataset, trainer, folder)


def refuse_taken(folder: RunFolder, refuse: bool) -> None:
    """With ``refuse``: a one-line ConfigError where ``folder`` already holds a run, saying
    how to go on from the command line and from Python."""
    if refuse and folder.holds_run():
        raise ConfigError(
            f"{folder.path} already holds a run (model.pt); continue it (train --resume "
            f"{folder.path}, or Recommender.resume), replace it (--overwrite, or "
            "overwrite=True), or pick another folder"
        )


def carried_config(config: Config, folder: RunFolder, dataset: Dataset) -> Config:
    """``config`` reading ``dataset``'s ratings from the copy written into ``folder``'s data/
    (with the scale stated, so the copy is read on the same scale)."""
    where = folder.write_data(dataset.ratings, dataset.titles)
    return config.replace(data=str(where.resolve()), scale=list(dataset.scale))


def located(config: Config, folder: RunFolder, data_dir: str | None) -> Config:
    """``config`` reading its ratings where they are now: a run folder's own data/ (a model
    fitted on ratings held in memory) wherever the folder moved, unless ``data_dir`` says."""
    if data_dir is None and folder.carried_data.is_dir():
        return config.replace(data=str(folder.carried_data.resolve()))
    return config


def in_memory(config: Config, dataset: Dataset, device: torch.device) -> Trainer:
    """A fresh Trainer of ``config`` on ``dataset`` (ratings held in memory or read by
    name), with no run folder: ``save`` writes one when asked."""
    config.check()
    chosen = plan(config, device)
    return Trainer.assemble(config, matrix_of(config, dataset), device, ALONE, chosen,
                            dataset.titles)  # fmt: skip


def save(
    trainer: Trainer,
    dataset: Dataset | None,
    out: Path,
    overwrite: bool = False,
    slim: bool = False,
    final: dict[str, float] | None = None,
) -> Run:
    """Write an in-memory Trainer as a run folder, as ``train`` leaves one (config.toml,
    model.pt, metrics.json, loss.png; data/ for ratings held in memory); the trainer's
    config then names where its data lives.

    dataset: the ratings it was trained on (None: read again from its config). final: the
    last epoch's validation metrics for metrics.json (None: those its history kept)."""
    folder = RunFolder(out)
    refuse_taken(folder, not overwrite)
    if dataset is None:
        dataset = load(trainer.config.data, None, trainer.config.scale_range())
    if dataset.path == IN_MEMORY:
        trainer.config = carried_config(trainer.config, folder, dataset)
        dataset = replace(dataset, name=trainer.config.data, path=folder.carried_data.resolve())
    run = Run(dataset, trainer, folder)
    folder.write_config(trainer.config)
    folder.save_checkpoint(checkpoint_payload(run, trainer, slim))
    if not final:
        last = trainer.history[-1] if trainer.history else {}
        final = {k: v for k, v in last.items() if k.startswith("val_")}
    folder.write_metrics(metrics_doc(run, final, memory.peak(trainer.device)))
    folder.plot(trainer.history)
    return run


def run_folder(path: Path) -> Path:
    """The run folder of a --resume argument (the folder, or the folder of its model.pt)."""
    return RunFolder.of(path).path


def saved_config(state: dict[str, Any], where: Path | str) -> Config:
    try:
        return Config.from_dict(state["config"], f"{where}: saved config")
    except ConfigError as exc:
        raise checkpoint.CheckpointError(str(exc)) from None


def resume(
    folder: Path,
    data_dir: str | None,
    device: torch.device,
    epochs: int | None = None,
    state: dict[str, Any] | None = None,
    world: World = ALONE,
) -> Run:
    """The run in ``folder``, restored exactly where its last checkpoint left it.

    epochs: continue up to this many epochs (default: the saved total). state: the
    checkpoint, if the caller has already loaded it.
    """
    state = state if state is not None else checkpoint.load(folder)
    if state.get("slim"):
        raise checkpoint.CheckpointError(
            f"{folder}: saved with --slim (weights only, no optimizer state): it can be "
            "evaluated, recommended from and exported, but not resumed"
        )
    out = RunFolder.of(folder)
    config = located(saved_config(state, folder), out, data_dir)
    if epochs is not None:
        config = config.replace(epochs=epochs)
    if state["epoch"] >= config.epochs:
        raise ConfigError(
            f"{out.path} already ran {state['epoch']} epochs; pass --epochs N > {state['epoch']}"
        )
    dataset, trainer = _assemble(config, data_dir, device, world)
    if state["data"]["fingerprint"] != trainer.matrix.fingerprint():
        raise checkpoint.CheckpointError(
            f"{folder}: checkpoint was trained on different data than {dataset.path} gives now"
        )
    trainer.restore(state)
    return Run(dataset, trainer, out)


def train(
    run: Run,
    save_every: int = 1,
    quiet: bool = False,
    report: Callable[[str], None] = tqdm.write,
    sinks: Sequence[Sink] = (),
    slim: bool = False,
) -> dict[str, float]:
    """Train ``run`` to its config's epochs; returns the final validation metrics.

    slim: the last epoch's model.pt keeps the weights only (no optimizer or RNG state): a
    third of the size, for evaluation, recommendation and export, but not resumable.

    config.toml is written first; after each epoch model.pt (every ``save_every`` epochs
    and at the last), metrics.json, then one line to ``report``, then the extra ``sinks``
    (TensorBoard, a tuner). A diverged loss or Ctrl-C stops with the saved epoch and the
    command that continues the run; loss.png is drawn at the end.
    """
    trainer, main = run.trainer, run.trainer.world.main
    if main:
        run.folder.write_config(run.config)
    folder_sink = FolderSink(
        run.folder,
        save_every,
        payload=lambda t: checkpoint_payload(run, t, slim and len(t.history) == t.config.epochs),
        metrics=lambda t, final, peak: metrics_doc(run, final, peak),
        resume=f"python -m deeprec.train --resume {run.folder.path}",
        saved_epoch=len(trainer.history) or None,
    )
    try:
        final = fit(trainer, [folder_sink, console(report), *sinks], quiet=quiet)
    except TrainingDiverged as exc:
        raise TrainingDiverged(f"{exc} (try a lower --lr)") from None
    if main:
        run.folder.plot(trainer.history)
    return final


def checkpoint_payload(run: Run, trainer: Trainer, slim: bool = False) -> dict[str, Any]:
    """The whole training state after the trainer's last epoch: plain data, loadable with
    weights_only. slim: without the optimizer and RNG states (not resumable)."""
    state = trainer.state()
    if slim:
        state = {k: v for k, v in state.items() if k not in ("optimizer", "rng")}
    return {
        "deeprec": __version__,
        "config": run.config.to_dict(),
        **state,
        "slim": slim,
        "data": run.data_info(),
        "row_ids": torch.from_numpy(run.matrix.row_ids),
        "col_ids": torch.from_numpy(run.matrix.col_ids),
    }


def metrics_doc(run: Run, final: dict[str, float], memory: dict[str, float]) -> dict[str, Any]:
    """metrics.json's document (the layout the README documents)."""
    config, matrix = run.config, run.matrix
    return {
        "dataset": config.data,
        "split": config.split,
        "by": config.by,
        "n_users": matrix.n_users,
        "n_items": matrix.n_items,
        "n_train": int(matrix.train.nnz),
        "n_val": len(matrix.val_ratings),
        "fused": run.trainer.plan.impl == "fused",
        "world_size": run.trainer.world.size,
        "memory": memory,
        "config": config.to_dict(),
        "epochs": run.trainer.history,
        "final": final,
    }
