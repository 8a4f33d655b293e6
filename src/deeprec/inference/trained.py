"""A finished run loaded back: its model (eval mode, no optimizer), the data re-derived and
checked against the saved fingerprint, and the plan its ops run on here.

What evaluate, recommend, export and the workflows that score saved models stand on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deeprec import checkpoint
from deeprec.config import Config
from deeprec.data import Dataset, RatingMatrix
from deeprec.model import AutoEncoder
from deeprec.training.assembly import model_inputs
from deeprec.training.lifecycle import prepare_data, saved_config
from deeprec.training.plan import TrainingPlan, inference_plan


@dataclass
class Trained:
    """A trained model with the data it was trained on, for evaluation and recommendation
    (eval mode, no optimizer)."""

    config: Config
    device: torch.device
    dataset: Dataset
    matrix: RatingMatrix  # the ratings
    inputs: RatingMatrix  # what the model reads (residuals with --residual)
    offsets: Any  # baseline.Biases added to the model's outputs, or None
    model: AutoEncoder
    state: dict[str, Any]  # the loaded checkpoint
    plan: TrainingPlan  # how it predicts here (deeprec.training.plan.inference_plan)


def load_trained(path: str | Path, data_dir: str | None, device: torch.device) -> Trained:
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
    model = AutoEncoder.from_config(config, matrix.n_cols)
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise checkpoint.CheckpointError(
            f"{path}: weights do not fit the model ({str(exc).splitlines()[0]})"
        ) from None
    inputs, offsets = model_inputs(config, matrix)
    model = model.to(device).eval()
    chosen = inference_plan(config, device)
    return Trained(config, device, dataset, matrix, inputs, offsets, model, state, chosen)


def _saved_data_dir(state: dict[str, Any]) -> str | None:
    """The folder above the dataset the run used, so a plain re-run finds it again."""
    saved = Path(state["data"]["path"])
    name = state["config"]["data"]
    return str(saved.parent) if saved.exists() and saved.name == Path(name).name else None
