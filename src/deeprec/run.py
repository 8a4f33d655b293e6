"""Preparing a run: the device, the data a Config names, the model, the optimizer, and the run
folder (starting one, resuming one, or loading a finished one for evaluation).

What every command stands on; the epoch loop itself is in deeprec.training.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from deeprec import baseline, checkpoint, distributed, optim
from deeprec.config import Config, ConfigError, TrainingPath, decide_path, toml_text
from deeprec.data import DataError, Dataset, RatingMatrix, load, split
from deeprec.data.resident import ResidentMatrix
from deeprec.distributed import ALONE, World
from deeprec.model import AutoEncoder


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
    dataset = load(config.data, data_dir)
    train_df, val_df = split(
        dataset.ratings,
        config.split,
        quantile=config.quantile,
        val_frac=config.val_frac,
        seed=config.seed,
    )
    if val_df.empty:
        raise DataError(
            f"{dataset.path}: the {config.split} split leaves no validation rating whose user "
            "and item also occur in training; use more data or another "
            "--split/--quantile/--val-frac"
        )
    return dataset, RatingMatrix.from_split(train_df, val_df, config.by, dataset.scale)


def model_inputs(config: Config, matrix: RatingMatrix) -> tuple[RatingMatrix, Any]:
    """(the matrix the model reads and learns, offsets to add to its outputs or None).

    With --residual the model learns r - (mu + b_user + b_item), the regularized bias
    baseline fitted on the training ratings (deterministic, so evaluate and recommend
    rebuild it exactly); a model that learns nothing then predicts the baseline.
    """
    if not config.residual:
        return matrix, None
    offsets = baseline.fit(matrix.train, matrix.by)
    return matrix.minus(offsets), offsets


def build_model(config: Config, n_in: int) -> AutoEncoder:
    return AutoEncoder(
        n_in,
        config.hidden,
        config.activation,
        config.dropout,
        config.tied,
        config.last_activation,
        config.input_dropout,
    )


@dataclass
class Run:
    """Everything a run works on, built from its Config by ``start``, ``resume`` or ``load``."""

    config: Config
    device: torch.device
    dataset: Dataset
    matrix: RatingMatrix  # the ratings
    inputs: RatingMatrix  # what the model reads (residuals with --residual)
    offsets: Any  # baseline.Biases added to the model's outputs, or None
    model: AutoEncoder
    out: Path | None = None  # the run folder
    path: TrainingPath | None = None  # set when the run trains
    optimizer: Any = None
    shuffle: torch.Generator | None = None  # the batch order's generator
    history: list[dict[str, Any]] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)  # the loaded checkpoint, if any
    world: World = ALONE  # this process's place in a torchrun job
    source: Any = None  # where the batches come from: inputs, or a ResidentMatrix of it

    def data_info(self) -> dict[str, Any]:
        """What the checkpoint records about the data (checked again on load)."""
        return {
            "name": self.config.data,
            "path": str(self.dataset.path),
            "fingerprint": self.matrix.fingerprint(),
            "n_rows": self.matrix.n_rows,
            "n_cols": self.matrix.n_cols,
            "scale": list(self.matrix.scale),
        }


def _build(config: Config, data_dir: str | None, device: torch.device) -> Run:
    torch.manual_seed(config.seed)
    dataset, matrix = prepare_data(config, data_dir)
    model = build_model(config, matrix.n_cols).to(device)
    inputs, offsets = model_inputs(config, matrix)
    return Run(config, device, dataset, matrix, inputs, offsets, model)


def _make_trainable(run: Run, path: TrainingPath) -> None:
    """Fix the run's training path, and build the optimizer and batch order for it."""
    config = run.config
    run.path = path
    run.optimizer = optim.build(
        config.optimizer, run.model, config.lr, config.weight_decay, run.path.sparse_grad
    )
    run.shuffle = torch.Generator().manual_seed(config.seed)
    resident = config.data_on_device == "yes" or (
        config.data_on_device == "auto" and run.device.type == "cuda"
    )
    run.source = ResidentMatrix(run.inputs, run.device) if resident else run.inputs


def _agree(run: Run, world: World) -> None:
    """Under torchrun: every rank holds the same data and resolved config, or none trains."""
    config = json.dumps(run.config.to_dict(), sort_keys=True).encode()
    distributed.agree(
        world,
        run.device,
        data=run.matrix.fingerprint(),
        config=hashlib.sha256(config).hexdigest(),
    )


