"""A blend of I-AutoRec, U-AutoRec, the bias baseline and item/user kNN, weighted on a
nested split.

The two orientations of the same recipe reach similar accuracy with different errors, the
bias baseline corrects both, and the neighbourhood models (deeprec.scoring.neighbors) add the local
item-item and user-user evidence the autoencoders smooth over. The weights (one per model
and an intercept) are fit by least squares on a nested split of the training ratings (the
split's rule applied again to its training part); the models are then retrained on the
whole training part and the blend is scored once on the reported validation ratings, which
nothing before reads. The autoencoders train on the path the config asks for (``--fused``:
the sparse path); the kNN models are sparse products in scipy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from deeprec.config import Config
from deeprec.data import DataError, RatingMatrix, load, split
from deeprec.data.splits import known_users_items
from deeprec.inference.recommendation import TrainedScorer
from deeprec.inference.trained import load_trained
from deeprec.quality.evaluation import bootstrap_rmse
from deeprec.scoring import baseline, neighbors
from deeprec.scoring.predict import predict_entries
from deeprec.training import Trainer, fit, lifecycle

MODELS = ("I-AutoRec", "U-AutoRec", "bias baseline", "item kNN", "user kNN")


@dataclass
class BlendResult:
    weights: list[float]  # design()'s regressors: n_weights(len(MODELS)) of them
    rmse: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # (rmse, lo, hi)
    n_inner_val: int = 0
    n_val: int = 0


def predict_after_training(
    config: Config,
    train: pd.DataFrame,
    val: pd.DataFrame,
    scale: tuple[float, float],
    label: str | None = None,
) -> np.ndarray:
    """Clipped predictions at ``val``'s ratings (all known) of ``config`` trained on ``train``
    for its epochs, on the CPU, with the Trainer ``python -m deeprec.train`` uses (so
    --refeed and the rest apply). label: the progress bar's name (None: no bar)."""
    device = torch.device("cpu")
    matrix = RatingMatrix.from_split(train, val, config.by, scale)
    t = Trainer.assemble(config, matrix, device)
    fit(t, quiet=label is None, label=label or "", evaluate=False)
    rows, cols = matrix.val_rows, matrix.val_cols
    pred = predict_entries(t.model, t.inputs, rows, cols, t.plan, device, offsets=t.offsets)
    return np.clip(pred, *scale)


def classical_predictions(
    train: pd.DataFrame, val: pd.DataFrame, scale: tuple[float, float]
) -> list[np.ndarray]:
    """Clipped predictions at val's (known) ratings of the regularized bias baseline, then
    item kNN and user kNN on its residuals."""
    m = RatingMatrix.from_split(train, val, "user", scale)
    biases = baseline.fit(m.train, "user")
    parts = [biases.at(m.val_rows, m.val_cols)]
    parts += [neighbors.fit(m.train, kind, biases=biases).predict(m.val_rows, m.val_cols)
              for kind in neighbors.KINDS]  # fmt: skip
    return [np.clip(p, *scale) for p in parts]


def all_predictions(
    config: Config, train, val, scale, progress: str | None = None
) -> list[np.ndarray]:
    """Predictions of MODELS at val's ratings, each trained on train. progress: a name for
    this stage on the progress bars (None: no bars)."""
    item = config.replace(by="item")

    def label(model: str) -> str | None:
        return None if progress is None else f"{progress}: {model} "

    return [
        predict_after_training(item, train, val, scale, label("I-AutoRec")),
        predict_after_training(item.replace(by="user"), train, val, scale, label("U-AutoRec")),
        *classical_predictions(train, val, scale),
    ]


