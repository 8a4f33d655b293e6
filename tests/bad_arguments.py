"""Every public op, every tensor argument, each made wrong in each way: the cases, and a
worker that runs them and reports each on its own line.

Run by tests/test_bad_arguments.py in subprocesses: a case that kills the process (a
segfault, an abort) is named by the last case the worker started, and the runner goes on
with the next in a new worker, so each call is isolated from the others' crashes.

An argument is made wrong in four ways: None, a wrong dtype (an integer tensor for a float
one, a float tensor for an index), a wrong device (``meta``: a device no kernel runs on)
and a wrong shape (one entry short along its last dimension). Every case must end in a
one-line TypeError or ValueError whose message names the argument; where None is a valid
value (an optional bias), the call must succeed instead.

    python tests/bad_arguments.py [--from K] [--plant NAME]

prints ``CASE k <name>`` before case k and ``DONE k <outcome>`` after it; --plant swaps in
a planted defect (for the test that shows the sweep catches one).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import random_csr

from deeprec.csr import ColumnIndex, column_index
from deeprec.ops import (
    masked_mse,
    multinomial_nll,
    row_adam_step,
    sparse_linear,
    sparse_output_mse,
)

B, N, H = 4, 6, 3
D = torch.float64


def base() -> dict[str, object]:
    """Sound arguments of every op: a batch with every row filled and an entry in the last
    column (so a narrower output or weight is always wrong), its index, and the tensors."""
    crow, col, val = random_csr(B, N, 0.5, seed=3)
    assert bool((crow.diff() > 0).all()) and int(col.max()) == N - 1
    g = torch.Generator().manual_seed(5)

    def rnd(*shape):
        return torch.randn(*shape, dtype=D, generator=g)

    rows = torch.tensor([0, 2, 5])
    return {
        "crow": crow, "col": col, "val": val, "index": column_index(crow, col),
        "output": rnd(B, N), "weight": rnd(N, H), "bias": rnd(H), "h": rnd(B, H),
        "out_bias": rnd(N), "p": rnd(N, H), "exp_avg": rnd(N, H).abs(),
        "exp_avg_sq": rnd(N, H).abs(),
        "grad": torch.sparse_coo_tensor(rows[None], rnd(3, H), (N, H), check_invariants=False),
    }  # fmt: skip


# ------------------------------------------------------------------ the ops, by path
PATHS = {
    "fused/native": dict(impl="fused", backend="native"),
    "fused/torch": dict(impl="fused", backend="torch"),
    "reference": dict(impl="reference"),
}


def _target(a):
    return (a["crow"], a["col"], a["val"])


def _index(a):
    return ColumnIndex(a["perm"], a["ucol"], a["uptr"], a["rows"]) if "perm" in a else a["index"]


@dataclass(frozen=True)
class OpSpec:
    name: str
    call: Callable[[dict, dict], object]
    args: tuple[str, ...]  # the tensor arguments this op reads, by the names above
    optional: tuple[str, ...] = ()  # those for which None is a valid value
    paths: tuple[str, ...] = tuple(PATHS)


def _no_backend(path: dict) -> dict:
    return {k: v for k, v in path.items() if k != "backend"}


ADAM = (1, 1e-2, (0.9, 0.999), 1e-8, 0.0, False)  # step, lr, betas, eps, decay, lazy
OPS = [
    OpSpec(
        "masked_mse",
        lambda a, p: masked_mse(a["output"], _target(a), **_no_backend(p)),
        ("output", "crow", "col", "val"),
        paths=("fused/native", "reference"),
    ),
    OpSpec(
        "sparse_linear",
        lambda a, p: sparse_linear(_target(a), a["weight"], a["bias"], index=_index(a), **p),
        ("crow", "col", "val", "weight", "bias", "perm", "ucol", "uptr", "rows"),
        optional=("bias",),
    ),
    OpSpec(
        "sparse_output_mse",
        lambda a, p: sparse_output_mse(
            a["h"], a["weight"], a["out_bias"], _target(a), index=_index(a), **p
        ),
        ("h", "weight", "out_bias", "crow", "col", "val", "perm", "ucol", "uptr", "rows"),
        optional=("out_bias",),
    ),
    OpSpec(
        "multinomial_nll",
        lambda a, p: multinomial_nll(a["h"], a["weight"], a["out_bias"], _target(a), **p),
        ("h", "weight", "out_bias", "crow", "col", "val"),
        optional=("out_bias", "val"),  # who rated what: the values are not read
    ),
    OpSpec(
        "row_adam_step",
        lambda a, p: row_adam_step(
            a["p"], a["exp_avg"], a["exp_avg_sq"], a["grad"], *ADAM, **_no_backend(p)
        ),
        ("p", "exp_avg", "exp_avg_sq", "grad"),
        paths=("fused/native", "reference"),
    ),
]

# What a message may call an argument (its name first).
NAMES = {
    "out_bias": ("bias",),
    "val": ("val", "values"),
    "grad": ("grad",),
    "p": ("param",),
    "perm": ("perm",),
    "ucol": ("ucol",),
    "uptr": ("uptr",),
    "rows": ("rows",),
}


# ------------------------------------------------------------------ the wrong arguments
def _short(t: torch.Tensor) -> torch.Tensor:
    """One entry short along the last dimension (a sparse tensor: one row fewer)."""
    if t.is_sparse:
        return torch.sparse_coo_tensor(t._indices(), t._values(), (t.shape[0] - 1, *t.shape[1:]),
                                       check_invariants=False)  # fmt: skip
    return t[..., :-1].contiguous()


def _dtype(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.int64) if t.is_floating_point() else t.to(D)


WRONG: dict[str, Callable[[torch.Tensor], object]] = {
    "None": lambda t: None,
    "dtype": _dtype,
    "device": lambda t: t.to("meta"),
    "shape": _short,
}


@dataclass(frozen=True)
class Case:
    op: OpSpec
    path: str
    arg: str
    wrong: str

    @property
    def name(self) -> str:
        return f"{self.op.name} [{self.path}] {self.arg}={self.wrong}"


def cases() -> list[Case]:
    return [
        Case(op, path, arg, wrong)
        for op in OPS
        for path in op.paths
        for arg in op.args
        for wrong in WRONG
    ]


def arguments(case: Case) -> dict[str, object]:
    a = base()
    if case.arg in ColumnIndex._fields:
        a.update(a.pop("index")._asdict())
    a[case.arg] = WRONG[case.wrong](a[case.arg])
    return a


def run(case: Case) -> dict[str, str]:
    """The case's outcome: ("ok", "") or ("raised", "<type>: <message>")."""
    try:
        case.op.call(arguments(case), PATHS[case.path])
    except Exception as exc:  # judged by the runner: which kind, and what it says
        return {"outcome": "raised", "type": type(exc).__name__, "message": str(exc)}
    return {"outcome": "ok"}


def plant(name: str) -> None:
    """A planted defect: the validator of the sparse output op no longer checks its bias,
    as before the sweep was written (a None bias then segfaulted the native kernel)."""
    if name == "unchecked-bias":
        from deeprec.ops import sparse_layers

        op = sparse_layers.SPARSE_OUTPUT_MSE
        real = op.check
        op.check = lambda h, weight, bias, *rest: real(h, weight, None, *rest)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--from", dest="start", type=int, default=0)
    parser.add_argument("--plant", default="")
    args = parser.parse_args(argv)
    if args.plant:
        plant(args.plant)
    all_cases = cases()
    for k in range(args.start, len(all_cases)):
        case = all_cases[k]
        print(f"CASE {k} {case.name}", flush=True)
        print(f"DONE {k} {json.dumps(run(case))}", flush=True)


def iter_cases() -> Iterator[tuple[int, Case]]:
    yield from enumerate(cases())


if __name__ == "__main__":
    main()
