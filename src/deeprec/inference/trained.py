"""A finished run loaded back: a ModelOnData (eval mode, no optimizer) with its data
re-derived and checked against the saved fingerprint, the plan its ops run on here, and
what the checkpoint says of its training.

What evaluate, recommend, export, the Python API and the workflows that score saved
models stand on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deeprec import checkpoint, models
from deeprec.config import Config
from deeprec.data import Dataset, RatingMatrix
from deeprec.training.assembly import ModelOnData, model_inputs
from deeprec.training.lifecycle import located, prepare_data, saved_config
from deeprec.training.plan import inference_plan
from deeprec.training.run_folder import RunFolder


@dataclass(kw_only=True)
class Trained(ModelOnData):
    """A trained model with the data it was trained on (eval mode, no optimizer)."""

    data_path: Path  # where its ratings were read from
    history: list[dict[str, float]] = field(default_factory=list)  # its finished epochs

    @property
    def epoch(self) -> int:
        return len(self.history)


def load_trained(path: str | Path, data_dir: str | None, device: torch.device) -> Trained:
    """A trained model with its data re-derived and checked against the saved fingerprint
    (for evaluation and recommendation: eval mode, no optimizer)."""
    state = checkpoint.load(path)
    config = saved_config(state, path)
    dataset, matrix = _data(state, config, path, data_dir)
    if matrix.fingerprint() != state["data"]["fingerprint"]:
        raise checkpoint.CheckpointError(
            f"{path}: the data at {dataset.path} is not the data this model was trained on "
            "(fingerprint differs)"
        )
    model = models.build(config, matrix.n_cols)
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise checkpoint.CheckpointError(
            f"{path}: weights do not fit the model ({str(exc).splitlines()[0]})"
        ) from None
    inputs, offsets = model_inputs(config, matrix)
    return Trained(
        config=config,
        plan=inference_plan(config, device),
        device=device,
        matrix=matrix,
        inputs=inputs,
        offsets=offsets,
        model=model.to(device).eval(),
        titles=dataset.titles,
        data_path=dataset.path,
        history=list(state.get("history", [])),
    )


def _data(
    state: dict[str, Any], config: Config, path: str | Path, data_dir: str | None
) -> tuple[Dataset, RatingMatrix]:
    """The run's data: from ``data_dir`` when given; else a copy the run folder carries
    (a model fitted on a DataFrame: its folder's data/, wherever the folder moved); else
    where it was read from."""
    here = located(config, RunFolder.of(path), data_dir)  # a carried copy: an absolute path
    return prepare_data(here, data_dir or _saved_data_dir(state))


def _saved_data_dir(state: dict[str, Any]) -> str | None:
    """The folder above the dataset the run used, so a plain re-run finds it again."""
    saved = Path(state["data"]["path"])
    name = state["config"]["data"]
    return str(saved.parent) if saved.exists() and saved.name == Path(name).name else None
