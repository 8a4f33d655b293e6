"""AutoEncoder structure: layer sizes, activations, tying, dropout, init."""

from __future__ import annotations

import math

import pytest
import torch

from deeprec.model import ACTIVATIONS, AutoEncoder


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_maps_rows_to_rows(activation):
    model = AutoEncoder(30, (8, 4), activation=activation)
    assert model(torch.randn(5, 30)).shape == (5, 30)


def test_layers_mirror_the_encoder():
    model = AutoEncoder(100, (16, 8, 4))
    assert [(m.in_features, m.out_features) for m in model.encoder] == [(100, 16), (16, 8), (8, 4)]
    assert [(m.in_features, m.out_features) for m in model.decoder] == [(4, 8), (8, 16), (16, 100)]


def test_tied_decoder_shares_weights_and_matches_untied_math():
    tied = AutoEncoder(20, (6, 3), tied=True)
    n_tied = sum(p.numel() for p in tied.parameters())
    assert n_tied == (20 * 6 + 6 * 3) + (6 + 3) + (6 + 20)  # weights once, every bias
    untied = AutoEncoder(20, (6, 3))
    with torch.no_grad():
        for enc_t, enc_u in zip(tied.encoder, untied.encoder, strict=True):
            enc_u.weight.copy_(enc_t.weight)
            enc_u.bias.copy_(enc_t.bias)
        for i, dec in enumerate(untied.decoder):
            enc = tied.encoder[len(tied.encoder) - 1 - i]
            # nn.Linear weights are (out, in): the tie transposes them; the item-major
            # input layer (n_in, h) already has the output layer's (n_in, h) shape.
            dec.weight.copy_(enc.weight if i == len(untied.decoder) - 1 else enc.weight.t())
            dec.bias.copy_(tied.decoder_bias[i])
    x = torch.randn(4, 20)
    torch.testing.assert_close(tied(x), untied(x))


def test_output_is_linear_by_default_and_last_activation_applies():
    x = torch.randn(64, 10) * 5
    assert (AutoEncoder(10, (4,))(x) < 0).any()
    assert (AutoEncoder(10, (4,), last_activation="relu")(x) >= 0).all()


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_dropout_on_the_code_only_in_training(activation):
    # ReLU zeroes about half the code by itself, so count only units that eval mode keeps,
    # and check the survivors are scaled by 1 / (1 - p), as dropout (and nothing else) does.
    model = AutoEncoder(10, (400,), activation=activation, dropout=0.5)
    x = torch.randn(3, 10)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    plain = model.encode(x)
    model.train()
    torch.manual_seed(0)
    code = model.encode(x)
    alive = plain != 0
    dropped = (code == 0) & alive
    assert 0.4 < dropped.sum() / alive.sum() < 0.6
    torch.testing.assert_close(code[~dropped & alive], 2 * plain[~dropped & alive])


def test_input_dropout_drops_inputs_only_in_training():
    model = AutoEncoder(2000, (8,), input_dropout=0.25)
    x = torch.rand(4, 2000) + 0.5  # no zero inputs of its own
    first = model.encoder[0]
    seen = {}
    first.register_forward_hook(lambda m, inp, out: seen.__setitem__("x", inp[0]))
    model.train()
    torch.manual_seed(0)
    model(x)
    dropped = (seen["x"] == 0).float().mean()
    assert 0.2 < dropped < 0.3
    kept = seen["x"] != 0
    torch.testing.assert_close(seen["x"][kept], x[kept] / 0.75)
    model.eval()
    model(x)
    assert torch.equal(seen["x"], x)


def test_xavier_uniform_init_and_zero_bias():
    model = AutoEncoder(300, (200,))
    w = model.encoder[0].weight
    bound = math.sqrt(6 / (300 + 200))
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert torch.count_nonzero(model.encoder[0].bias) == 0


@pytest.mark.parametrize("kwargs", [dict(activation="gelu"), dict(hidden=()), dict(dropout=1.0)])
def test_bad_configuration_is_refused(kwargs):
    with pytest.raises(ValueError):
        AutoEncoder(10, **{"hidden": (4,), **kwargs})
