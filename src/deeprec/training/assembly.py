"""One model of a Config on one rating matrix and device (``ModelOnData``), and the
``Trainer``: that same object with the state its training carries beside it.

Built the same way for every caller (``train``, the Python API, a tuning trial, each
member of a blend), so an option such as ``--refeed``, ``--max-batches`` or
``--data-on-device`` reaches them all: the plan, the seeded model, the optimizer, the
batch order and the batch source come from one ``Trainer.assemble``. A finished run
loaded back (deeprec.inference.trained) is a ``ModelOnData`` without the training state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from deeprec import models
from deeprec.config import Config
from deeprec.data import RatingMatrix
from deeprec.data.resident import ResidentMatrix
from deeprec.distributed import ALONE, World
from deeprec.scoring import baseline
from deeprec.training import optim
from deeprec.training.plan import TrainingPlan, plan


def model_inputs(
    config: Config, matrix: RatingMatrix
) -> tuple[RatingMatrix, baseline.Biases | None]:
    """(the matrix the model reads and learns, offsets to add to its outputs or None).

    With --residual the model learns r - (mu + b_user + b_item), the regularized bias
    baseline fitted on the training ratings (deterministic, so evaluate and recommend
    rebuild it exactly); a model that learns nothing then predicts the baseline. With
    --liked-at a ranking model reads and learns only the ratings at or above it.
    """
    if config.liked_at:
        return matrix.at_least(config.liked_at), None
    if not config.residual:
        return matrix, None
    offsets = baseline.fit(matrix.train, matrix.by)
    return matrix.minus(offsets), offsets


@dataclass
class ModelOnData:
    """A model with the data it reads and the plan its ops run on: what predicting,
    ranking, evaluating and exporting need, whether the model is training or loaded."""

    config: Config
    plan: TrainingPlan
    device: torch.device
    matrix: RatingMatrix  # the ratings (validation compares against these)
    inputs: RatingMatrix  # what the model reads (residuals with --residual)
    offsets: baseline.Biases | None  # added to the model's outputs (--residual)
    model: models.Model
    titles: dict[int, str] = field(default_factory=dict)  # item id -> title, where known


@dataclass(kw_only=True)
class Trainer(ModelOnData):
    """A ModelOnData being trained: its optimizer, batch source and order, and the
    finished epochs (``history``) beside the model and data."""

    optimizer: torch.optim.Optimizer
    source: RatingMatrix | ResidentMatrix  # where the batches come from
    shuffle: torch.Generator  # the batch order
    world: World = ALONE
    history: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def assemble(
        cls,
        config: Config,
        matrix: RatingMatrix,
        device: torch.device,
        world: World = ALONE,
        training_plan: TrainingPlan | None = None,
        titles: dict[int, str] | None = None,
    ) -> Trainer:
        """A fresh model of ``config`` for ``matrix`` on ``device``, seeded by the config.

        training_plan: the plan already decided for this config and device (deciding it
        again gives the same plan)."""
        chosen = training_plan if training_plan is not None else plan(config, device)
        torch.manual_seed(config.seed)
        model = models.build(config, matrix.n_cols).to(device)
        inputs, offsets = model_inputs(config, matrix)
        return cls(
            config=config,
            plan=chosen,
            device=device,
            matrix=matrix,
            inputs=inputs,
            offsets=offsets,
            model=model,
            titles=dict(titles or {}),
            optimizer=optim.build(config, model, chosen),
            source=ResidentMatrix(inputs, device) if chosen.resident else inputs,
            shuffle=torch.Generator().manual_seed(config.seed),
            world=world,
        )

    def state(self) -> dict[str, Any]:
        """The training state a checkpoint keeps: weights, optimizer, history, RNGs."""
        rng = {"shuffle": self.shuffle.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "model_config": self.model.config,
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": len(self.history),
            "history": self.history,
            "rng": rng,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue exactly where ``state`` (a checkpoint's training state) left off."""
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = list(state["history"])
        self.shuffle.set_state(state["rng"]["shuffle"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and state["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
