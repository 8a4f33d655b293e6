"""torchrun: K processes make the update one process makes.

Each case trains the same recipe once in one process and once under
``torchrun --nproc_per_node=2`` (gloo on CPU) and compares metrics.json epoch by epoch.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import write_movielens_csv

RECIPE = ["--hidden", "16,8", "--batch-size", "16", "--split", "user-time", "--quiet",
          "--device", "cpu", "--epochs", "3"]  # fmt: skip


def _train(out: Path, data: Path, procs: int, *flags: str) -> dict:
    cmd = [sys.executable, "-m", "deeprec.train", "--data", str(data), "--out", str(out)]
    if procs > 1:
        cmd[1:3] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                    "-m", "deeprec.train"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DEEPREC_DIST_TIMEOUT": "120"}
    done = subprocess.run(
        [*cmd, *RECIPE, *flags], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_movielens_csv(tmp_path_factory.mktemp("ddp") / "toy")


@pytest.mark.parametrize(
    "flags",
    [(), ("--fused",), ("--fused", "--optimizer", "sparse-adam")],
    ids=["reference", "fused", "fused-lazy-adam"],
)
def test_two_processes_train_like_one(toy, tmp_path, flags):
    one = _train(tmp_path / "one", toy, 1, *flags)
    two = _train(tmp_path / "two", toy, 2, *flags)
    assert one["world_size"] == 1 and two["world_size"] == 2
    for a, b in zip(one["epochs"], two["epochs"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5), a["epoch"]
        assert b["val_rmse"] == pytest.approx(a["val_rmse"], abs=1e-5), a["epoch"]
    assert two["final"]["val_rmse"] == pytest.approx(one["final"]["val_rmse"], abs=1e-5)
    assert two["memory"]["peak_rss_mib"] > 0


def test_resume_under_torchrun_continues_the_run(toy, tmp_path):
    full = _train(tmp_path / "full", toy, 2, "--fused")
    _train(tmp_path / "part", toy, 2, "--fused", "--epochs", "2")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "deeprec.train", "--resume", str(tmp_path / "part"), "--epochs", "3",
           "--quiet", "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = json.loads((tmp_path / "part" / "metrics.json").read_text())
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2, 3]
    for a, b in zip(full["epochs"], resumed["epochs"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(path: Path, proc: subprocess.Popen, limit_s: float = 120.0) -> None:
    import time

    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() - t0 < limit_s, "the job never finished its first epoch"
        time.sleep(0.2)


def rank_env(rank: int, port: int, timeout_s: int) -> dict[str, str]:
    """The environment torchrun gives rank ``rank`` of a 2-process job on this machine."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "DEEPREC_DIST_TIMEOUT": str(timeout_s),
            "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip


def test_a_rank_that_dies_ends_the_job_with_a_clear_error(toy, tmp_path):
    """Two ranks started as torchrun starts them on two nodes (no agent to stop the other):
    rank 1 is killed after the first epoch; rank 0 must fail with one line, not hang."""
    import signal

    port = _free_port()
    procs = []
    for rank in (0, 1):
        env = rank_env(rank, port, timeout_s=30)
        cmd = [sys.executable, "-m", "deeprec.train", "--data", str(toy), "--out",
               str(tmp_path / "run"), *RECIPE[:-1], "10000"]  # fmt: skip
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    try:
        _wait_for(tmp_path / "run" / "metrics.json", procs[0])
        procs[1].send_signal(signal.SIGKILL)
        _, err = procs[0].communicate(timeout=180)  # a hang fails here
    finally:
        for p in procs:
            p.kill()
    assert procs[0].returncode == 1, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("python -m deeprec.train: error: rank 0: another process"), err[-2000:]
    assert "Traceback" not in err


