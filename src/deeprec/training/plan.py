"""The TrainingPlan: how a Config trains and predicts on a device, decided once.

Everything after the decision (the optimizer, the batch loss, validation, the batch
source) reads the plan instead of asking the model or the optimizer again, and a run
that cannot work (``--fused`` with no kernels, sparse-adam without the sparse path) is
refused here, before any data is loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch

from deeprec import precision as precisions
from deeprec.config import Config, ConfigError
from deeprec.model import linear_output
from deeprec.ops import backends, unavailable_reason


@dataclass(frozen=True)
class TrainingPlan:
    """How every batch's loss and gradients are computed, and where batches live.

    loss: "reference" (dense model, pure-PyTorch masked MSE), "fused" (dense model, the
    fused masked-MSE kernel: a last activation needs the dense output), or "sparse" (the
    fully sparse path: sparse input layer, output layer only at the stored ratings).
    sparse_grad: the item matrices get row-sparse gradients, for deeprec's row-sparse Adam.
    lazy: that Adam moves only the batch's rows (--optimizer sparse-adam).
    resident: the training ratings stay on the device (--data-on-device).
    objective: "mse" (the ratings) or "multinomial" (Mult-DAE / Mult-VAE: a softmax over
    every item; loss "sparse" then means the fused input layer and the chunked fused
    output layer + loss, deeprec.ops.multinomial_nll; "reference" the pure-PyTorch input
    layer and the dense log-softmax).
    anneal: a variational model's KL schedule, (beta cap, annealing updates); None else.
    linear_output: the model's output layer is linear, so predictions at given entries
    need no dense output row.
    backend: what runs the sparse layers and the multinomial epilogue, "native" (deeprec's
    kernels) or "torch" (torch's own ops): the measured faster one on the device
    (deeprec.ops.backends).
    precision: what the training forward passes run in (deeprec.precision): "fp32",
    "bf16" (autocast) or "tf32"; validation and inference read the float32 weights.
    """

    loss: Literal["reference", "fused", "sparse"]
    sparse_grad: bool = False
    lazy: bool = False
    resident: bool = False
    linear_output: bool = True
    objective: str = "mse"
    anneal: tuple[float, int] | None = None
    backend: str = "native"
    precision: str = "fp32"

    def beta(self, update: int) -> float:
        """The KL term's weight at 0-based update ``update``: min(cap, update / steps)
        (Liang et al.'s linear annealing), 0 for a model without one."""
        if self.anneal is None:
            return 0.0
        cap, steps = self.anneal
        return min(cap, update / steps)

    @property
    def impl(self) -> str:
        """The ops' impl argument for this run, training and validation alike."""
        return "reference" if self.loss == "reference" else "fused"


def plan(config: Config, device: torch.device) -> TrainingPlan:
    """The TrainingPlan ``config`` asks for on ``device``, or a ConfigError saying why not."""
    linear = linear_output(config.last_activation)
    sparse = config.fused and linear
    if config.optimizer == "sparse-adam" and not sparse:
        raise ConfigError(
            "--optimizer sparse-adam needs --fused and a linear output (--last-activation none)"
        )
    if config.fused and (reason := unavailable_reason(device)) is not None:
        raise ConfigError(f"--fused: {reason}")
    precisions.check(config.precision, device)
    precisions.advise(config.precision, config.objective)
    return dataclasses.replace(_plan(config, device), precision=config.precision)


def _plan(config: Config, device: torch.device) -> TrainingPlan:
    """plan's path, loss and backend (its checks made)."""
    linear = linear_output(config.last_activation)
    sparse = config.fused and linear
    resident = config.data_on_device == "yes" or (
        config.data_on_device == "auto" and device.type == "cuda"
    )
    backend = backends.default(device)
    if config.objective == "multinomial":  # Config.check has refused what does not fit
        anneal = (config.beta_cap, config.anneal_steps) if config.variational else None
        return TrainingPlan(
            "sparse" if config.fused else "reference",
            resident=resident,
            objective="multinomial",
            anneal=anneal,
            backend=backend,
        )
    if not config.fused:
        return TrainingPlan("reference", resident=resident, linear_output=linear, backend=backend)
    if not sparse:
        return TrainingPlan("fused", resident=resident, linear_output=False, backend=backend)
    return TrainingPlan(
        "sparse",
        sparse_grad=config.optimizer in ("adam", "sparse-adam"),
        lazy=config.optimizer == "sparse-adam",
        resident=resident,
        backend=backend,
    )


def inference_plan(config: Config, device: torch.device) -> TrainingPlan:
    """How a trained model of ``config`` predicts on ``device``: with the kernels wherever
    they run (they are exact, so a model trained either way predicts the same), else with
    the pure-PyTorch ops, so a model trained with --fused still loads on any machine."""
    linear = linear_output(config.last_activation)
    backend = backends.default(device)
    if unavailable_reason(device) is not None:
        return TrainingPlan(
            "reference", linear_output=linear, objective=config.objective, backend=backend
        )
    loss = "sparse" if linear else "fused"
    return TrainingPlan(loss, linear_output=linear, objective=config.objective, backend=backend)
