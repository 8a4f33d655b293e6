"""RecVAE: its loss (multinomial NLL + the composite-prior KL weighted by gamma x the user's
item count) equals a direct float64 computation of the definition; the fused path equals
the dense one; the epoch alternates encoder and decoder passes and refreshes the prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import deeprec
from deeprec.config import Config, ConfigError
from deeprec.data import RatingMatrix
from deeprec.recvae import RecVAE, recvae_reference
from deeprec.training import Trainer, fit


def batch(n_rows: int, n_items: int, density: float, seed: int):
    """A CSR batch of who-rated-what (every row rates at least one item) and its dense form."""
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_rows, n_items)) < density).astype(np.float64)
    dense[np.arange(n_rows), rng.integers(0, n_items, n_rows)] = 1.0
    x = torch.from_numpy(dense)
    sparse = x.to_sparse_csr()
    return sparse.crow_indices(), sparse.col_indices(), x


PAPER = (0.15, 0.75, 0.1)


def model(n_items: int, seed: int, gamma: float = 0.005, depth: int = 3, prior=PAPER) -> RecVAE:
    torch.manual_seed(seed)
    m = RecVAE(n_items, width=7, code=5, depth=depth, input_dropout=0.5, gamma=gamma,
               prior_weights=prior).double()  # fmt: skip
    with torch.no_grad():  # a prior that differs from the encoder, as after an epoch
        for p in m.prior.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 9), items=st.integers(2, 40),
       density=st.floats(0.05, 0.6), gamma=st.sampled_from([0.0, 0.005, 0.5]),
       depth=st.integers(1, 5), impl=st.sampled_from(["reference", "fused"]),
       prior=st.sampled_from([PAPER, (1, 0, 0), (0, 1, 0), (0.2, 0.3, 0.5)]))  # fmt: skip
def test_the_loss_is_its_float64_definition(seed, rows, items, density, gamma, depth, impl, prior):
    crow, col, x = batch(rows, items, density, seed)
    m = model(items, seed, gamma, depth, prior).train()
    m.set_phase("decoder")  # no input dropout: the only draw is the code's noise
    torch.manual_seed(seed)
    got = m.multinomial_loss(crow, col, impl=impl, backend="torch")
    torch.manual_seed(seed)
    eps = torch.randn(rows, 5, dtype=torch.float64)
    want = recvae_reference(m, x, eps)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_fused_and_dense_paths_give_the_same_gradients():
    crow, col, _ = batch(6, 30, 0.2, 1)
    grads = {}
    for impl in ("reference", "fused"):
        m = model(30, 1).train()
        m.set_phase("decoder")
        m.requires_grad_(True)
        m.prior.requires_grad_(False)
        torch.manual_seed(3)
        m.multinomial_loss(crow, col, impl=impl, backend="torch").backward()
        grads[impl] = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    assert grads["fused"].keys() == grads["reference"].keys() and grads["fused"]
    for name in grads["fused"]:
        torch.testing.assert_close(grads["fused"][name], grads["reference"][name], rtol=1e-9,
                                   atol=1e-11, msg=name)  # fmt: skip


def test_the_fused_gradients_are_the_definitions_gradients():
    """d loss / d every learnable parameter, fused path against autograd through the
    float64 definition (recvae_reference), the same noise."""
    crow, col, x = batch(5, 25, 0.25, 2)
    m = model(25, 2).train()
    m.set_phase("decoder")
    m.encoder.requires_grad_(True)  # gradients of both halves at once
    params = m.learnable()
    torch.manual_seed(7)
    got = torch.autograd.grad(m.multinomial_loss(crow, col, impl="fused", backend="torch"),
                              params)  # fmt: skip
    torch.manual_seed(7)
    eps = torch.randn(5, 5, dtype=torch.float64)
    want = torch.autograd.grad(recvae_reference(m, x, eps), params)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


def test_the_composite_prior_and_the_user_size_weight_are_in_the_loss():
    """Not vacuous: a larger gamma, a larger user, or another prior change the loss."""
    crow, col, _ = batch(3, 20, 0.3, 4)

    def loss(m):
        torch.manual_seed(0)
        return m.multinomial_loss(crow, col, impl="reference", backend="torch").item()

    base, heavy = model(20, 4, gamma=0.005).train(), model(20, 4, gamma=0.05).train()
    for m in (base, heavy):
        m.set_phase("decoder")
    assert loss(base) != loss(heavy)
    before = loss(base)
    base.end_epoch()  # q_old := the encoder
    assert loss(base) != before
    standard = model(20, 4, prior=(1.0, 0.0, 0.0)).train()
    standard.set_phase("decoder")
    standard.load_state_dict(base.state_dict())
    assert loss(standard) != loss(base)  # the mixture weights are read


def test_an_epoch_alternates_and_refreshes_the_prior():
    rng = np.random.default_rng(0)
    users, items = 40, 30
    rows = np.repeat(np.arange(users), 6)
    cols = rng.integers(0, items, rows.size)
    import pandas as pd

    frame = pd.DataFrame({"user": rows, "item": cols, "rating": 4.0}).drop_duplicates(
        ["user", "item"]
    )
    config = Config(objective="multinomial", recvae=True, hidden=[8, 4], recvae_depth=2,
                    epochs=1, batch_size=16, encoder_passes=2, fused=True)  # fmt: skip
    from deeprec.data import split

    train, val = split(frame, "random", val_frac=0.2, seed=0)
    m = RatingMatrix.from_split(train, val, "user", (0.5, 5.0))
    t = Trainer.assemble(config, m, torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    phases = []
    real = t.model.set_phase
    t.model.set_phase = lambda phase: (phases.append(phase), real(phase))[1]
    fit(t, quiet=True)
    assert phases == ["encoder", "encoder", "decoder", "encoder"]  # the last: ready for the next
    after = dict(t.model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert any(n.startswith("encoder.") for n in moved)
    assert any(n.startswith("decoder.") for n in moved)
    enc, prior = t.model.encoder.state_dict(), t.model.prior.state_dict()
    assert all(torch.equal(enc[k], prior[k]) for k in enc)  # refreshed at the epoch's end
    # Adam steps only the learnable parameters (the prior is not among them)
    stepped = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert not stepped & {id(p) for p in t.model.prior.parameters()}


@pytest.mark.parametrize(
    "options, words",
    [
        ({"recvae": True, "hidden": [8, 4]}, "--objective multinomial"),
        ({"recvae": True, "objective": "multinomial", "hidden": [8, 4, 2]}, "two sizes"),
        (
            {"recvae": True, "objective": "multinomial", "hidden": [8, 4], "variational": True},
            "no --variational",
        ),
    ],
)
def test_recvae_options_are_checked(options, words):
    with pytest.raises(ConfigError, match=words):
        Config(**options).check()


@pytest.mark.parametrize(
    "weights, words",
    [
        ([0.5, 0.5], "three numbers >= 0"),
        ([0.5, 0.6, -0.1], "three numbers >= 0"),
        ([float("nan"), 0.5, 0.5], "three numbers >= 0"),
        ([1.0, 1.0, 1.0], "must sum to 1 \\(they sum to 3\\)"),
    ],
)
def test_bad_prior_weights_are_refused_in_one_line(weights, words, capsys):
    from deeprec.train import cli_main as train_main

    with pytest.raises(ConfigError, match="--prior-weights: .*" + words):
        Config().replace(prior_weights=weights)
    text = ",".join(map(str, weights))
    with pytest.raises(SystemExit) as exit_:
        train_main(["--recvae", "--objective", "multinomial", f"--prior-weights={text}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "--prior-weights" in err[0], err


def test_a_saved_recvae_scores_the_same_after_load(tmp_path):
    ratings, _ = deeprec.load_ratings("ml-latest-small")
    rec = deeprec.Recommender("topk", recvae=True, hidden=[16, 8], recvae_depth=2, epochs=1,
                              fused=True, progress=False,
                              prior_weights=[0.5, 0.25, 0.25])  # fmt: skip
    rec.fit(ratings)
    assert rec.model.config["prior_weights"] == (0.5, 0.25, 0.25)
    back = deeprec.Recommender.load(rec.save(tmp_path / "rv"))
    assert back.model.config["prior_weights"] == (0.5, 0.25, 0.25)
    assert back.recommend([1, 2], k=10).equals(rec.recommend([1, 2], k=10))
    assert back.evaluate(ease_lambda=None).loc["deeprec", "ndcg@10"] == pytest.approx(
        rec.history["val_ndcg@10"].iloc[-1], abs=1e-12
    )