def test_torchrun_reports_a_dead_rank_and_stops_the_others(toy, tmp_path):
    import signal

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "deeprec.train", "--data", str(toy), "--out", str(tmp_path / "run"),
           *RECIPE[:-1], "10000"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DEEPREC_DIST_TIMEOUT": "30"}
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        _wait_for(tmp_path / "run" / "metrics.json", job)
        children = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True)
        workers = [int(p) for p in children.stdout.split()]
        victim = next(
            p for p in workers if b"LOCAL_RANK=1\0" in Path(f"/proc/{p}/environ").read_bytes()
        )
        os.kill(victim, signal.SIGKILL)
        _, err = job.communicate(timeout=180)  # a hang fails here
    finally:
        for pid in [job.pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert job.returncode != 0
    assert "ChildFailedError" in err and "local_rank: 1" in err, err[-3000:]
    assert all(not Path(f"/proc/{p}").exists() for p in workers)  # rank 0 was stopped too


def _reduce_both(rank: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from deeprec.distributed import World, reduce_rows

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    g = torch.Generator().manual_seed(rank)
    n, h = 50, 3
    results = {}
    for k in (0, 4, 30, 50):  # an empty share, sparse, dense-ish, every row
        idx = torch.randperm(n, generator=g)[:k].sort().values
        p = torch.nn.Parameter(torch.zeros(n, h, dtype=torch.float64))
        p.grad = torch.sparse_coo_tensor(idx[None], torch.randn(k, h, generator=g,
                                         dtype=torch.float64), (n, h))  # fmt: skip
        for method in ("gather", "dense", "auto"):
            r = reduce_rows(p, 0.5, World(rank, 2), method)
            results[f"{k}-{method}"] = (r.indices()[0].tolist(), r.values().tolist())
        results[f"{k}-mine"] = (idx.tolist(), (p.grad.to_dense()[idx] * 0.5).tolist())
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    dist.barrier()


def test_row_sparse_reduction_methods_agree(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_reduce_both, (_free_port(), str(tmp_path)), nprocs=2,
                       start_method="spawn")  # fmt: skip
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for k in (0, 4, 30, 50):
        rows0, vals0 = r0[f"{k}-mine"]
        rows1, vals1 = r1[f"{k}-mine"]
        want: dict[int, list[float]] = {}
        for rows, vals in ((rows0, vals0), (rows1, vals1)):
            for i, v in zip(rows, vals, strict=True):
                want[i] = [a + b for a, b in zip(want.get(i, [0.0] * 3), v, strict=True)]
        for method in ("gather", "dense", "auto"):
            for r in (r0, r1):  # every rank ends with the same sum
                rows, vals = r[f"{k}-{method}"]
                assert rows == sorted(want), (k, method)
                for i, v in zip(rows, vals, strict=True):
                    assert v == pytest.approx(want[i], abs=1e-12), (k, method, i)


@pytest.mark.parametrize("other", ["same shape, other ratings", "other shape", "other flags"])
def test_ranks_that_see_different_data_or_flags_stop_before_writing(toy, tmp_path, other):
    """Two ranks started by hand (as torchrun starts them on two nodes), rank 1 with other
    data or flags: both stop with one line naming each rank's fingerprints; nothing is
    written and no rank aborts."""
    frame = (toy / "ratings.csv").read_text().splitlines()
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / "movies.csv").write_bytes((toy / "movies.csv").read_bytes())
    if other == "same shape, other ratings":  # the same pairs, one rating changed
        user, item, rating, stamp = frame[1].split(",")
        frame[1] = ",".join([user, item, "4" if rating != "4" else "2", stamp])
    elif other == "other shape":
        frame = frame[: len(frame) // 2]
    (twin / "ratings.csv").write_text("\n".join(frame) + "\n")
    port = _free_port()
    procs = []
    for rank in (0, 1):
        env = rank_env(rank, port, timeout_s=60)
        data = toy if rank == 0 or other == "other flags" else twin
        extra = ["--lr", "0.01"] if rank == 1 and other == "other flags" else []
        cmd = [sys.executable, "-m", "deeprec.train", "--data", str(data), "--out",
               str(tmp_path / "run"), *RECIPE, *extra]  # fmt: skip
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))  # fmt: skip
    try:
        errs = [p.communicate(timeout=180)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, err in zip(procs, errs, strict=True):
        assert p.returncode == 2, err[-2000:]
        last = err.strip().splitlines()[-1]
        assert "see different data or settings" in last and "rank 0:" in last, err[-2000:]
        assert "rank 1:" in last and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("procs", [1, 2])
def test_recvae_steps_each_half_only_in_its_own_passes(toy, tmp_path, procs):
    """RecVAE's resting half takes no gradient, on one rank or two: Adam counts for the
    encoder's parameters the encoder passes' updates and for the decoder's the decoder
    pass's (a rank that reduced zeros for them would step them every pass)."""
    import math

    import torch

    passes = 2
    flags = ("--objective", "multinomial", "--recvae", "--recvae-depth", "2",
             "--encoder-passes", str(passes), "--epochs", "1")  # fmt: skip
    doc = _train(tmp_path / "rv", toy, procs, *flags)
    steps = math.ceil(doc["n_users"] / 16)  # RECIPE's batch
    state = torch.load(tmp_path / "rv" / "model.pt", weights_only=True)
    counts = [int(s["step"]) for s in state["optimizer"]["state"].values()]
    names = [n for n in state["state_dict"] if not n.startswith("prior.")]
    assert len(counts) == len(names)
    for name, count in zip(names, counts, strict=True):
        want = passes * steps if name.startswith("encoder.") else steps
        assert count == want, (name, count, want)
