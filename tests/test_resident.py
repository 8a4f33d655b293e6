"""Device-resident training data: the same batches, index and training as host-built batches.

The CPU runs the device code path here; on a GPU machine the cuda-marked test runs it on
CUDA (DEEPREC_REQUIRE_CUDA=1 makes a skip a failure).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import reference_column_index
from datasets import synthetic_ratings, write_movielens_csv
from hypothesis import given, settings
from hypothesis import strategies as st

from deeprec.data import RatingMatrix
from deeprec.data.resident import ResidentMatrix
from deeprec.train import cli_main as train_main


def matrix(seed: int, n_users: int = 37, n_items: int = 50) -> RatingMatrix:
    rows = synthetic_ratings(n_users=n_users, n_items=n_items, per_user=9, seed=seed)
    df = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    return RatingMatrix.from_split(df, df.iloc[:0], "user", (0.5, 5.0))


def assert_same_batches(host_batches, device_batches) -> None:
    host_batches, device_batches = list(host_batches), list(device_batches)
    assert len(host_batches) == len(device_batches) > 0
    for h, d in zip(host_batches, device_batches, strict=True):
        assert d.n_unique == h.n_unique
        for a, b in ((h.rows, d.rows), (h.crow, d.crow), (h.col, d.col), (h.val, d.val)):
            torch.testing.assert_close(b.cpu(), a.cpu(), rtol=0, atol=0)
        want = reference_column_index(h.crow, h.col)
        for a, b in zip(want, d.index, strict=True):
            assert b.dtype == torch.int64 and b.is_contiguous()
            torch.testing.assert_close(b.cpu(), a.cpu(), rtol=0, atol=0)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 10_000),
    st.integers(1, 40),
    st.integers(0, 4),
    st.sampled_from([(0, 1), (0, 2), (1, 2), (2, 3)]),
)
def test_resident_batches_equal_host_batches(seed, batch_size, max_batches, part):
    m = matrix(seed)
    resident = ResidentMatrix(m, "cpu")
    kwargs = dict(max_batches=max_batches, part=part)
    assert_same_batches(
        m.batches(batch_size, "cpu", generator=torch.Generator().manual_seed(seed), **kwargs),
        resident.batches(batch_size, generator=torch.Generator().manual_seed(seed), **kwargs),
    )


def test_a_batch_of_rows_without_ratings_and_the_device_check():
    m = matrix(0)
    resident = ResidentMatrix(m, "cpu")
    empty_rows = np.flatnonzero(np.diff(m.train.indptr) == 0)
    rows = torch.tensor([*empty_rows[:1].tolist(), 3, 3 if empty_rows.size else 4])
    b = resident.batch(rows, *m.batch_sizes(rows.numpy()))
    h = m.batch(rows.numpy())
    torch.testing.assert_close(b.crow, h.crow, rtol=0, atol=0)
    with pytest.raises(ValueError, match="resident on cpu"):
        next(resident.batches(4, "meta"))


@pytest.mark.parametrize("fused", [False, True])
def test_training_from_resident_data_equals_host_batches(tmp_path, fused):
    data = write_movielens_csv(tmp_path / "toy")
    runs = {}
    for where in ("yes", "no"):
        out = tmp_path / f"run-{where}"
        args = ["--data", str(data), "--out", str(out), "--hidden", "16,8", "--quiet"]
        args += ["--batch-size", "8", "--epochs", "2", "--data-on-device", where]
        assert train_main(args + (["--fused"] if fused else [])) == 0
        runs[where] = json.loads((out / "metrics.json").read_text())
    for a, b in zip(runs["yes"]["epochs"], runs["no"]["epochs"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
    assert runs["yes"]["config"]["data_on_device"] == "yes"


@pytest.mark.cuda
def test_resident_batches_on_cuda_equal_host_batches():
    m = matrix(3, n_users=300, n_items=80)
    resident = ResidentMatrix(m, "cuda")
    assert resident.indices.is_cuda
    assert_same_batches(
        m.batches(64, "cuda", generator=torch.Generator().manual_seed(1)),
        resident.batches(64, "cuda", generator=torch.Generator().manual_seed(1)),
    )
