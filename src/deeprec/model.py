"""AutoEncoder: encoder layers as given, mirrored decoder, linear output of width n_in.

The dense forward is the reference path: it maps a (B, n_in) rating matrix (0 where
unrated) to (B, n_in) predictions. A newcomer should read this file in five minutes.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from deeprec import choices
from deeprec.config import Config
from deeprec.csr import entry_rows as entry_rows_of
from deeprec.ops import multinomial_nll, sparse_linear, sparse_output_mse
from deeprec.ops.schema import ChosenImpl

ACTIVATIONS = {
    "relu": nn.ReLU,
    "selu": nn.SELU,
    "elu": nn.ELU,
    "lrelu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "swish": nn.SiLU,
    "none": nn.Identity,
}
assert tuple(sorted(ACTIVATIONS)) == choices.ACTIVATIONS, "deeprec.choices.ACTIVATIONS is stale"


def linear_output(last_activation: str) -> bool:
    """Whether a model with this last activation has a linear output layer: the one rule
    behind the sparse path (outputs only at given entries) and the plan that picks it."""
    return last_activation == "none"


def unit_row_values(crow, col, dtype: torch.dtype, rows=None) -> torch.Tensor:
    """The stored values of each CSR row's who-rated-what vector scaled to unit length:
    1 / sqrt(the row's count) at each of its entries (what a ranking model reads)."""
    rows = entry_rows_of(crow, col.numel()) if rows is None else rows
    return (crow[1:] - crow[:-1]).clamp(min=1).to(dtype).rsqrt()[rows]


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Dense rows as who rated what (nonzero: 1), each scaled to unit length."""
    rated = (x != 0).to(x.dtype)
    return rated / rated.norm(dim=1, keepdim=True).clamp(min=1e-12)


class InputLayer(nn.Module):
    """Linear n_in -> out with the weight stored item-major, (n_in, out).

    Same function as nn.Linear; row j of the weight is item j's contribution, which
    the sparse path gathers contiguously straight from a CSR batch.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight)


