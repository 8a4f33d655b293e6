"""Training in K processes with torch.distributed, launched by torchrun.

Every rank holds the whole training matrix and the same model (same seed), walks the same
seeded permutation of rows, and takes a contiguous share of each global batch. After the
backward pass one all-reduce gives the global count of observed ratings (and the summed
loss), each rank scales its gradients by its share of that count, and the gradients are
summed across ranks: so K processes make the update one process makes, up to summation
order. Dense gradients go through one flattened all-reduce; the sparse path's row-sparse
item gradients are all-gathered (rows and values) and summed, which keeps them sparse for
the row-sparse Adam. Validation entries are split across ranks and their sums all-reduced.

gloo on CPU, NCCL on CUDA; every collective runs under the process group's timeout, so a
rank that dies ends the job instead of hanging it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from deeprec.errors import ConfigError, PeerError

# Seconds a collective may wait for the other ranks before the job fails.
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class World:
    """This process's place in the job: rank and number of processes (1 when alone)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that prints and writes files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


ALONE = World()  # a process that is not part of a torchrun job


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> tuple[World, torch.device]:
    """Join the torchrun job this process belongs to, if any: (world, the device to use).

    On CUDA each process takes the GPU of its LOCAL_RANK. The timeout comes from
    DEEPREC_DIST_TIMEOUT (seconds, default 600).
    """
    if not launched_by_torchrun():
        return World(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    timeout = float(os.environ.get("DEEPREC_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    return World(dist.get_rank(), dist.get_world_size()), device


def shutdown(world: World, clean: bool = True) -> None:
    """Leave the job. clean: every rank finished, so first wait for the others (rank 0 may
    still be writing the last checkpoint). After an error the process leaves at once, and
    torchrun stops the other ranks.

    NCCL's group is destroyed; gloo's is left to process exit: destroying it raced with
    the peer's exit and aborted the process ("terminate called without an active
    exception") in about 1 of 10 two-process runs on CPU.
    """
    global _abandoned
    if not (world.active and dist.is_initialized()):
        return
    if not clean:
        _abandoned = True
    if clean:
        with collective():
            dist.barrier()
    if dist.get_backend() == "nccl":
        dist.destroy_process_group()
    else:  # gloo's threads outlive the group; the interpreter's teardown must not meet them
        _abandoned = True


@contextmanager
def collective() -> Iterator[None]:
    """Turn a failed collective (gloo raises RuntimeError, NCCL DistBackendError, a timeout
    DistError) into one PeerError line naming this rank and what to look at."""
    try:
        yield
    except (RuntimeError, dist.DistError) as exc:
        timeout = os.environ.get("DEEPREC_DIST_TIMEOUT", f"{DEFAULT_TIMEOUT_S:g}")
        rank = dist.get_rank() if dist.is_initialized() else "?"
        text = str(exc).strip()
        detail = text.splitlines()[0][:160] if text else type(exc).__name__
        raise PeerError(
            f"rank {rank}: another process of this torchrun job stopped, or did not answer "
            f"within DEEPREC_DIST_TIMEOUT={timeout} s ({detail}); its own error says why"
        ) from None


_abandoned = False  # a process group left running (gloo, or after a failure)


def exit_process(code: int) -> None:
    """End the command with ``code``. A gloo group (never destroyed, see shutdown) or one left
    after a failed collective still has threads running, and tearing them down at
    interpreter exit can abort the process ("terminate called without an active
    exception", SIGABRT), after the work or the one-line error; such a process flushes its
    output and leaves at once (its files are written atomically and closed, so nothing is
    lost)."""
    if _abandoned:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def agree(world: World, device: torch.device, **facts: str) -> None:
    """Make every rank check that all ranks hold the same ``facts`` (hex digests: the data's
    fingerprint, the resolved configuration's) before any training or writing. A rank that
    sees other data would otherwise train on a silent mix, or make gloo abort when the
    shapes differ. On a mismatch every rank raises the same one-line ConfigError naming
    each rank's values."""
    if not world.active:
        return
    line = "|".join(f"{k}={v}" for k, v in sorted(facts.items())).encode()
    mine = torch.zeros(1024, dtype=torch.uint8)
    mine[: len(line)] = torch.frombuffer(bytearray(line[:1024]), dtype=torch.uint8)
    mine = mine.to(_comm_device(device))
    every = [torch.empty_like(mine) for _ in range(world.size)]
    with collective():
        dist.all_gather(every, mine)
    seen = [bytes(t.cpu().tolist()).rstrip(b"\0").decode() for t in every]
    if len(set(seen)) > 1:
        described = "; ".join(
            f"rank {r}: " + ", ".join(f"{k} {v[:16]}" for k, v in _facts(s).items())
            for r, s in enumerate(seen)
        )
        raise ConfigError(
            f"the processes of this torchrun job see different data or settings ({described}); "
            "give every rank the same --data, --data-dir and flags"
        )


def _facts(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split("|") if "=" in part)


def all_sum(values: list[float], world: World, device: torch.device) -> list[float]:
    """Element-wise sums over ranks, in float64."""
    if not world.active:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device(device))
    with collective():
        dist.all_reduce(t)
    return t.tolist()


def reduce_gradients(
    dense: list[torch.nn.Parameter],
    sparse: list[torch.nn.Parameter],
    scale: float,
    world: World,
) -> None:
    """grad = sum over ranks of scale_r * grad_r, in place. ``sparse``: the parameters whose
    gradients are row-sparse on this run's path (the same on every rank). A parameter
    without a gradient on this rank (an empty share) contributes zeros."""
    if not world.active:
        return
    if dense:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in dense]
        flat = torch.cat([g.reshape(-1) for g in grads]).to(_comm_device(dense[0].device))
        flat.mul_(scale)
        with collective():
            dist.all_reduce(flat)
        flat = flat.to(dense[0].device)
        offset = 0
        for p in dense:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p)
            offset += n
    for p in sparse:
        p.grad = reduce_rows(p, scale, world)