def default_out(config: Config) -> Path:
    """runs/<data>-<split>-<by>-<time>."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{Path(config.data).name}-{config.split}-{config.by}-{stamp}"


def check_world(config: Config, world: World) -> None:
    """What multi-process training does not cover yet, refused by name."""
    if world.active and config.refeed:
        raise ConfigError("--refeed is not supported under torchrun (one process only)")


def start(
    config: Config,
    data_dir: str | None,
    device: torch.device,
    out: Path | None = None,
    world: World = ALONE,
    overwrite: bool = False,
) -> Run:
    """A new run of ``config``, ready to train, writing to ``out``; a folder that already
    holds a run (a model.pt) is refused unless ``overwrite``."""
    config.check()
    if out is not None and not overwrite and (out / "model.pt").exists():
        raise ConfigError(
            f"--out {out} already holds a run (model.pt); continue it with --resume {out}, "
            "replace it with --overwrite, or pick another --out"
        )
    check_world(config, world)
    path = decide_path(config, device)  # decided once, before any data is loaded
    run = _build(config, data_dir, device)
    _agree(run, world)
    run.out = out or default_out(config)
    run.world = world
    _make_trainable(run, path)
    return run


def run_folder(path: Path) -> Path:
    """The run folder of a --resume argument (the folder, or the folder of its model.pt)."""
    return path if path.is_dir() else path.parent


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
    config = saved_config(state, folder)
    if epochs is not None:
        config = config.replace(epochs=epochs)
    out = run_folder(folder)
    if state["epoch"] >= config.epochs:
        raise ConfigError(
            f"{out} already ran {state['epoch']} epochs; pass --epochs N > {state['epoch']}"
        )
    check_world(config, world)
    path = decide_path(config, device)
    run = _build(config, data_dir, device)
    _agree(run, world)
    if state["data"]["fingerprint"] != run.matrix.fingerprint():
        raise checkpoint.CheckpointError(
            f"{folder}: checkpoint was trained on different data than {run.dataset.path} gives now"
        )
    run.out, run.state, run.world = out, state, world
    _make_trainable(run, path)
    run.model.load_state_dict(state["state_dict"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.history = list(state["history"])
    run.shuffle.set_state(state["rng"]["shuffle"])
    torch.set_rng_state(state["rng"]["torch"])
    if device.type == "cuda" and state["rng"].get("cuda"):
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return run


def load_trained(path: str | Path, data_dir: str | None, device: torch.device) -> Run:
    """A trained model with its data re-derived and checked against the saved fingerprint
    (for evaluation and recommendation: eval mode, no optimizer)."""
    state = checkpoint.load(path)
    config = saved_config(state, path)
    dataset, matrix = prepare_data(config, data_dir or _saved_data_dir(state))
    if matrix.fingerprint() != state["data"]["fingerprint"]:
        raise checkpoint.CheckpointError(
            f"{path}: the data at {dataset.path} is not the data this model was trained on "
            "(fingerprint differs)"
        )
    model = build_model(config, matrix.n_cols)
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise checkpoint.CheckpointError(
            f"{path}: weights do not fit the model ({str(exc).splitlines()[0]})"
        ) from None
    inputs, offsets = model_inputs(config, matrix)
    model = model.to(device).eval()
    return Run(config, device, dataset, matrix, inputs, offsets, model, state=state)


def _saved_data_dir(state: dict[str, Any]) -> str | None:
    """The folder above the dataset the run used, so a plain re-run finds it again."""
    saved = Path(state["data"]["path"])
    name = state["config"]["data"]
    return str(saved.parent) if saved.exists() and saved.name == Path(name).name else None


# ---------------------------------------------------------------------- run folder outputs
def write_metrics(run: Run, final: dict[str, float], memory: dict[str, float]) -> None:
    """metrics.json (the layout the README documents), written atomically."""
    config, matrix = run.config, run.matrix
    doc = {
        "dataset": config.data,
        "split": config.split,
        "by": config.by,
        "n_users": matrix.n_users,
        "n_items": matrix.n_items,
        "n_train": int(matrix.train.nnz),
        "n_val": len(matrix.val_ratings),
        "fused": config.fused,
        "world_size": run.world.size,
        "memory": memory,
        "config": config.to_dict(),
        "epochs": run.history,
        "final": final,
    }
    text = json.dumps(doc, indent=1)
    checkpoint.atomic_write(run.out / "metrics.json", lambda f: f.write(text.encode()))


def write_config(run: Run) -> None:
    """config.toml: the run's resolved configuration; ``train --config`` reproduces it."""
    text = toml_text(
        run.config,
        f"deeprec run configuration (resolved: preset, config file and flags applied).\n"
        f"Reproduce with: python -m deeprec.train --config {run.out / 'config.toml'}",
    )
    run.out.mkdir(parents=True, exist_ok=True)
    checkpoint.atomic_write(run.out / "config.toml", lambda f: f.write(text.encode()))


def plot_losses(history: list[dict[str, Any]], path: Path) -> None:
    """loss.png: train loss (log scale) and validation RMSE per epoch."""
    import matplotlib  # deferred: heavy, and only needed once at the end of a run

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", ms=3, label="train loss (masked MSE)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss (MSE)")
    ax.set_yscale("log")
    ax2 = ax.twinx()
    ax2.plot(epochs, [h["val_rmse"] for h in history], "s-", ms=3, color="C1", label="val RMSE")
    ax2.set_ylabel("validation RMSE")
    fig.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
