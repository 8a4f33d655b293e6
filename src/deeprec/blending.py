"""A blend of I-AutoRec, U-AutoRec and the bias baseline, weighted on a nested split.

The two orientations of the same recipe reach similar accuracy with different errors, and
the bias baseline corrects both. The weights (one per model and an intercept) are fit by
least squares on a nested split of the training ratings (the split's rule applied again to
its training part); the models are then retrained on the whole training part and the blend
is scored once on the reported validation ratings, which nothing before reads. All training
runs the path the config asks for (``--fused``: the sparse path).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from deeprec import baseline, optim
from deeprec.config import Config, decide_path
from deeprec.data import DataError, RatingMatrix, load, split
from deeprec.evaluation import bootstrap_rmse
from deeprec.predict import predict_entries
from deeprec.run import build_model, model_inputs
from deeprec.training import epoch_lr, flushed_denormals, run_epoch, set_lr

MODELS = ("I-AutoRec", "U-AutoRec", "bias baseline")


@dataclass
class BlendResult:
    weights: list[float]  # one per MODELS entry, then the intercept
    rmse: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # (rmse, lo, hi)
    n_inner_val: int = 0
    n_val: int = 0


def known_validation(train: pd.DataFrame, val: pd.DataFrame) -> pd.DataFrame:
    """Validation ratings whose user and item both occur in training (what can be scored)."""
    keep = val["user"].isin(train["user"].unique()) & val["item"].isin(train["item"].unique())
    return val[keep].reset_index(drop=True)


def predict_after_training(
    config: Config, train: pd.DataFrame, val: pd.DataFrame, scale: tuple[float, float]
) -> np.ndarray:
    """Clipped predictions at ``val``'s ratings (all known) of ``config`` trained on ``train``
    for its epochs, on the CPU, as ``python -m deeprec.train`` trains."""
    device = torch.device("cpu")
    matrix = RatingMatrix.from_split(train, val, config.by, scale)
    inputs, offsets = model_inputs(config, matrix)
    torch.manual_seed(config.seed)
    model = build_model(config, matrix.n_cols)
    path = decide_path(config, device)
    opt = optim.build(config.optimizer, model, config.lr, config.weight_decay, path.sparse_grad)
    order = torch.Generator().manual_seed(config.seed)
    with flushed_denormals():
        for epoch in range(1, config.epochs + 1):
            set_lr(opt, epoch_lr(config, epoch))
            run_epoch(model, opt, inputs.batches(config.batch_size, generator=order), path)
    pred = predict_entries(model, inputs, matrix.val_rows, matrix.val_cols, device, offsets=offsets)
    return np.clip(pred, *scale)


def bias_predictions(
    train: pd.DataFrame, val: pd.DataFrame, scale: tuple[float, float]
) -> np.ndarray:
    """The regularized bias baseline's clipped predictions at val's (known) ratings."""
    m = RatingMatrix.from_split(train, val, "user", scale)
    return np.clip(baseline.fit(m.train, "user").at(m.val_rows, m.val_cols), *scale)


def all_predictions(config: Config, train, val, scale) -> list[np.ndarray]:
    """Predictions of MODELS at val's ratings, each trained on train."""
    item = config.replace(by="item")
    return [
        predict_after_training(item, train, val, scale),
        predict_after_training(item.replace(by="user"), train, val, scale),
        bias_predictions(train, val, scale),
    ]


def blend(config: Config, data_dir: str | None = None) -> BlendResult:
    """Fit the blend's weights on the nested split of ``config``'s data and split, retrain
    on the whole training part, and score every model and the blend on the validation."""
    dataset = load(config.data, data_dir)
    kwargs = dict(quantile=config.quantile, val_frac=config.val_frac, seed=config.seed)
    train, val = split(dataset.ratings, config.split, **kwargs)
    val = known_validation(train, val)
    inner_train, inner_val = split(train, config.split, **kwargs)
    inner_val = known_validation(inner_train, inner_val)
    if inner_val.empty or val.empty:
        raise DataError(
            f"the {config.split} split of {config.data} leaves no (inner) validation rating "
            "to fit or score the blend; use more data or another --split"
        )
    scale = dataset.scale
    inner = all_predictions(config, inner_train, inner_val, scale)
    X = np.column_stack([*inner, np.ones(len(inner_val))])
    weights, *_ = np.linalg.lstsq(X, inner_val["rating"].to_numpy(np.float64), rcond=None)
    outer = all_predictions(config, train, val, scale)
    truth = val["rating"].to_numpy(np.float64)
    blended = np.clip(np.column_stack([*outer, np.ones(len(truth))]) @ weights, *scale)
    result = BlendResult([float(w) for w in weights], {}, len(inner_val), len(truth))
    for name, pred in (*zip(MODELS, outer, strict=True), ("blend", blended)):
        rmse = float(np.sqrt(np.mean((pred - truth) ** 2)))
        result.rmse[name] = (rmse, *bootstrap_rmse(pred, truth))
    return result


# ------------------------------------------------------------------ a blend to recommend with
def save(config: Config, result: BlendResult, folder: Path, data_dir: str | None) -> None:
    """Train the blend's two models on the whole training part as run folders
    (folder/item, folder/user: the models the blend was scored with) and write
    folder/blend.json with the weights, for ``recommend --blend folder``."""
    from deeprec import run, training  # the run layer, only when saving

    folder.mkdir(parents=True, exist_ok=True)
    for by in ("item", "user"):
        job = run.start(config.replace(by=by), data_dir, torch.device("cpu"), folder / by)
        training.fit(job, save_every=config.epochs, quiet=True, report=lambda _line: None)
    doc = {
        "models": ["item", "user"],
        "weights": result.weights,
        "rmse": result.rmse,
        "config": config.to_dict(),
    }
    (folder / "blend.json").write_text(json.dumps(doc, indent=1))


class BlendScorer:
    """A saved blend as a ranking.Scorer: w_I I-AutoRec + w_U U-AutoRec + w_b bias + w_0."""

    def __init__(self, folder: Path, data_dir: str | None, device: torch.device) -> None:
        from deeprec import run
        from deeprec.recommendation import TrainedScorer

        try:
            doc = json.loads((folder / "blend.json").read_text())
            weights = [float(w) for w in doc["weights"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"{folder}/blend.json: not a saved blend ({type(exc).__name__})"
            ) from None
        if len(weights) != 4 or not all(np.isfinite(weights)):
            raise DataError(f"{folder}/blend.json: expected 4 finite weights, got {weights}")
        self.weights = weights
        self.parts = [TrainedScorer(run.load_trained(folder / by, data_dir, device))
                      for by in ("item", "user")]  # fmt: skip
        first, second = self.parts
        if not (np.array_equal(first.user_ids, second.user_ids)
                and np.array_equal(first.item_ids, second.item_ids)):  # fmt: skip
            raise DataError(f"{folder}: the blend's two models were trained on different data")
        self.user_ids, self.item_ids = second.user_ids, second.item_ids
        self.titles, self.scale = second.titles, second.scale
        matrix = second.run.matrix  # by user: rows users, columns items
        self.bias = baseline.fit(matrix.train, "user")

    def score_users(self, users: np.ndarray) -> np.ndarray:
        w = self.weights
        item, user = (np.clip(p.score_users(users), *self.scale) for p in self.parts)
        b = self.bias
        bias = np.clip(b.mu + b.rows[users][:, None] + b.cols[None, :], *self.scale)
        return w[0] * item + w[1] * user + w[2] * bias + w[3]

    def rated(self, user: int) -> np.ndarray:
        return self.parts[1].rated(user)
