"""deeprec.scoring.neighbors (kNN on baseline residuals) against a per-pair loop written from the
definition, on random sparse matrices; score_users against predict; bad arguments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from deeprec.scoring import baseline, neighbors


def random_ratings(users: int, items: int, density: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    mask = rng.random((users, items)) < density
    rows, cols = np.nonzero(mask)
    vals = rng.integers(1, 11, len(rows)) / 2.0  # 0.5 .. 5.0
    return sp.csr_matrix((vals, (rows, cols)), shape=(users, items))


def loop_reference(train: sp.csr_matrix, kind: str, u: int, i: int, k: int, shrink: float):
    """KNNBaseline at (u, i), one pair at a time from the definition."""
    b = baseline.fit(train, "user")
    dense = train.toarray()
    stored = np.zeros(train.shape, dtype=bool)
    coo = train.tocoo()
    stored[coo.row, coo.col] = True
    resid = np.where(stored, dense - (b.mu + b.rows[:, None] + b.cols[None, :]), 0.0)
    if kind == "user":  # neighbours are users: work on the transpose
        resid, stored, (u, i) = resid.T, stored.T, (i, u)

    def sim(a: int, c: int) -> float:
        both = stored[:, a] & stored[:, c]
        n = int(both.sum())
        x, y = resid[both, a], resid[both, c]
        den = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
        if n < 2 or den == 0:
            return 0.0
        return float((x * y).sum()) / den * (n - 1) / (n - 1 + shrink)

    cands = [(sim(i, j), resid[u, j]) for j in np.nonzero(stored[u])[0]]
    cands = sorted((c for c in cands if c[0] > 0), key=lambda c: -c[0])[:k]
    base = b.mu + b.rows[u if kind == "item" else i] + b.cols[i if kind == "item" else u]
    if not cands:
        return base
    return base + sum(s * r for s, r in cands) / sum(s for s, _ in cands)


@settings(max_examples=25, deadline=None)
@given(
    users=st.integers(1, 12),
    items=st.integers(1, 12),
    density=st.floats(0.1, 0.9),
    seed=st.integers(0, 10_000),
    kind=st.sampled_from(neighbors.KINDS),
    k=st.integers(1, 6),
    shrink=st.sampled_from([0.0, 1.0, 100.0]),
)
def test_predict_matches_the_definition(users, items, density, seed, kind, k, shrink):
    train = random_ratings(users, items, density, seed)
    model = neighbors.fit(train, kind, k=k, shrinkage=shrink)
    rng = np.random.default_rng(seed + 1)
    u = rng.integers(0, users, 20)
    i = rng.integers(0, items, 20)
    got = model.predict(u, i)
    want = [loop_reference(train, kind, a, c, k, shrink) for a, c in zip(u, i, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", neighbors.KINDS)
def test_score_users_equals_predict_and_small_blocks_change_nothing(kind, monkeypatch):
    train = random_ratings(40, 30, 0.3, seed=4)
    model = neighbors.fit(train, kind, k=5)
    users = np.array([0, 7, 39, 7])
    scores = model.score_users(users)
    full = model.predict(np.repeat(users, 30), np.tile(np.arange(30), len(users)))
    np.testing.assert_allclose(scores, full.reshape(len(users), 30), rtol=1e-10, atol=1e-12)
    monkeypatch.setattr(neighbors, "BLOCK_BYTES", 1)  # one target per block
    monkeypatch.setattr(neighbors, "GATHER", 7)  # a few pairs per gather
    np.testing.assert_allclose(
        model.predict(np.repeat(users, 30), np.tile(np.arange(30), len(users))), full, rtol=1e-12
    )


def test_user_without_ratings_gets_the_baseline():
    train = random_ratings(6, 8, 0.5, seed=1).tolil()
    train[2, :] = 0
    train = train.tocsr()
    train.eliminate_zeros()
    for kind in neighbors.KINDS:
        model = neighbors.fit(train, kind)
        np.testing.assert_allclose(
            model.predict(np.full(8, 2), np.arange(8)),
            model.biases.at(np.full(8, 2), np.arange(8)),
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="items"), "kind must be one of"),
        (dict(kind="item", k=0), "k >= 1"),
        (dict(kind="user", shrinkage=-1.0), "shrinkage >= 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        neighbors.fit(random_ratings(3, 3, 0.5, seed=0), **kwargs)


@pytest.mark.parametrize("kind", neighbors.KINDS)
def test_explicit_zero_ratings_are_ratings(kind):
    """A stored 0.0 (scales that start at 0) is a rating: it counts as a co-rating and a
    neighbour, like any other value."""
    rng = np.random.default_rng(3)
    mask = rng.random((9, 7)) < 0.6
    rows, cols = np.nonzero(mask)
    vals = rng.integers(0, 3, len(rows)).astype(float)  # many exact zeros
    train = sp.csr_matrix((vals, (rows, cols)), shape=(9, 7))
    assert (train.data == 0).any()
    model = neighbors.fit(train, kind, k=3, shrinkage=1.0)
    u, i = np.repeat(np.arange(9), 7), np.tile(np.arange(7), 9)
    want = [loop_reference(train, kind, a, c, 3, 1.0) for a, c in zip(u, i, strict=True)]
    np.testing.assert_allclose(model.predict(u, i), want, rtol=1e-10, atol=1e-10)
