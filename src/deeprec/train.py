"""python -m deeprec.train: train the autoencoder and write a run folder.

Defaults reproduce the seed recipe (``--preset seed``): ml-latest-small, global-time
0.98 split, user-based, 512-512-1024 ReLU, Adam lr 1e-3, 40 epochs, batch 32. Any
flag given on the command line overrides the preset. The run folder holds
metrics.json, model.pt (the full training state; resume with --resume) and loss.png.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterable
from contextlib import contextmanager
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from deeprec import __version__, baseline, checkpoint, cli
from deeprec.data import SPLITS, Batch, DataError, RatingMatrix, load, split
from deeprec.model import ACTIVATIONS, AutoEncoder
from deeprec.ops import masked_mse
from deeprec.optim import OPTIMIZERS, OptimizerError, wants_sparse_grad
from deeprec.optim import build as build_optimizer
from deeprec.predict import predict_entries, rmse_mae


def presets() -> list[str]:
    return sorted(
        p.stem for p in resources.files("deeprec.presets").iterdir() if p.name.endswith(".json")
    )


def load_preset(name: str) -> dict[str, Any]:
    path = resources.files("deeprec.presets") / f"{name}.json"
    if not path.is_file():
        raise cli.UsageError(
            f"--preset {name!r} does not exist (choose from {', '.join(presets())})"
        )
    config = json.loads(path.read_text())
    config.pop("_doc", None)
    return config


def parse_hidden(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive integers, got {text!r}")
    return sizes


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m deeprec.train",
        description="Train a deep autoencoder recommender on explicit ratings. With no flags: "
        "the seed recipe on ml-latest-small (see --preset).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        help="dataset name (ml-latest-small, ml-100k, ml-1m, ml-20m, ...) "
        "or a path to a ratings folder/CSV [preset: ml-latest-small]",
    )
    g.add_argument(
        "--data-dir",
        help="folder holding dataset folders, e.g. DIR/ml-latest-small/"
        "ratings.csv (default: $DEEPREC_DATA, then the user cache)",
    )
    g.add_argument("--split", choices=SPLITS, help="train/validation split [preset: global-time]")
    g.add_argument("--quantile", type=float, help="global-time: timestamp quantile [0.98]")
    g.add_argument("--val-frac", type=float, help="user-time/random: validation fraction [0.2]")
    g.add_argument(
        "--by",
        choices=("user", "item"),
        help="rows are users (U-AutoRec) or items (I-AutoRec) [user]",
    )
    m = p.add_argument_group("model")
    m.add_argument("--hidden", type=parse_hidden, help="encoder sizes, e.g. 512,512,1024")
    m.add_argument("--activation", choices=sorted(ACTIVATIONS), help="hidden activation [relu]")
    m.add_argument(
        "--last-activation", choices=sorted(ACTIVATIONS), help="output activation [none]"
    )
    m.add_argument("--dropout", type=float, help="dropout on the code layer [0]")
    m.add_argument(
        "--input-dropout",
        type=float,
        help="dropout on the input ratings while training (denoising) [0]",
    )
    m.add_argument(
        "--residual",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="learn the residual over the regularized user+item bias baseline [no]",
    )
    m.add_argument(
        "--tied",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decoder reuses the encoder's weights, transposed [no]",
    )
    o = p.add_argument_group("optimization")
    o.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        help="[adam]; sparse-adam: lazy Adam on the "
        "item matrices (only the batch's items move; needs --fused; different math)",
    )
    o.add_argument("--lr", type=float, help="learning rate [1e-3]")
    o.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        help="learning rate over the epochs: constant, or cosine annealing to 0 [constant]",
    )
    o.add_argument(
        "--refeed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="dense re-feeding (Kuchaiev & Ginsburg 2017): after each step, feed the dense "
        "output back in and fit it too; needs the dense output, so it is slow [no]",
    )
    o.add_argument("--weight-decay", type=float, help="L2 weight decay [0]")
    o.add_argument(
        "--epochs", type=int, help="total epochs (with --resume: continue up to this) [40]"
    )
    o.add_argument("--batch-size", type=int, help="rows per batch [32]")
    o.add_argument("--seed", type=int, help="random seed (init, shuffling, dropout) [0]")
    o.add_argument(
        "--fused",
        action="store_true",
        default=None,
        help="use deeprec's fused native masked-MSE loss (error if unavailable on --device)",
    )
    r = p.add_argument_group("run")
    r.add_argument(
        "--preset", help=f"base recipe; flags override it ({', '.join(presets())}) [seed]"
    )
    r.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1, or auto (cuda if available)"
    )
    r.add_argument("--out", type=Path, help="run folder (default: runs/<data>-<split>-<by>-<time>)")
    r.add_argument(
        "--resume", type=Path, metavar="DIR", help="continue the run in DIR up to --epochs"
    )
    r.add_argument(
        "--save-every",
        type=positive_int,
        default=1,
        help="write model.pt every N epochs (and at the end)",
    )
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    cli.add_debug(p)
    return p


CONFIG_KEYS = (
    "input_dropout",
    "residual",
    "lr_schedule",
    "refeed",
    "data",
    "split",
    "quantile",
    "val_frac",
    "by",
    "hidden",
    "activation",
    "last_activation",
    "dropout",
    "tied",
    "optimizer",
    "lr",
    "weight_decay",
    "epochs",
    "batch_size",
    "seed",
)


# Options added after the seed preset; a preset or an older checkpoint without them gets these.
CONFIG_DEFAULTS = {
    "input_dropout": 0.0,
    "residual": False,
    "lr_schedule": "constant",
    "refeed": False,
}


def build_config(args: argparse.Namespace) -> dict[str, Any]:
    config = {**CONFIG_DEFAULTS, **load_preset(args.preset or "seed")}
    for key in CONFIG_KEYS:
        value = getattr(args, key)
        if value is not None:
            config[key] = value
    config["fused"] = bool(args.fused)
    check_config(config)
    return config


# Allowed range of every numeric option: (low, high, low included, high included); None is
# unbounded. NaN fails every comparison, so it is refused too.
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "epochs": (1, None, True, False),
    "batch_size": (1, None, True, False),
    "lr": (0, None, False, False),
    "weight_decay": (0, None, True, False),
    "dropout": (0, 1, True, False),
    "input_dropout": (0, 1, True, False),
    "quantile": (0, 1, False, False),
    "val_frac": (0, 1, False, False),
    "seed": (0, 2**63 - 1, True, True),
}


def check_range(key: str, value: float) -> None:
    """One numeric option inside its range (and finite), or a one-line UsageError."""
    lo, hi, lo_in, hi_in = RANGES[key]
    ok = math.isfinite(value)
    if lo is not None:
        ok = ok and (value >= lo if lo_in else value > lo)
    if hi is not None:
        ok = ok and (value <= hi if hi_in else value < hi)
    if not ok:  # every range has a lower bound; e.g. "in [0, 1)" or ">= 1"
        if hi is None:
            wanted = f">{'=' if lo_in else ''} {lo}"
        else:
            wanted = f"in {'[' if lo_in else '('}{lo}, {hi}{']' if hi_in else ')'}"
        raise cli.UsageError(f"--{key.replace('_', '-')} must be {wanted}, got {value}")


def check_config(config: dict[str, Any]) -> None:
    for key in RANGES:
        check_range(key, config[key])


def refuse_changes_on_resume(args: argparse.Namespace, saved: dict[str, Any]) -> None:
    """--resume continues the saved configuration exactly; a flag that would change it is
    refused by name, never dropped. --epochs (how far to continue) and the run options
    (--device, --data-dir, --save-every, --quiet) are allowed."""
    changed = []
    for key in (*CONFIG_KEYS, "fused"):
        given = getattr(args, key)
        if key != "epochs" and given is not None and given != saved.get(key):
            changed.append(f"--{key.replace('_', '-')} {given} (the run has {saved.get(key)})")
    if args.preset is not None:
        changed.append(f"--preset {args.preset}")
    if args.out is not None:
        changed.append(f"--out {args.out} (a resumed run writes to its own folder)")
    if changed:
        raise cli.UsageError(
            "--resume continues the saved configuration; these flags would change it: "
            f"{'; '.join(changed)}. Drop them, or start a new run instead"
        )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise cli.UsageError(
            f"--device {name!r} is not a device (cpu, cuda, cuda:1, auto)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise cli.UsageError(f"--device {name}: torch sees no CUDA device")
    return device


def build_model(config: dict[str, Any], n_in: int) -> AutoEncoder:
    return AutoEncoder(
        n_in,
        config["hidden"],
        config["activation"],
        config["dropout"],
        config["tied"],
        config["last_activation"],
        config.get("input_dropout", 0.0),
    )


def prepare_data(config: dict[str, Any], data_dir: str | None) -> tuple[Any, RatingMatrix]:
    """Load, split and index the data a config names (also used by evaluate and recommend)."""
    dataset = load(config["data"], data_dir)
    train_df, val_df = split(
        dataset.ratings,
        config["split"],
        quantile=config["quantile"],
        val_frac=config["val_frac"],
        seed=config["seed"],
    )
    if val_df.empty:
        raise DataError(
            f"{dataset.path}: the {config['split']} split leaves no validation rating whose user "
            "and item also occur in training; use more data or another "
            "--split/--quantile/--val-frac"
        )
    return dataset, RatingMatrix.from_split(train_df, val_df, config["by"], dataset.scale)


def model_inputs(config: dict[str, Any], matrix: RatingMatrix) -> tuple[RatingMatrix, Any]:
    """(the matrix the model reads and learns, offsets to add to its outputs or None).

    With --residual the model learns r - (mu + b_user + b_item), the regularized bias
    baseline fitted on the training ratings (deterministic, so evaluate and recommend
    rebuild it exactly); a model that learns nothing then predicts the baseline.
    """
    if not config.get("residual"):
        return matrix, None
    offsets = baseline.fit(matrix.train, matrix.by)
    return matrix.minus(offsets), offsets


def validate(
    model: AutoEncoder, matrix: RatingMatrix, device: torch.device, offsets: Any = None
) -> dict[str, float]:
    pred = predict_entries(model, matrix, matrix.val_rows, matrix.val_cols, device, offsets=offsets)
    lo, hi = matrix.scale
    rmse, mae = rmse_mae(np.clip(pred, lo, hi), matrix.val_ratings)
    rmse_u, mae_u = rmse_mae(pred, matrix.val_ratings)
    return {
        "val_rmse": rmse,
        "val_mae": mae,
        "val_rmse_unclipped": rmse_u,
        "val_mae_unclipped": mae_u,
    }


def plot_losses(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

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


class TrainingDiverged(cli.UsageError):
    """The loss became NaN or infinite."""


def require_fused(device: torch.device) -> None:
    """--fused promises the native kernels: say why not before any work is done."""
    from deeprec.ops import fused_available

    if not fused_available(device):
        from deeprec import _native

        raise cli.UsageError(f"--fused: {_native.unavailable_reason(device)}")


def batch_loss(
    model: AutoEncoder, batch: Batch, fused: bool, sparse_grad: bool = False
) -> torch.Tensor:
    """The training loss of one batch: masked MSE of the reconstruction at the stored ratings.

    Reference: the dense model on the dense batch. Fused: the sparse path (sparse input
    layer, output layer only at stored ratings); with a last activation, the dense model
    with the fused masked-MSE kernel.
    """
    if not fused:
        return masked_mse(model(batch.dense()), batch.csr, impl="reference")
    if model.supports_sparse:
        return model.sparse_loss(
            *batch.csr, index=batch.index, impl="fused", sparse_grad=sparse_grad
        )
    return masked_mse(model(batch.dense()), batch.csr, impl="fused")


def epoch_lr(config: dict[str, Any], epoch: int) -> float:
    """The learning rate of 1-based ``epoch`` under the config's schedule (resume-exact)."""
    if config.get("lr_schedule", "constant") == "cosine":
        return config["lr"] * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / config["epochs"]))
    return config["lr"]