class AutoEncoder(nn.Module):
    """n_in -> hidden[0] -> ... -> hidden[-1] (the code) -> ... -> hidden[0] -> n_in.

    activation: applied after every hidden layer (encoder and decoder).
    dropout: on the code layer. input_dropout: on the input ratings while training (a
    denoising autoencoder: the loss still covers the dropped ratings, so the model must
    predict ratings it cannot see). tied: decoder weights are the encoder's, transposed
    (each decoder layer keeps its own bias). last_activation: on the output layer
    ("none" = linear, the default). Weights are Xavier-uniform, biases zero.
    variational (Mult-VAE, Liang et al. 2018): the code is a Gaussian latent of width
    hidden[-1]; the last encoder layer gives its mean and log-variance (no activation),
    training samples the code (the reparameterisation trick), evaluation reads the mean,
    and ``code`` returns the KL divergence from the unit Gaussian the loss adds.

    ``forward`` is the dense reference path. ``sparse_loss`` computes the same masked
    MSE from a CSR batch without any N-wide dense tensor (see deeprec.ops.sparse_layers).
    """

    def __init__(
        self,
        n_in: int,
        hidden: Sequence[int] = (512, 512, 1024),
        activation: str = "relu",
        dropout: float = 0.0,
        tied: bool = False,
        last_activation: str = "none",
        input_dropout: float = 0.0,
        objective: str = "mse",
        variational: bool = False,
    ) -> None:
        super().__init__()
        for name in (activation, last_activation):
            if name not in ACTIVATIONS:
                raise ValueError(
                    f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}"
                )
        if n_in < 1 or not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"bad layer sizes: n_in={n_in}, hidden={tuple(hidden)}")
        for name, p in (("dropout", dropout), ("input_dropout", input_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        self.config = dict(
            n_in=n_in,
            hidden=list(hidden),
            activation=activation,
            dropout=dropout,
            tied=tied,
            last_activation=last_activation,
            input_dropout=input_dropout,
            objective=objective,
            variational=variational,
        )
        if variational and tied:
            raise ValueError("a variational encoder cannot be tied to its decoder")
        if objective not in choices.OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose from {choices.OBJECTIVES}")
        self.multinomial = objective == "multinomial"
        sizes = [n_in, *hidden]
        self.variational = variational
        widths = [*hidden[:-1], hidden[-1] * (2 if variational else 1)]  # mean, log-variance
        rest = (nn.Linear(a, b) for a, b in zip(hidden[:-1], widths[1:], strict=True))
        self.encoder = nn.ModuleList([InputLayer(n_in, widths[0]), *rest])
        rev = sizes[::-1]
        self.tied = tied
        if tied:
            self.decoder_bias = nn.ParameterList(nn.Parameter(torch.zeros(b)) for b in rev[1:])
            self.decoder = None
        else:
            self.decoder = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(rev))
        self.act = ACTIVATIONS[activation]()
        self.last_act = ACTIVATIONS[last_activation]()
        self.drop = nn.Dropout(dropout)
        for layer in [*self.encoder, *(self.decoder or [])]:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    @classmethod
    def from_config(cls, config: Config, n_in: int) -> AutoEncoder:
        """The model a training Config describes, for rows of ``n_in`` columns."""
        return cls(
            n_in,
            hidden=config.hidden,
            activation=config.activation,
            dropout=config.dropout,
            tied=config.tied,
            last_activation=config.last_activation,
            input_dropout=config.input_dropout,
            objective=config.objective,
            variational=config.variational,
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_rest(self.encoder[0](self.encode_input(x)))

    def encode_input(self, x: torch.Tensor) -> torch.Tensor:
        """The dense rows the first layer reads: the ratings (a multinomial model: who rated
        what, each row scaled to unit length), after input dropout."""
        if self.multinomial:
            x = unit_rows(x)
        return nn.functional.dropout(x, self.config["input_dropout"], self.training)

    def encode_rest(self, z1: torch.Tensor) -> torch.Tensor:
        """The encoder after the first layer's pre-activation z1: the code (with dropout)."""
        return self.code(z1)[0]

    def code(self, z1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the code, with dropout; the KL term of a variational encoder, else None) from
        the first layer's pre-activation z1. The KL term is the mean over rows of
        KL(N(mu, sigma^2) || N(0, I))."""
        if not self.variational:
            x = self.act(z1)
            for layer in self.encoder[1:]:
                x = self.act(layer(x))
            return self.drop(x), None
        x = z1
        for layer in self.encoder[1:]:
            x = layer(self.act(x))
        if x.dtype in (torch.float16, torch.bfloat16):  # autocast: the KL term in float32
            x = x.float()
        mu, logvar = x.chunk(2, dim=1)
        kl = 0.5 * (logvar.exp() + mu * mu - 1.0 - logvar).sum(1).mean()
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return self.drop(z), kl

    def decode_hidden(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder up to (not including) the output layer: the last hidden activations."""
        for i in range(len(self.encoder) - 1):
            z = self.act(self.decoder_layer(i, z))
        return z

    def decoder_layer(self, i: int, z: torch.Tensor) -> torch.Tensor:
        if self.tied:
            enc = self.encoder[len(self.encoder) - 1 - i]
            return nn.functional.linear(z, enc.weight.t(), self.decoder_bias[i])
        return self.decoder[i](z)

    def output_layer(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight (n_in x h), bias (n_in)) of the output layer; rows are items.

        Tied: the input layer's item-major weight itself, shared with no transpose.
        """
        last = len(self.encoder) - 1
        if self.tied:
            return self.encoder[0].weight, self.decoder_bias[last]
        return self.decoder[last].weight, self.decoder[last].bias

    def multinomial_loss(
        self,
        crow: torch.Tensor,
        col: torch.Tensor,
        *,
        impl: ChosenImpl,
        backend: str,
        index=None,
        beta: float = 0.0,
    ) -> torch.Tensor:
        """Mult-DAE's loss on a CSR batch of who-rated-what (the values are not read): the
        negative multinomial log-likelihood of each row's items under a softmax over every
        item, averaged over the rows; a variational model adds ``beta`` times its KL term
        (Mult-VAE). The input is each row's binary vector scaled to unit length, read by
        the sparse input layer (no dense input). impl "fused": the output layer and softmax
        chunk by chunk (deeprec.ops.multinomial_nll, no batch x items logits), its epilogue
        and the input layer on ``backend``; "reference": the dense log-softmax. Equals
        multinomial_reference on the dense rows."""
        rows = entry_rows_of(crow, col.numel())
        x_val = self.input_values(crow, col, None, rows)
        first = self.encoder[0]
        z1 = sparse_linear((crow, col, x_val), first.weight, first.bias, index=index, impl=impl,
                           backend=backend)  # fmt: skip
        z, kl = self.code(z1)
        h = self.decode_hidden(z)
        out_weight, out_bias = self.output_layer()
        nll = multinomial_nll(h, out_weight, out_bias, (crow, col), impl=impl, backend=backend)
        return nll if kl is None else nll + beta * kl

    def input_values(self, crow, col, val, rows=None) -> torch.Tensor:
        """The stored input values the sparse input layer reads, after input dropout: the
        ratings, or for a multinomial model 1 / sqrt(the row's count) (unit-length rows)."""
        if self.multinomial:
            val = unit_row_values(crow, col, self.encoder[0].weight.dtype, rows)
        return nn.functional.dropout(val, self.config["input_dropout"], self.training)

    def sparse_loss(
        self,
        crow: torch.Tensor,
        col: torch.Tensor,
        val: torch.Tensor,
        *,
        impl: ChosenImpl,
        backend: str,
        index=None,
        sparse_grad: bool = False,
    ) -> torch.Tensor:
        """Masked MSE of this model on a CSR batch, with no dense N-wide tensor anywhere.

        Equals masked_mse(self(dense batch), batch) and has the same gradients.
        backend: the sparse layers' ("native" or "torch", deeprec.ops.backends).
        sparse_grad: the item-major weights (and output bias) get sparse COO gradients
        holding the batch's items only (see item_parameters()).
        """
        if not linear_output(self.config["last_activation"]):
            raise ValueError("sparse_loss needs last_activation='none' (a linear output layer)")
        first = self.encoder[0]
        # Dropout on the stored values is dropout on the dense input (its zeros stay zero).
        x_val = self.input_values(crow, col, val)
        z1 = sparse_linear(
            (crow, col, x_val),
            first.weight,
            first.bias,
            index=index,
            impl=impl,
            backend=backend,
            sparse_grad=sparse_grad,
        )
        h = self.decode_hidden(self.encode_rest(z1))
        weight, bias = self.output_layer()
        return sparse_output_mse(
            h, weight, bias, (crow, col, val), index=index, impl=impl, backend=backend,
            sparse_grad=sparse_grad,
        )  # fmt: skip

    def hidden_of(self, crow, col, val, *, impl: ChosenImpl, backend: str,
                  index=None) -> torch.Tensor:  # fmt: skip
        """The last hidden activations of a CSR batch of input rows, read by the sparse
        input layer (no dense input): what the output layer reads."""
        first = self.encoder[0]
        x_val = self.input_values(crow, col, val)
        z1 = sparse_linear((crow, col, x_val), first.weight, first.bias, index=index, impl=impl,
                           backend=backend)  # fmt: skip
        return self.decode_hidden(self.encode_rest(z1))

    def outputs_at(
        self, crow, col, val, rows, cols, *, impl: ChosenImpl, backend: str, index=None
    ) -> torch.Tensor:
        """The outputs at entries (rows[k], cols[k]) of a CSR batch's reconstruction, with no
        dense N-wide tensor: evaluation at a catalog's scale. Needs a linear output layer."""
        if not linear_output(self.config["last_activation"]):
            raise ValueError("outputs_at needs last_activation='none' (a linear output layer)")
        h = self.hidden_of(crow, col, val, impl=impl, backend=backend, index=index)
        weight, bias = self.output_layer()
        return (h[rows] * weight[cols]).sum(1) + bias[cols]

    def reconstruct(self, crow, col, val, *, impl: ChosenImpl, backend: str,
                    index=None) -> torch.Tensor:  # fmt: skip
        """Whole output rows for a CSR batch of input rows, read by the sparse input layer
        (no dense input): forward(dense rows), at a catalogue's scale half the work."""
        h = self.hidden_of(crow, col, val, impl=impl, backend=backend, index=index)
        weight, bias = self.output_layer()
        return self.last_act(nn.functional.linear(h, weight, bias))

    def item_parameters(self) -> list[nn.Parameter]:
        """The N-row parameters whose gradients the sparse path can make sparse."""
        weight, bias = self.output_layer()
        items = [self.encoder[0].weight, weight, bias]
        unique: dict[int, nn.Parameter] = {id(p): p for p in items}  # tied: one weight
        return list(unique.values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.decode_hidden(self.encode(x))
        weight, bias = self.output_layer()
        return self.last_act(nn.functional.linear(h, weight, bias))


def multinomial_reference(
    model: AutoEncoder, ratings: torch.Tensor, beta: float = 0.0
) -> torch.Tensor:
    """Mult-DAE's loss from its definition on dense rows of ratings (0: not rated): the
    mean over rows of -sum_i rated_i log softmax(model(ratings))_i (the model reads who
    rated what, each row scaled to unit length); a variational model adds beta times its
    KL term, computed from the same code."""
    rated = (ratings != 0).to(ratings.dtype)
    z, kl = model.code(model.encoder[0](model.encode_input(ratings)))
    weight, bias = model.output_layer()
    logits = nn.functional.linear(model.decode_hidden(z), weight, bias)
    nll = -(logits.log_softmax(1) * rated).sum(1).mean()
    return nll if kl is None else nll + beta * kl
