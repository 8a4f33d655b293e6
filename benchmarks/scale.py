"""The scale measurements of report.py's full run: whole commands in fresh processes.

- a synth-netflix epoch (``--fused``, batch 512): seconds, validation RMSE against the
  global mean's, peak RSS;
- synth-ml32m, batch 512, ``--max-batches 8``: reference, ``--fused`` and sparse-adam epochs;
- load times of the synthetic Netflix twin and of generated files (load_speed.py);
- ml-latest-small ``--fused`` in 1 process and under ``torchrun --nproc_per_node=2``.

Each is one run, not a median: they take minutes. Numbers from synth-* sets are synthetic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED_DATA = HERE.parents[1] / "shared" / "data"


def _train(out: Path, *flags: str, procs: int = 1, device: str = "cpu") -> dict:
    """metrics.json of one training command (the whole process), plus its wall time."""
    cmd = [sys.executable, "-m", "deeprec.train", "--quiet", "--device", device]
    if procs > 1:
        cmd[1:3] = ["-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={procs}", "-m", "deeprec.train"]  # fmt: skip
    env = dict(os.environ)
    if SHARED_DATA.exists():
        env.setdefault("DEEPREC_DATA", str(SHARED_DATA))
    t = time.perf_counter()
    done = subprocess.run([*cmd, "--out", str(out), *flags], capture_output=True, text=True,
                          env=env)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1])
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["wall_s"] = time.perf_counter() - t
    return metrics


def _global_mean_rmse(data: str) -> float:
    import numpy as np

    from deeprec.data import RatingMatrix, load, split

    ds = load(data)
    train, val = split(ds.ratings)
    m = RatingMatrix.from_split(train, val, "user", ds.scale)
    err = m.val_ratings.astype(np.float64) - float(m.train.data.mean(dtype=np.float64))
    return float(np.sqrt(np.mean(err**2)))


def run(device: str = "cpu") -> dict:
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        from deeprec.data import load

        load("synth-netflix")  # generated once per machine, then cached
        out["synth_netflix_first_load_s"] = time.perf_counter() - t
        code = "import time; t=time.perf_counter(); from deeprec.data import load; "
        code += "load('synth-netflix'); print(time.perf_counter()-t)"
        cached = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        out["synth_netflix_cached_load_s"] = float(cached.stdout.split()[-1])
        m = _train(root / "netflix", "--data", "synth-netflix", "--fused", "--batch-size", "512",
                   "--epochs", "1", device=device)  # fmt: skip
        out["synth_netflix_epoch"] = {
            "epoch_s": m["epochs"][0]["seconds"],
            "whole_command_s": m["wall_s"],
            "val_rmse": m["final"]["val_rmse"],
            "global_mean_val_rmse": _global_mean_rmse("synth-netflix"),
            "peak_rss_gib": m["memory"]["peak_rss_mib"] / 1024,
            "peak_cuda_gib": m["memory"].get("peak_cuda_mib", 0) / 1024,
        }
        ml32 = {}
        for name, flags in (("reference", ()), ("--fused", ("--fused",)),
                            ("--fused --optimizer sparse-adam",
                             ("--fused", "--optimizer", "sparse-adam"))):  # fmt: skip
            m = _train(root / f"ml32-{len(ml32)}", "--data", "synth-ml32m", "--batch-size",
                       "512", "--max-batches", "8", "--epochs", "2", *flags,
                       device=device)  # fmt: skip
            ml32[name] = [e["seconds"] for e in m["epochs"]]
        out["synth_ml32m_8_batches_epoch_s"] = ml32
        ddp = {}
        for procs in (1, 2):
            m = _train(root / f"ddp{procs}", "--fused", "--epochs", "2", procs=procs,
                       device=device)  # fmt: skip
            ddp[procs] = {
                "epoch_s": [e["seconds"] for e in m["epochs"]],
                "final_val_rmse": m["final"]["val_rmse"],
            }
        out["ml_latest_small_fused_2_epochs_by_processes"] = ddp
    loads = subprocess.run(
        [sys.executable, str(HERE / "load_speed.py"), "--rows", "2000000"],
        capture_output=True, text=True,
    )  # fmt: skip
    out["load_speed_2M_rows"] = [
        json.loads(x) for x in loads.stdout.splitlines() if x.startswith("{")
    ]
    return out


def to_markdown(s: dict) -> str:
    n = s["synth_netflix_epoch"]
    ml = s["synth_ml32m_8_batches_epoch_s"]
    ref = ml["reference"][-1]
    lines = [
        "## Scale (one run each; synth-* numbers are from synthetic data)",
        "",
        f"- synth-netflix `--fused` batch 512, one epoch: **{n['epoch_s']:.1f} s** "
        f"(whole command {n['whole_command_s']:.0f} s), peak RSS {n['peak_rss_gib']:.2f} GiB; "
        f"validation RMSE {n['val_rmse']:.4f} vs global mean {n['global_mean_val_rmse']:.4f}.",
        f"- synth-netflix load: first {s['synth_netflix_first_load_s']:.1f} s (generation if "
        f"not cached), cached {s['synth_netflix_cached_load_s']:.2f} s.",
        "- synth-ml32m, batch 512, `--max-batches 8`, second epoch:",
    ]
    lines += [
        f"  - {name}: {times[-1]:.2f} s ({ref / times[-1]:.1f}x vs reference)"
        for name, times in ml.items()
    ]
    lines.append("- ml-latest-small `--fused`, 2 epochs:")
    for procs, d in s["ml_latest_small_fused_2_epochs_by_processes"].items():
        lines.append(
            f"  - {procs} process(es): epochs {', '.join(f'{t:.2f}' for t in d['epoch_s'])} s, "
            f"final val RMSE {d['final_val_rmse']:.4f}"
        )
    lines += ["", "| layout (2M generated rows) | parse s | M rows/s | cached load s |",
              "|---|---:|---:|---:|"]  # fmt: skip
    lines += [
        f"| {r['layout']} | {r['parse_s']} | {r['rows_per_s_millions']} | {r['cached_load_s']} |"
        for r in s["load_speed_2M_rows"]
    ]
    return "\n".join(lines) + "\n"
