"""The training wing: the plan (how a Config trains on a device), ModelOnData (one model
on one matrix) and the Trainer (that model being trained), the epoch loop and its sinks,
the run folder, and a run's lifecycle (imported by name: ``from deeprec.training import
lifecycle``).

plan -> optim -> assembly -> loop -> run_folder -> lifecycle: each module imports only
those before it (tests/test_layering.py).
"""

from deeprec.training.assembly import ModelOnData, Trainer, model_inputs
from deeprec.training.loop import (
    LossTotal,
    Sink,
    TrainingDiverged,
    batch_loss,
    console,
    epoch_lr,
    fit,
    flushed_denormals,
    refeed_step,
    run_distributed_epoch,
    run_epoch,
    set_lr,
    validate,
    validate_trainer,
)
from deeprec.training.plan import TrainingPlan, plan
from deeprec.training.run_folder import FolderSink, RunFolder

__all__ = [
    "FolderSink",
    "LossTotal",
    "ModelOnData",
    "RunFolder",
    "Sink",
    "Trainer",
    "TrainingDiverged",
    "TrainingPlan",
    "batch_loss",
    "console",
    "epoch_lr",
    "fit",
    "flushed_denormals",
    "model_inputs",
    "plan",
    "refeed_step",
    "run_distributed_epoch",
    "run_epoch",
    "set_lr",
    "validate",
    "validate_trainer",
]