def support(train: pd.DataFrame, val: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """log(1 + training ratings) of each validation rating's user, and of its item."""
    n_user = train.groupby("user").size()
    n_item = train.groupby("item").size()
    return (np.log1p(val["user"].map(n_user).fillna(0).to_numpy(np.float64)),
            np.log1p(val["item"].map(n_item).fillna(0).to_numpy(np.float64)))  # fmt: skip


def design(parts: list[np.ndarray], user_support, item_support) -> list[np.ndarray]:
    """The blend's regressors (feature-weighted linear stacking): every model's prediction
    alone, times its user's log-support and times its item's log-support, then the two
    supports and a constant. How much to trust a model then depends on how much its user and
    item were seen: on the nested splits of ml-latest-small this cut the blend's RMSE by
    0.0016-0.0038 against fixed weights (experiments/results/quality-choices.md). Arrays
    broadcast, so the scorer passes (users, 1) and (1, items) supports with (users, items)
    predictions."""
    return [*parts, *(p * user_support for p in parts), *(p * item_support for p in parts),
            user_support + 0 * item_support, item_support + 0 * user_support,
            np.ones(np.broadcast_shapes(*(np.shape(p) for p in parts)))]  # fmt: skip


def n_weights(n_models: int) -> int:
    """How many regressors design() makes for n_models models."""
    return 3 * n_models + 3


def fit_weights(parts: list[np.ndarray], supports, truth: np.ndarray) -> np.ndarray:
    """Least-squares weights of design(parts, *supports) for ``truth``."""
    X = np.column_stack(design(parts, *supports))
    weights, *_ = np.linalg.lstsq(X, np.asarray(truth, dtype=np.float64), rcond=None)
    return weights


def combine(parts: list[np.ndarray], supports, weights) -> np.ndarray:
    """The blend: design(parts, *supports) weighted, in any broadcastable shape."""
    columns = design(parts, *supports)
    if len(columns) != len(weights):
        raise ValueError(f"{len(weights)} blend weights for {len(columns)} regressors")
    return sum(w * c for w, c in zip(weights, columns, strict=True))


@dataclass
class BlendRun:
    """One blend on one split: the outer training and validation ratings, each model's
    predictions at the validation ratings (MODELS order), the blend's, and the weights."""

    train: pd.DataFrame
    val: pd.DataFrame
    parts: list[np.ndarray]
    supports: tuple[np.ndarray, np.ndarray]
    blended: np.ndarray
    weights: np.ndarray
    n_inner_val: int


def blend_predictions(
    config: Config, data_dir: str | None = None, progress: bool = False
) -> BlendRun:
    """Fit the blend's weights on the nested split of ``config``'s data and split, retrain
    the models on the whole training part, and predict the validation ratings.
    progress: a bar per model trained (stage, model, epoch, time left)."""
    dataset = load(config.data, data_dir, config.scale_range())
    train, val = split(dataset.ratings, **config.split_options())
    val = known_users_items(val, train)
    inner_train, inner_val = split(train, **config.split_options())
    inner_val = known_users_items(inner_val, inner_train)
    if inner_val.empty or val.empty:
        raise DataError(
            f"the {config.split} split of {config.data} leaves no (inner) validation rating "
            "to fit or score the blend; use more data or another --split"
        )
    scale = dataset.scale
    inner = all_predictions(config, inner_train, inner_val, scale, _stage(progress, "1/2 weights"))
    truth = inner_val["rating"].to_numpy(np.float64)
    weights = fit_weights(inner, support(inner_train, inner_val), truth)
    outer = all_predictions(config, train, val, scale, _stage(progress, "2/2 scoring"))
    supports = support(train, val)
    blended = np.clip(combine(outer, supports, weights), *scale)
    return BlendRun(train, val, outer, supports, blended, weights, len(inner_val))


def _stage(progress: bool, name: str) -> str | None:
    return name if progress else None


def blend(config: Config, data_dir: str | None = None, progress: bool = False) -> BlendResult:
    """blend_predictions, scored: every model's and the blend's validation RMSE with a
    bootstrap 95% interval."""
    done = blend_predictions(config, data_dir, progress)
    truth = done.val["rating"].to_numpy(np.float64)
    result = BlendResult([float(w) for w in done.weights], {}, done.n_inner_val, len(truth))
    for name, pred in (*zip(MODELS, done.parts, strict=True), ("blend", done.blended)):
        rmse = float(np.sqrt(np.mean((pred - truth) ** 2)))
        result.rmse[name] = (rmse, *bootstrap_rmse(pred, truth))
    return result


# ------------------------------------------------------------------ a blend to recommend with
def save(
    config: Config,
    result: BlendResult,
    folder: Path,
    data_dir: str | None,
    progress: bool = False,
) -> None:
    """Train the blend's two models on the whole training part as run folders
    (folder/item, folder/user: the models the blend was scored with) and write
    folder/blend.json with the weights, for ``recommend --blend folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for by in ("item", "user"):
        job = lifecycle.start(config.replace(by=by), data_dir, torch.device("cpu"), folder / by)
        lifecycle.train(
            job, save_every=config.epochs, quiet=not progress, report=lambda _line: None
        )
    doc = {
        "models": list(MODELS),
        "weights": result.weights,
        "rmse": result.rmse,
        "config": config.to_dict(),
    }
    (folder / "blend.json").write_text(json.dumps(doc, indent=1))


class BlendScorer:
    """A saved blend as a ranking.Scorer: the weighted MODELS plus the intercept. The
    baseline and kNN models are refit on the saved models' training matrix (deterministic)."""

    def __init__(self, folder: Path, data_dir: str | None, device: torch.device) -> None:
        try:
            doc = json.loads((folder / "blend.json").read_text())
            weights = [float(w) for w in doc["weights"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"{folder}/blend.json: not a saved blend ({type(exc).__name__})"
            ) from None
        if doc.get("models") != list(MODELS):
            raise DataError(
                f"{folder}/blend.json: blends members {doc.get('models')}, this deeprec blends "
                f"{list(MODELS)}; save the blend again with this version"
            )
        if len(weights) != n_weights(len(MODELS)) or not all(np.isfinite(weights)):
            raise DataError(
                f"{folder}/blend.json: expected {n_weights(len(MODELS))} finite weights, "
                f"got {len(weights)}"
            )
        self.weights = weights
        self.parts = [TrainedScorer(load_trained(folder / by, data_dir, device))
                      for by in ("item", "user")]  # fmt: skip
        first, second = self.parts
        if not (np.array_equal(first.user_ids, second.user_ids)
                and np.array_equal(first.item_ids, second.item_ids)):  # fmt: skip
            raise DataError(f"{folder}: the blend's two models were trained on different data")
        self.user_ids, self.item_ids = second.user_ids, second.item_ids
        self.titles, self.scale = second.titles, second.scale
        train = second.run.matrix.train  # by user: rows users, columns items
        self.bias = baseline.fit(train, "user")
        self.user_support = np.log1p(np.diff(train.indptr).astype(np.float64))
        self.item_support = np.log1p(
            np.bincount(train.indices, minlength=train.shape[1]).astype(np.float64)
        )
        self.knn = [neighbors.fit(train, kind, biases=self.bias) for kind in neighbors.KINDS]

    def score_users(self, users: np.ndarray) -> np.ndarray:
        item, user = (np.clip(p.score_users(users), *self.scale) for p in self.parts)
        b = self.bias
        bias = np.clip(b.mu + b.rows[users][:, None] + b.cols[None, :], *self.scale)
        knn = [np.clip(m.score_users(users), *self.scale) for m in self.knn]
        supports = self.user_support[users][:, None], self.item_support[None, :]
        return combine([item, user, bias, *knn], supports, self.weights)

    def rated(self, user: int) -> np.ndarray:
        return self.parts[1].rated(user)
