"""What keeps ranking models usable at a catalogue's size: metrics computed a slice of users
at a time (the same numbers as all at once), one vectorised top-k with the ranking's exact
order, EASE refused in one line before its items x items solve is allocated, and the
first epoch's time estimate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
from datasets import write_movielens_csv
from hypothesis import given, settings
from hypothesis import strategies as st

from deeprec.blend import cli_main as blend_main
from deeprec.evaluate import cli_main as evaluate_main
from deeprec.quality import topk_blend
from deeprec.scoring import ease, metrics
from deeprec.top_items import top_k
from deeprec.train import cli_main as train_main
from deeprec.training import TrainingPlan, loop


def ranked_by_sorting(row: np.ndarray, excluded: set[int], k: int) -> list[int]:
    """The definition: every candidate (not excluded, score above -inf: not NaN either)
    sorted by (score descending, item ascending)."""
    candidates = [j for j in range(len(row)) if j not in excluded and row[j] > -np.inf]
    return sorted(candidates, key=lambda j: (-row[j], j))[:k]


@settings(max_examples=80, deadline=None)
@given(
    rows=st.integers(1, 6),
    items=st.integers(1, 30),
    k=st.integers(1, 35),
    levels=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_top_rows_equals_sorting_with_ties_exclusions_and_non_finite(rows, items, k, levels, seed):
    """Few distinct score levels make ties at the k-th place common: the top-k must break
    them to the lower item, never show an excluded item, a NaN or a -inf, and show +inf."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, (rows, items)).astype(np.float64)
    odd = rng.random(scores.shape)
    scores[odd < 0.05] = np.nan
    scores[(odd >= 0.05) & (odd < 0.08)] = -np.inf
    scores[(odd >= 0.08) & (odd < 0.1)] = np.inf
    exclude = sp.csr_matrix(rng.random((rows, items)) < 0.3)
    got = metrics.top_rows(scores, exclude, k)
    assert len(got) == rows
    for r in range(rows):
        want = ranked_by_sorting(scores[r], set(exclude[r].indices.tolist()), k)
        assert got[r].tolist() == want
        assert top_k(scores[r], exclude[r].indices, k).tolist() == want


def test_top_rows_never_chooses_a_nan_score_and_stops_at_the_candidates():
    scores = np.array([[np.nan, 1.0, 2.0, np.nan, 0.0], [3.0, 3.0, 3.0, 3.0, 3.0]])
    exclude = sp.csr_matrix(np.array([[0, 0, 0, 0, 1], [1, 0, 0, 0, 0]], dtype=bool))
    got = metrics.top_rows(scores, exclude, 4)
    np.testing.assert_array_equal(got[0], [2, 1])  # item 4 excluded, NaNs never chosen
    np.testing.assert_array_equal(got[1], [1, 2, 3, 4])  # all tied: lowest items, 0 excluded


def _toy(tmp_path):
    from deeprec.data import RatingMatrix, load, split

    ds = load(str(write_movielens_csv(tmp_path / "toy")))
    train, val = split(ds.ratings, "user-time")
    return RatingMatrix.from_split(train, val, "user", ds.scale)


def test_metrics_in_slices_of_users_equal_the_metrics_of_the_whole_array(tmp_path, monkeypatch):
    m = _toy(tmp_path)
    users = np.unique(m.user_view()[0])
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(len(users), m.n_items)).round(1)  # rounded: ties
    whole = metrics.ranking_metrics(scores, users, m, reps=50)
    asked: list[int] = []

    def by_slice(part):
        asked.append(len(part))
        return scores[np.searchsorted(users, part)]

    monkeypatch.setattr(metrics, "rows_per_chunk", lambda n_items: 7)
    sliced = metrics.ranking_metrics(by_slice, users, m, reps=50)
    assert sliced == whole
    v_user, _, v_rating = m.user_view()
    relevant = np.unique(v_user[v_rating >= metrics.RELEVANT_AT])
    assert max(asked) <= 7 and sum(asked) == len(relevant) and len(asked) > 1


def test_rows_per_chunk_keeps_a_slice_of_scores_near_its_budget():
    assert metrics.rows_per_chunk(87_585) * 8 * 87_585 <= 2**28
    assert metrics.rows_per_chunk(87_585, 2**20) == 1  # at least one user
    assert metrics.rows_per_chunk(10, 800) == 10


