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
from deeprec.errors import DeeprecError
from deeprec.ops.row_adam import row_adam_step
from deeprec.training.plan import TrainingPlan


class OptimizerError(DeeprecError):
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


class ItemAdam(torch.optim.Optimizer):
    """Adam whose item matrices take row-sparse gradients from the sparse path.

    The input weight, output weight and output bias (N rows each) get sparse COO
    gradients holding the batch's items only and are updated by deeprec's native
    row-sparse Adam; every other parameter by torch's fused Adam.
    lazy=False (the default for --fused): exactly dense Adam's update, untouched rows
    included (their gradient is zero), without ever building the dense gradient.
    lazy=True (--optimizer sparse-adam): only the batch's rows move (SparseAdam math).

    A ``torch.optim.Optimizer``: two param groups (the item matrices, marked ``rows``; the
    rest), one ``state`` per parameter, torch's ``state_dict`` format, so LR schedulers and
    state-dict tooling apply. The second group and the state of its parameters are shared
    with the torch Adam that updates them.
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
        items = model.item_parameters()
        ids = {id(p) for p in items}
        rest = [p for p in model.parameters() if id(p) not in ids]
        # torch's Adam over the rest: its one group dict becomes this optimizer's second group
        self._adam = make_optimizer("adam", rest, lr, weight_decay) if rest else None
        groups: list[dict[str, Any]] = [{"params": items, "rows": True, "lazy": lazy}]
        if self._adam is not None:
            self._adam.param_groups[0]["rows"] = False
            groups.append(self._adam.param_groups[0])
        super().__init__(groups, {"lr": lr, "betas": betas, "eps": eps,
                                  "weight_decay": weight_decay})  # fmt: skip
        if self._adam is not None:
            self._adam.state = self.state
        # Each item parameter gets one sparse gradient per step, its rows sorted and unique
        # (autograd drops the flag that says so), unless tied weights make one parameter
        # the input and the output weight: then autograd sums two, which must be merged.
        self.merge = model.tied

    @property
    def lazy(self) -> bool:
        return bool(self.param_groups[0]["lazy"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        for p in group["params"]:
            if p.grad is None:
                continue  # as torch's Adam: a parameter without a gradient is left alone
            st = self.state[p]
            if not st:
                st.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            st["step"] += 1
            row_adam_step(p, st["exp_avg"], st["exp_avg_sq"], p.grad, st["step"], group["lr"],
                          group["betas"], group["eps"], group["weight_decay"], group["lazy"],
                          merge=self.merge)  # fmt: skip
        if self._adam is not None:
            self._adam.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's format, or the {items, dense, lazy, lr} one that older checkpoints hold;
        refused in one line where it does not match this model and mode."""
        if "items" in state_dict:
            state_dict = _from_item_format(state_dict, len(self.param_groups[0]["params"]))
        groups = state_dict.get("param_groups", [])
        if len(groups) != len(self.param_groups) or any(
            len(g["params"]) != len(mine["params"])
            for g, mine in zip(groups, self.param_groups, strict=True)
        ):
            raise OptimizerError("optimizer state does not match this model/optimizer")
        if bool(groups[0].get("lazy")) != self.lazy:
            raise OptimizerError("optimizer state does not match this model/optimizer (lazy)")
        for index, p in zip(groups[0]["params"], self.param_groups[0]["params"], strict=True):
            for key in ("exp_avg", "exp_avg_sq"):
                saved = state_dict["state"].get(index, {}).get(key)
                if saved is not None and saved.shape != p.shape:
                    raise OptimizerError(f"optimizer state {key} has shape {tuple(saved.shape)}")
        super().load_state_dict(state_dict)
        if self._adam is not None:  # the loaded group dict replaced the shared one
            self._adam.param_groups = [self.param_groups[1]]
            self._adam.state = self.state


def _from_item_format(state: dict[str, Any], n_items: int) -> dict[str, Any]:
    """The {items, dense, lazy, lr} state of a checkpoint as torch's state_dict format."""
    if len(state["items"]) != n_items:
        raise OptimizerError("optimizer state does not match this model/optimizer")
    out: dict[str, Any] = {"state": {}, "param_groups": []}
    for i, saved in enumerate(state["items"]):
        out["state"][i] = {k: saved[k] for k in ("step", "exp_avg", "exp_avg_sq")}
    dense = state["dense"]
    first = dict(dense["param_groups"][0]) if dense["param_groups"] else {}
    out["param_groups"].append({**{k: v for k, v in first.items() if k != "params"},
                                "params": list(range(n_items)), "rows": True,
                                "lazy": bool(state["lazy"]), "lr": state["lr"]})  # fmt: skip
    for group in dense["param_groups"]:
        shifted = [n_items + i for i in group["params"]]
        out["param_groups"].append({**group, "params": shifted, "rows": False})
        for i in group["params"]:
            if i in dense["state"]:
                out["state"][n_items + i] = dense["state"][i]
    return out


def build(config: Config, model: torch.nn.Module, plan: TrainingPlan) -> torch.optim.Optimizer:
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
    learnable = getattr(model, "learnable", model.parameters)  # RecVAE: not its frozen prior
    return make_optimizer(config.optimizer, learnable(), lr, weight_decay)
