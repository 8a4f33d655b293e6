"""Optimizers for training: torch's fused kernels, and Adam for row-sparse gradients.

With --fused, Adam (the default) becomes ItemAdam(lazy=False): the same update as
torch's Adam, but the item matrices' gradients arrive as the batch's rows only and
the dense zero-filled gradient is never written (writing it cost more than the sparse
kernels themselves; benchmarks/results/measurements.md).
``sparse-adam`` is different math, on purpose: lazy Adam moves only the rows of the
batch's items and leaves the moments of the others untouched.
"""

from __future__ import annotations

from typing import Any

import torch

from deeprec.choices import OPTIMIZERS
from deeprec.config import Config
from deeprec.ops.row_adam import row_adam_step
from deeprec.training.plan import TrainingPlan


class OptimizerError(ValueError):
    """An optimizer setting that cannot work with the rest of the configuration."""


def make_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The optimizer, as torch's single fused kernel where torch has one for it.

    The same update math in one pass over every weight instead of a loop over tensors:
    several times faster at the seed shape (benchmarks/results/measurements.md).
    """
    params = list(params)
    kinds = {
        "adam": (torch.optim.Adam, {}),
        "adamw": (torch.optim.AdamW, {}),
        "sgd": (torch.optim.SGD, {"momentum": 0.9}),
        "rmsprop": (torch.optim.RMSprop, {}),
        "adagrad": (torch.optim.Adagrad, {}),
    }
    if name not in kinds:
        raise OptimizerError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    cls, extra = kinds[name]
    try:
        return cls(params, lr=lr, weight_decay=weight_decay, fused=True, **extra)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this optimizer/device
        return cls(params, lr=lr, weight_decay=weight_decay, **extra)


class ItemAdam:
    """Adam whose item matrices take row-sparse gradients from the sparse path.

    The input weight, output weight and output bias (N rows each) get sparse COO
    gradients holding the batch's items only and are updated by deeprec's native
    row-sparse Adam; every other parameter by torch's fused Adam.
    lazy=False (the default for --fused): exactly dense Adam's update, untouched rows
    included (their gradient is zero), without ever building the dense gradient.
    lazy=True (--optimizer sparse-adam): only the batch's rows move (SparseAdam math).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        lr: float,
        weight_decay: float = 0.0,
        lazy: bool = False,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.items = model.item_parameters()
        ids = {id(p) for p in self.items}
        self.dense = make_optimizer(
            "adam", [p for p in model.parameters() if id(p) not in ids], lr, weight_decay
        )
        self.lazy, self.betas, self.eps, self.weight_decay = lazy, betas, eps, weight_decay
        # Each item parameter gets one sparse gradient per step, its rows sorted and unique
        # (autograd drops the flag that says so), unless tied weights make one parameter
        # the input and the output weight: then autograd sums two, which must be merged.
        self.merge = model.tied
        self.item_group = {"params": self.items, "lr": lr}
        self.item_state = [
            {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
            for p in self.items
        ]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """Live groups (torch's load_state_dict replaces the dense optimizer's group dicts)."""
        return [self.item_group, *self.dense.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.items:
            p.grad = None
        self.dense.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        for p, st in zip(self.items, self.item_state, strict=True):
            if p.grad is None:
                continue  # as torch's Adam: a parameter without a gradient is left alone
            st["step"] += 1
            row_adam_step(
                p,
                st["exp_avg"],
                st["exp_avg_sq"],
                p.grad,
                st["step"],
                self.item_group["lr"],
                self.betas,
                self.eps,
                self.weight_decay,
                self.lazy,
                merge=self.merge,
            )
        self.dense.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "items": self.item_state,
            "dense": self.dense.state_dict(),
            "lazy": self.lazy,
            "lr": self.item_group["lr"],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["items"]) != len(self.items) or state["lazy"] != self.lazy:
            raise OptimizerError("optimizer state does not match this model/optimizer")
        for mine, saved, p in zip(self.item_state, state["items"], self.items, strict=True):
            mine["step"] = int(saved["step"])
            for key in ("exp_avg", "exp_avg_sq"):
                if saved[key].shape != p.shape:
                    raise OptimizerError(
                        f"optimizer state {key} has shape {tuple(saved[key].shape)}"
                    )
                mine[key] = saved[key].to(p.device, p.dtype).contiguous()
        self.item_group["lr"] = state["lr"]
        self.dense.load_state_dict(state["dense"])


def build(config: Config, model: torch.nn.Module, plan: TrainingPlan):
    """The optimizer ``config`` names for ``model``, as the run's plan decided it.

    plan.sparse_grad: the item matrices' gradients arrive row-sparse, so Adam becomes
    ItemAdam (exact); plan.lazy: sparse-adam, the lazy ItemAdam (the plan has already
    refused sparse-adam without the sparse path).
    """
    lr, weight_decay = config.lr, config.weight_decay
    if plan.sparse_grad and config.optimizer in ("adam", "sparse-adam"):
        return ItemAdam(model, lr, weight_decay, lazy=plan.lazy)
    if config.optimizer == "sparse-adam":
        raise OptimizerError("sparse-adam needs row-sparse gradients (a plan with sparse_grad)")
    return make_optimizer(config.optimizer, model.parameters(), lr, weight_decay)
