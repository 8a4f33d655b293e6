"""ItemAdam is a torch.optim.Optimizer: its groups are live (torch's Adam over the rest shares
them), LR schedulers move both, its state_dict is torch's format and round-trips exactly,
and a checkpoint's state in the {items, dense, lazy, lr} format still loads."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import random_csr

from deeprec.config import Config
from deeprec.model import AutoEncoder
from deeprec.training.optim import ItemAdam, OptimizerError, build
from deeprec.training.plan import TrainingPlan

pytestmark = pytest.mark.usefixtures("native_required")
BATCH = random_csr(16, 60, 0.2, seed=5)


def trained(steps: int, lazy: bool = False, seed: int = 2):
    torch.manual_seed(seed)
    model = AutoEncoder(60, (8, 4)).double()
    opt = build(Config(lr=1e-2, optimizer="sparse-adam" if lazy else "adam"), model,
                TrainingPlan("sparse", sparse_grad=True, lazy=lazy))  # fmt: skip
    for _ in range(steps):
        step(model, opt)
    return model, opt


def step(model, opt):
    opt.zero_grad()
    model.sparse_loss(*BATCH, impl="fused", backend="native", sparse_grad=True).backward()
    opt.step()


def goes_on_alike(model, opt, saved, lazy: bool, steps: int) -> None:
    """A fresh model and optimizer given model's weights and the optimizer state ``saved``
    take the next ``steps`` steps exactly as model and opt do."""
    twin, fresh = trained(0, lazy)
    twin.load_state_dict(model.state_dict())
    fresh.load_state_dict(saved)
    for _ in range(steps):
        step(model, opt)
        step(twin, fresh)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_it_is_an_optimizer_with_live_groups_and_a_scheduler_moves_both():
    model, opt = trained(0)
    assert isinstance(opt, torch.optim.Optimizer) and isinstance(opt, ItemAdam)
    assert [g["rows"] for g in opt.param_groups] == [True, False]
    assert opt.param_groups[1] is opt._adam.param_groups[0]
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    step(model, opt)
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [5e-3, 5e-3]
    # the halved rate is the one both parts use: as an optimizer set to 5e-3 by hand
    other_model, other = trained(1)
    for g in other.param_groups:
        g["lr"] = 5e-3
    step(model, opt)
    step(other_model, other)
    for a, b in zip(model.parameters(), other_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("lazy", [False, True])
def test_state_dict_round_trips_exactly(lazy):
    model, opt = trained(3, lazy)
    saved = copy.deepcopy(opt.state_dict())  # as a checkpoint holds it: no shared tensors
    assert set(saved) == {"state", "param_groups"}  # torch's format
    goes_on_alike(model, opt, saved, lazy, steps=2)


def test_the_earlier_checkpoint_format_loads_to_the_same_state():
    model, opt = trained(3)
    new = copy.deepcopy(opt.state_dict())
    k = len(opt.param_groups[0]["params"])
    rest = new["param_groups"][1]
    old = {  # what a checkpoint holds from the {items, dense, lazy, lr} format
        "items": [new["state"][i] for i in range(k)],
        "dense": {  # torch Adam's own state_dict over the other parameters
            "state": {i - k: new["state"][i] for i in rest["params"]},
            "param_groups": [
                {
                    **{n: v for n, v in rest.items() if n != "rows"},
                    "params": [i - k for i in rest["params"]],
                }
            ],
        },
        "lazy": False,
        "lr": new["param_groups"][0]["lr"],
    }
    goes_on_alike(model, opt, old, False, steps=1)


def test_a_state_of_another_model_or_mode_is_refused():
    _, opt = trained(1)
    _, lazy = trained(1, lazy=True)
    with pytest.raises(OptimizerError, match="lazy"):
        lazy.load_state_dict(opt.state_dict())
    torch.manual_seed(0)
    wider = AutoEncoder(60, (16, 4)).double()
    other = build(Config(lr=1e-2), wider, TrainingPlan("sparse", sparse_grad=True))
    with pytest.raises(OptimizerError, match="shape"):
        other.load_state_dict(opt.state_dict())