# Row-sparse gradients are all-gathered while the ranks' rows together stay below this
# fraction of the matrix, else summed densely: the crossover benchmarks/ddp_sparse_grads.py
# measures (benchmarks/results/ddp_sparse_grads.md).
GATHER_BELOW = 0.8


def reduce_rows(
    p: torch.nn.Parameter, scale: float, world: World, method: str = "auto"
) -> torch.Tensor:
    """The sum over ranks of ``scale`` times p's row-sparse gradient, row-sparse.

    method: "gather" (all-gather each rank's rows and values: bytes grow with the rows
    touched), "dense" (all-reduce the dense matrix and a row mask: fixed bytes, 2x the
    matrix per rank in a ring), or "auto": gather while the ranks' rows together are
    fewer than GATHER_BELOW x the matrix's rows (one extra all-reduce of a count decides).
    """
    g = p.grad.coalesce() if p.grad is not None else None
    idx = g.indices()[0] if g is not None else torch.empty(0, dtype=torch.int64, device=p.device)
    vals = g.values() * scale if g is not None else p.new_zeros((0, *p.shape[1:]))
    if method == "auto":
        total = all_sum([float(idx.numel())], world, p.device)[0]
        method = "gather" if total < GATHER_BELOW * p.shape[0] else "dense"
    if method == "dense":
        return _dense_rows(p, idx, vals)
    return _gather_rows(p, idx, vals, world)


def _dense_rows(p: torch.nn.Parameter, idx: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    dev = _comm_device(p.device)
    dense = torch.zeros(p.shape, dtype=vals.dtype, device=dev)
    dense[idx.to(dev)] = vals.to(dev)
    mask = torch.zeros(p.shape[0], dtype=torch.int32, device=dev)
    mask[idx.to(dev)] = 1
    with collective():
        dist.all_reduce(dense)
        dist.all_reduce(mask)
    rows = mask.nonzero().squeeze(1)
    return torch.sparse_coo_tensor(
        rows.unsqueeze(0).to(p.device), dense[rows].to(p.device), p.shape, check_invariants=False
    ).coalesce()


def _gather_rows(
    p: torch.nn.Parameter, idx: torch.Tensor, vals: torch.Tensor, world: World
) -> torch.Tensor:
    """The sum over ranks of row-sparse (idx, vals), still row-sparse (rows: the union)."""
    dev = _comm_device(p.device)
    count = torch.tensor([idx.numel()], dtype=torch.int64, device=dev)
    counts = [torch.zeros_like(count) for _ in range(world.size)]
    with collective():
        dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    most = max(sizes)
    pad = most - idx.numel()
    idx_p = torch.cat([idx, idx.new_zeros(pad)]).to(dev)
    vals_p = torch.cat([vals, vals.new_zeros((pad, *vals.shape[1:]))]).to(dev)
    all_idx = [torch.empty_like(idx_p) for _ in range(world.size)]
    all_vals = [torch.empty_like(vals_p) for _ in range(world.size)]
    with collective():
        dist.all_gather(all_idx, idx_p)
        dist.all_gather(all_vals, vals_p)
    idx = torch.cat([a[:n] for a, n in zip(all_idx, sizes, strict=True)]).to(p.device)
    vals = torch.cat([a[:n] for a, n in zip(all_vals, sizes, strict=True)]).to(p.device)
    # Rows come from coalesced gradients of this shape on every rank; row_adam_step checks
    # them again before use.
    return torch.sparse_coo_tensor(
        idx.unsqueeze(0), vals, p.shape, check_invariants=False
    ).coalesce()


def _comm_device(device: torch.device) -> torch.device:
    """Where a collective's tensors live: the GPU for NCCL, the CPU for gloo."""
    backend = dist.get_backend() if dist.is_initialized() else "gloo"
    return device if backend == "nccl" else torch.device("cpu")
