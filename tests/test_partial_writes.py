"""What a killed process leaves of an atomic write (a hidden .tmp beside the file) is found
and removed by the next run in that folder, which says so; a live writer's is left alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from deeprec import checkpoint


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_atomic_writes_name_their_writer_and_leave_nothing(tmp_path):
    checkpoint.atomic_write(tmp_path / "model.pt", lambda f: f.write(b"x"))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    host, pid = checkpoint._writer_of(f".model.pt.{checkpoint._host()}~{os.getpid()}.ab12.tmp")
    assert (host, pid) == (checkpoint._host(), os.getpid())


def test_only_what_a_stopped_writer_left_is_removed(tmp_path):
    here = checkpoint._host()
    dead = tmp_path / f".model.pt.{here}~{dead_pid()}.k3j2.tmp"
    mine = tmp_path / f".model.pt.{here}~{os.getpid()}.a1b2.tmp"
    other_host_fresh = tmp_path / ".model.pt.elsewhere~12345.zz99.tmp"
    old_style_stale = tmp_path / ".model.pt.q8w7e6.tmp"
    old_style_fresh = tmp_path / ".metrics.json.r5t4y3.tmp"
    for f in (dead, mine, other_host_fresh, old_style_stale, old_style_fresh):
        f.write_bytes(b"\0" * 1024)
    hour_ago = time.time() - 2 * 3600
    os.utime(old_style_stale, (hour_ago, hour_ago))
    removed = checkpoint.remove_partial_writes(tmp_path)
    assert sorted(name for name, _ in removed) == sorted([dead.name, old_style_stale.name])
    assert all(size == 1024 for _, size in removed)
    assert mine.exists() and other_host_fresh.exists() and old_style_fresh.exists()
    assert not dead.exists() and not old_style_stale.exists()


def test_the_next_run_in_the_folder_removes_them_and_says_so(tmp_path):
    run = tmp_path / "run"
    train = [sys.executable, "-m", "deeprec.train", "--hidden", "8", "--max-batches", "1",
             "--quiet", "--fused"]  # fmt: skip
    first = subprocess.run([*train, "--epochs", "1", "--out", str(run)], capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert first.returncode == 0, first.stderr
    left = run / f".model.pt.{checkpoint._host()}~{dead_pid()}.x7y8.tmp"
    left.write_bytes(b"\0" * (3 << 20))
    again = subprocess.run([*train[:3], "--resume", str(run), "--epochs", "2", "--quiet"],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert f"removed what a stopped run left half-written in {run}: {left.name} (3 MiB)" in (
        again.stdout
    ), again.stdout
    assert not left.exists()
