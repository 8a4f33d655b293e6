"""The ranking objective (Mult-DAE): the multinomial loss on the sparse input layer equals
its dense definition, value and every gradient, and a model trained with it ranks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_csr
from datasets import write_movielens_csv
from hypothesis import given, settings
from hypothesis import strategies as st

from deeprec.config import Config, ConfigError
from deeprec.model import AutoEncoder, multinomial_reference
from deeprec.ops import fused_available


def _dense(crow, col, val, N):
    out = torch.zeros(crow.numel() - 1, N, dtype=val.dtype)
    for i in range(crow.numel() - 1):
        out[i, col[crow[i] : crow[i + 1]]] = val[crow[i] : crow[i + 1]]
    return out


PATHS = [("reference", "native"), ("fused", "native"), ("fused", "torch")]


@pytest.mark.parametrize("impl,backend", PATHS)
@settings(max_examples=15, deadline=None)
@given(
    B=st.integers(1, 9),
    N=st.integers(2, 40),
    density=st.floats(0.0, 0.6),
    tied=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_multinomial_loss_and_gradients_equal_the_dense_definition(impl, backend, B, N, density,
                                                                   tied, seed):  # fmt: skip
    if impl == "fused" and not fused_available("cpu"):
        pytest.skip("no fused CPU kernels")
    crow, col, val = random_csr(B, N, density, seed=seed, zeros=False)
    torch.manual_seed(seed)
    model = AutoEncoder(N, (7, 3), activation="tanh", tied=tied, objective="multinomial").double()
    model.eval()  # no dropout: both sides see the same input
    got = model.multinomial_loss(crow, col, impl=impl, backend=backend)
    got_grads = torch.autograd.grad(got, list(model.parameters()))
    want = multinomial_reference(model, _dense(crow, col, val, N))
    want_grads = torch.autograd.grad(want, list(model.parameters()))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g.to_dense(), w, rtol=1e-9, atol=1e-11)


def test_multinomial_gradient_matches_finite_differences_in_float64():
    crow, col, _ = random_csr(4, 9, 0.4, seed=3, zeros=False)
    model = AutoEncoder(9, (4,), activation="tanh", objective="multinomial").double().eval()
    params = list(model.parameters())
    base = [p.detach().clone() for p in params]
    analytic = torch.autograd.grad(
        model.multinomial_loss(crow, col, impl="reference", backend="native"), params
    )
    eps = 1e-6
    for p, g, b in zip(params, analytic, base, strict=True):
        flat = p.detach().view(-1)
        for k in range(0, flat.numel(), max(1, flat.numel() // 5)):
            with torch.no_grad():
                flat[k] = b.view(-1)[k] + eps
                up = model.multinomial_loss(crow, col, impl="reference", backend="native").item()
                flat[k] = b.view(-1)[k] - eps
                down = model.multinomial_loss(crow, col, impl="reference", backend="native").item()
                flat[k] = b.view(-1)[k]
            assert (up - down) / (2 * eps) == pytest.approx(g.reshape(-1)[k].item(), abs=1e-6)


def test_the_config_refuses_what_a_softmax_over_items_cannot_do():
    for change in ({"by": "item"}, {"residual": True}, {"last_activation": "sigmoid"},
                   {"refeed": True}):  # fmt: skip
        with pytest.raises(ConfigError, match="--objective multinomial"):
            Config(objective="multinomial").replace(**change)


@pytest.mark.parametrize("fused", [False, True])
def test_a_multinomial_model_trains_validates_by_ndcg_and_never_recommends_training_items(
    tmp_path, capsys, fused
):
    from deeprec.inference.recommendation import TrainedScorer
    from deeprec.inference.trained import load_trained
    from deeprec.recommend import cli_main as recommend_main
    from deeprec.top_items import top_k
    from deeprec.train import cli_main as train_main

    data = write_movielens_csv(tmp_path / "toy")
    out = tmp_path / "rank"
    args = ["--data", str(data), "--out", str(out), "--objective", "multinomial", "--hidden",
            "16", "--activation", "tanh", "--input-dropout", "0.5", "--epochs", "3",
            "--split", "user-time", "--quiet", *(["--fused"] if fused else [])]  # fmt: skip
    assert train_main(args) == 0
    printed = capsys.readouterr().out
    assert "val NDCG@10" in printed and "final val NDCG@10" in printed
    trained = load_trained(out, None, torch.device("cpu"))
    scorer = TrainedScorer(trained)
    users = np.arange(trained.matrix.n_users)
    scores = scorer.score_users(users)
    for u in users:
        top = top_k(scores[u], scorer.rated(u), 10)
        assert not set(top.tolist()) & set(scorer.rated(u).tolist())
    assert recommend_main(["--checkpoint", str(out), "--user", "1", "-k", "5"]) == 0


def test_a_ranking_model_is_not_exported_as_a_rating_scorer(tmp_path, capsys):
    from deeprec.export import cli_main as export_main
    from deeprec.train import cli_main as train_main

    data = write_movielens_csv(tmp_path / "toy")
    out = tmp_path / "rank"
    assert train_main(["--data", str(data), "--out", str(out), "--objective", "multinomial",
                       "--hidden", "8", "--epochs", "1", "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    assert export_main(["--checkpoint", str(out)]) == 2
    assert "--objective mse" in capsys.readouterr().err
    assert not (out / "model.onnx").exists()


# ------------------------------------------------------------------ Mult-VAE
@pytest.mark.parametrize("impl,backend", PATHS)
@settings(max_examples=10, deadline=None)
@given(B=st.integers(1, 8), N=st.integers(2, 30), beta=st.floats(0.0, 1.0),
       seed=st.integers(0, 10_000), train=st.booleans())  # fmt: skip
def test_the_variational_loss_equals_its_definition(impl, backend, B, N, beta, seed, train):
    """NLL + beta KL on the sparse path equals the dense definition, value and gradients;
    in training mode both draw the same reparameterisation noise from the same seed."""
    crow, col, val = random_csr(B, N, 0.4, seed=seed, zeros=False)
    torch.manual_seed(seed)
    model = AutoEncoder(N, (6, 3), activation="tanh", objective="multinomial",
                        variational=True).double().train(train)  # fmt: skip
    torch.manual_seed(seed + 1)
    got = model.multinomial_loss(crow, col, impl=impl, backend=backend, beta=beta)
    got_grads = torch.autograd.grad(got, list(model.parameters()))
    torch.manual_seed(seed + 1)
    want = multinomial_reference(model, _dense(crow, col, val, N), beta=beta)
    want_grads = torch.autograd.grad(want, list(model.parameters()))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


def test_the_kl_term_and_the_code_by_hand():
    model = AutoEncoder(5, (4, 2), activation="tanh", objective="multinomial",
                        variational=True).double()  # fmt: skip
    z1 = torch.randn(3, 4, dtype=torch.float64)
    out = model.encoder[1](torch.tanh(z1))
    mu, logvar = out[:, :2], out[:, 2:]
    kl = (0.5 * (torch.exp(logvar) + mu**2 - 1 - logvar).sum(1)).mean()
    model.eval()
    code, got_kl = model.code(z1)
    torch.testing.assert_close(code, mu)  # evaluation reads the mean
    torch.testing.assert_close(got_kl, kl)
    model.train()
    torch.manual_seed(4)
    sampled, _ = model.code(z1)
    torch.manual_seed(4)
    noise = torch.randn_like(mu)
    torch.testing.assert_close(sampled, mu + noise * torch.exp(0.5 * logvar))
    assert model.encoder[1].out_features == 4 and model.decoder[0].in_features == 2


def test_the_kl_weight_rises_linearly_to_its_cap():
    from deeprec.training.plan import plan

    path = plan(Config(objective="multinomial", variational=True, beta_cap=0.3,
                       anneal_steps=100), torch.device("cpu"))  # fmt: skip
    assert [path.beta(t) for t in (0, 10, 30, 31, 500)] == [0.0, 0.1, 0.3, 0.3, 0.3]
    assert plan(Config(objective="multinomial"), torch.device("cpu")).beta(50) == 0.0


def test_the_config_refuses_a_variational_model_that_cannot_be_one():
    with pytest.raises(ConfigError, match=r"--variational .*needs --objective multinomial"):
        Config(variational=True).check()
    with pytest.raises(ConfigError, match="--tied"):
        Config(objective="multinomial", variational=True, tied=True).check()
    with pytest.raises(ConfigError, match="--beta-cap must be"):
        Config(beta_cap=-0.1).check()
    with pytest.raises(ConfigError, match="--anneal-steps must be"):
        Config(anneal_steps=0).check()


@pytest.mark.parametrize("fused", [False, True])
def test_a_vae_trains_resumes_exactly_and_recommends(tmp_path, capsys, fused):
    """Train 3 epochs, or 2 then --resume to 3: the same weights (the KL schedule counts
    updates across the resume); the model ranks and recommends."""
    from deeprec import checkpoint
    from deeprec.recommend import cli_main as recommend_main
    from deeprec.train import cli_main as train_main

    data = write_movielens_csv(tmp_path / "toy")
    flags = ["--data", str(data), "--objective", "multinomial", "--variational", "--hidden",
             "12,4", "--activation", "tanh", "--input-dropout", "0.5", "--anneal-steps", "5",
             "--beta-cap", "0.5", "--batch-size", "8", "--split", "user-time", "--quiet",
             *(["--fused"] if fused else [])]  # fmt: skip
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert train_main([*flags, "--out", str(whole), "--epochs", "3"]) == 0
    assert train_main([*flags, "--out", str(part), "--epochs", "2"]) == 0
    assert train_main(["--resume", str(part), "--epochs", "3", "--quiet"]) == 0
    a, b = checkpoint.load(whole), checkpoint.load(part)
    for name, weight in a["state_dict"].items():
        assert torch.equal(b["state_dict"][name], weight), name
    assert "val NDCG@10" in capsys.readouterr().out
    assert recommend_main(["--checkpoint", str(whole), "--user", "1", "-k", "5"]) == 0