def set_lr(optimizer: Any, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def refeed_step(model: AutoEncoder, optimizer: Any, batch: Batch) -> None:
    """Dense re-feeding: fit f(f(x)) to f(x) over every item, f(x) held fixed."""
    with torch.no_grad():
        target = model(batch.dense())
    loss = torch.nn.functional.mse_loss(model(target), target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def run_epoch(
    model: AutoEncoder,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    fused: bool,
    sparse_grad: bool = False,
    refeed: bool = False,
) -> float:
    """One pass over ``batches``; returns the epoch's loss (MSE over all its ratings)."""
    model.train()
    loss_sum, count = 0.0, 0
    for batch in batches:
        loss = batch_loss(model, batch, fused, sparse_grad)
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingDiverged(f"loss became {value}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if refeed:
            refeed_step(model, optimizer, batch)
        loss_sum += value * batch.col.numel()
        count += batch.col.numel()
    return loss_sum / max(count, 1)


@contextmanager
def flushed_denormals():
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


def main(args: argparse.Namespace) -> int:
    with flushed_denormals():
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    if args.resume is not None:
        state = checkpoint.load(args.resume)
        config = {**CONFIG_DEFAULTS, **state["config"]}
        refuse_changes_on_resume(args, config)
        if args.epochs is not None:
            check_range("epochs", args.epochs)
            config["epochs"] = args.epochs
        out = args.resume if args.resume.is_dir() else args.resume.parent
        if state["epoch"] >= config["epochs"]:
            raise cli.UsageError(
                f"{out} already ran {state['epoch']} epochs; pass --epochs N > {state['epoch']}"
            )
    else:
        state = None
        config = build_config(args)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = (
            args.out
            or Path("runs")
            / f"{Path(str(config['data'])).name}-{config['split']}-{config['by']}-{stamp}"
        )
    device = resolve_device(args.device)
    torch.manual_seed(config["seed"])
    dataset, matrix = prepare_data(config, args.data_dir)
    if state is not None and state["data"]["fingerprint"] != matrix.fingerprint():
        raise checkpoint.CheckpointError(
            f"{args.resume}: checkpoint was trained on different data than {dataset.path} gives now"
        )
    model = build_model(config, matrix.n_cols).to(device)
    inputs, offsets = model_inputs(config, matrix)
    sparse_path = config["fused"] and model.supports_sparse
    try:
        optimizer = build_optimizer(
            config["optimizer"], model, config["lr"], config["weight_decay"], sparse_path
        )
    except OptimizerError as exc:
        raise cli.UsageError(str(exc)) from None
    sparse_grad = wants_sparse_grad(optimizer)
    shuffle = torch.Generator().manual_seed(config["seed"])
    history: list[dict[str, Any]] = []
    if state is not None:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        history = list(state["history"])
        shuffle.set_state(state["rng"]["shuffle"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    impl = "fused" if config["fused"] else "reference"
    if config["fused"]:
        require_fused(device)
    print(
        f"deeprec {__version__} | {dataset.path} | split {config['split']} | by {config['by']} | "
        f"{matrix.n_users} users x {matrix.n_items} items | {matrix.train.nnz} train / "
        f"{len(matrix.val_ratings)} val ratings | {device} | loss: {impl}"
    )
    data_info = {
        "name": config["data"],
        "path": str(dataset.path),
        "fingerprint": matrix.fingerprint(),
        "n_rows": matrix.n_rows,
        "n_cols": matrix.n_cols,
        "scale": list(matrix.scale),
    }
    start = len(history)
    metrics = None
    for epoch in range(start + 1, config["epochs"] + 1):
        bar = tqdm(
            inputs.batches(config["batch_size"], device, generator=shuffle),
            total=math.ceil(matrix.n_rows / config["batch_size"]),
            desc=f"epoch {epoch}",
            leave=False,
            disable=True if args.quiet else None,
        )
        t0 = time.perf_counter()
        try:
            set_lr(optimizer, epoch_lr(config, epoch))
            train_loss = run_epoch(
                model, optimizer, bar, config["fused"], sparse_grad, config.get("refeed", False)
            )
        except TrainingDiverged as exc:
            raise TrainingDiverged(
                f"{exc} in epoch {epoch}; the last good checkpoint is {out / 'model.pt'} "
                "(try a lower --lr)"
            ) from None
        seconds = time.perf_counter() - t0
        metrics = validate(model, inputs, device, offsets)
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_rmse": metrics["val_rmse"],
                "seconds": seconds,
            }
        )
        tqdm.write(
            f"epoch {epoch:3d}  train loss {history[-1]['train_loss']:.4f}  "
            f"val RMSE {metrics['val_rmse']:.4f}  {seconds:.2f}s"
        )
        last = epoch == config["epochs"]
        if last or epoch % max(args.save_every, 1) == 0:
            rng = {"shuffle": shuffle.get_state(), "torch": torch.get_rng_state()}
            if device.type == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state_all()
            checkpoint.save(
                out / "model.pt",
                {
                    "deeprec": __version__,
                    "config": config,
                    "model_config": model.config,
                    "state_dict": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                    "history": history,
                    "rng": rng,
                    "data": data_info,
                    "row_ids": torch.from_numpy(matrix.row_ids),
                    "col_ids": torch.from_numpy(matrix.col_ids),
                },
            )
        write_metrics(out, config, matrix, history, metrics)
    plot_losses(history, out / "loss.png")
    print(
        f"final val RMSE {metrics['val_rmse']:.4f}  MAE {metrics['val_mae']:.4f} "
        f"(unclipped {metrics['val_rmse_unclipped']:.4f})  -> {out}"
    )
    return 0


def write_metrics(
    out: Path,
    config: dict[str, Any],
    matrix: RatingMatrix,
    history: list[dict[str, Any]],
    final: dict[str, float],
) -> None:
    doc = {
        "dataset": config["data"],
        "split": config["split"],
        "by": config["by"],
        "n_users": matrix.n_users,
        "n_items": matrix.n_items,
        "n_train": int(matrix.train.nnz),
        "n_val": len(matrix.val_ratings),
        "fused": config["fused"],
        "config": config,
        "epochs": history,
        "final": final,
    }
    text = json.dumps(doc, indent=1)
    checkpoint.atomic_write(out / "metrics.json", lambda f: f.write(text.encode()))


def cli_main(argv: list[str] | None = None) -> int:
    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli_main())
