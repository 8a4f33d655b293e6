"""The training wing: the plan (how a Config trains on a device), the Trainer (one model
assembled for one matrix), the epoch loop and its sinks, and the run folder.

plan -> optim -> assembly -> loop -> run_folder: each module imports only those before it.
"""

from deeprec.training.assembly import Trainer, model_inputs
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