def test_ease_refuses_a_catalogue_whose_solve_does_not_fit_in_one_line(monkeypatch):
    need = ease.bytes_needed(87_585)
    assert need == ease.SOLVE_MATRICES * 8 * 87_585**2
    with pytest.raises(ease.TooLarge) as got:
        ease.check_fits(87_585, available=24 * 2**30)
    text = str(got.value)
    assert "\n" not in text
    assert "87,585 items" in text and f"{need / 1e9:,.1f} GB" in text and "25.8 GB" in text
    assert "Mult-DAE" in text and "topk" in text
    ease.check_fits(100, available=ease.bytes_needed(100))  # exactly enough: no error
    # fit refuses before it allocates anything: the Gram product is never formed
    monkeypatch.setattr(ease, "available_bytes", lambda: ease.bytes_needed(5) - 1)
    monkeypatch.setattr(ease, "ones", lambda *a, **k: pytest.fail("EASE allocated"))
    with pytest.raises(ease.TooLarge):
        ease.fit(sp.csr_matrix(np.eye(5)), 1.0)


def test_evaluate_leaves_ease_out_with_the_reason_and_blend_refuses_before_training(
    tmp_path, capsys, monkeypatch
):
    data = write_movielens_csv(tmp_path / "toy")
    out = tmp_path / "run"
    assert train_main(["--data", str(data), "--out", str(out), "--hidden", "8", "--epochs", "1",
                       "--split", "user-time", "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    monkeypatch.setattr(ease, "available_bytes", lambda: 1000)
    report = tmp_path / "eval.json"
    assert evaluate_main(["--checkpoint", str(out), "--out", str(report)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(report.read_text())["models"]
    assert set(doc["EASE"]) == {"left_out"}
    assert np.isfinite(doc["popularity"]["ndcg@10"]) and np.isfinite(doc["deeprec"]["ndcg@10"])
    assert f"EASE left out: {doc['EASE']['left_out']}" in printed
    # the blend is built on EASE: refused before either member trains
    monkeypatch.setattr(topk_blend, "member_scores", lambda *a, **k: pytest.fail("trained"))
    assert blend_main(["--topk", "--data", str(data), "--split", "user-time"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "EASE on" in err and "GB" in err
    assert blend_main(["--topk", "--protocol", "strong", "--data", str(data)]) == 2
    assert "EASE on" in capsys.readouterr().err


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("steps", "seconds", "says"),
    [
        (1000, 1.0, "about 16.7 min per epoch (1,000 steps at 1.00 s, timed over 5)"),
        (20_000, 0.5, "about 2.8 h per epoch (20,000 steps at 0.50 s, timed over 10)"),
        (50, 1.0, None),  # under a minute: nothing said
    ],
)
def test_the_first_epoch_says_how_long_an_epoch_takes(monkeypatch, steps, seconds, says):
    clock = _Clock()
    monkeypatch.setattr(loop, "time", clock)
    said: list[str] = []
    seen = 0
    for _batch in loop.with_estimate(range(steps), steps, said.append, "Mult-DAE "):
        seen += 1
        clock.now += seconds if seen > 1 else 30.0  # the first step allocates: not counted
    assert seen == steps
    assert said == ([] if says is None else ["Mult-DAE " + says])


def test_per_epoch_ranking_validation_scores_a_fixed_sample_of_at_most_its_cap(
    tmp_path, monkeypatch
):
    import torch

    from deeprec.config import Config
    from deeprec.model import AutoEncoder

    m = _toy(tmp_path)
    model = AutoEncoder.from_config(Config(objective="multinomial", hidden=[4]), m.n_items)
    path = TrainingPlan("sparse", objective="multinomial")
    asked: list[np.ndarray] = []
    real = loop.score_items
    monkeypatch.setattr(loop, "score_items", lambda *a, **k: asked.append(a[2]) or real(*a, **k))
    v_user, _, v_rating = m.user_view()
    relevant = np.unique(v_user[v_rating >= metrics.RELEVANT_AT])  # the users ranked
    whole = loop.validate_ranking(model, m, torch.device("cpu"), path)
    assert np.array_equal(np.concatenate(asked), relevant)  # under the cap: every one
    monkeypatch.setattr(loop, "VALIDATION_USERS", 7)
    asked.clear()
    first = loop.validate_ranking(model, m, torch.device("cpu"), path)
    picked = np.concatenate(asked)
    assert 0 < len(picked) <= 7 and set(picked) <= set(relevant)
    assert np.all(np.diff(picked) > 0)
    asked.clear()
    assert loop.validate_ranking(model, m, torch.device("cpu"), path) == first  # the same sample
    assert np.array_equal(np.concatenate(asked), picked)
    assert np.isfinite(whole["val_ndcg@10"])
