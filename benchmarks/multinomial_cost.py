"""What the multinomial objective's dense softmax costs at a catalog's size.

Mult-DAE (``--objective multinomial``) reads a batch through the sparse input layer but
needs every item's logit for the softmax: a batch of B users writes a B x items logit
matrix and its gradient each step. This times one training step (forward, loss, backward,
Adam) of the ``topk`` preset's shape (one 600-unit tanh layer) at a catalog size, and the
output layer with its log-softmax alone (forward and backward from fixed hidden
activations), as medians in one run; their ratio is the softmax's share of a step.

    python benchmarks/multinomial_cost.py [--items 87585] [--users-per-step 512]
        [--ratings-per-user 160] [--out FILE.json]

ML-32M: 87,585 items, 200,948 users, about 160 ratings per user.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import machine_info, measure

from deeprec.config import Config
from deeprec.model import AutoEncoder


def batch(users: int, items: int, per_user: int, seed: int = 0):
    """A random who-rated-what CSR batch: ``per_user`` distinct items per row."""
    g = torch.Generator().manual_seed(seed)
    cols = torch.stack([torch.randperm(items, generator=g)[:per_user] for _ in range(users)])
    col = cols.sort(1).values.reshape(-1).to(torch.int32)
    crow = torch.arange(0, users * per_user + 1, per_user, dtype=torch.int64)
    return crow, col


def run(items: int, users: int, per_user: int) -> dict:
    config = Config(objective="multinomial", hidden=[600], activation="tanh", input_dropout=0.5)
    torch.manual_seed(0)
    model = AutoEncoder.from_config(config, items)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    crow, col = batch(users, items, per_user)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.multinomial_loss(crow, col, impl="fused").backward()
        optimizer.step()

    out_weight, out_bias = model.output_layer()
    w = out_weight.detach().clone().requires_grad_()
    b = out_bias.detach().clone().requires_grad_()
    h = torch.randn(users, 600).tanh().requires_grad_()
    rows = torch.repeat_interleave(torch.arange(users), per_user)

    def softmax_only() -> None:
        log_p = torch.nn.functional.linear(h, w, b).log_softmax(1)
        (-log_p[rows, col.long()].sum() / users).backward()
        w.grad = b.grad = h.grad = None

    t_step = measure(step, runs=7, warmup=2)
    t_soft = measure(softmax_only, runs=7, warmup=2)
    return {
        "items": items,
        "users_per_step": users,
        "ratings_per_user": per_user,
        "logits_mb": users * items * 4 / 2**20,
        "step_s": t_step,
        "output_and_softmax_s": t_soft,
        "softmax_share": t_soft["median"] / t_step["median"],
        "machine": machine_info(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=87_585)
    p.add_argument("--users-per-step", type=int, default=512)
    p.add_argument("--ratings-per-user", type=int, default=160)
    p.add_argument("--epoch-users", type=int, default=200_948, help="users per epoch [ML-32M]")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    result = run(args.items, args.users_per_step, args.ratings_per_user)
    steps = -(-args.epoch_users // args.users_per_step)
    result["epoch_s_estimate"] = steps * result["step_s"]["median"]
    print(
        f"{args.items} items, {args.users_per_step} users per step: step "
        f"{result['step_s']['median'] * 1e3:.0f} ms (median), output layer + log-softmax "
        f"{result['output_and_softmax_s']['median'] * 1e3:.0f} ms "
        f"({result['softmax_share']:.0%} of the step), logits {result['logits_mb']:.0f} MiB; "
        f"an epoch of {args.epoch_users} users about {result['epoch_s_estimate'] / 60:.1f} min "
        f"({result['machine']['cpu']}, {result['machine']['torch_threads']} threads)"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
