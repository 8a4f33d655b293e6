"""AutoEncoder: encoder layers as given, mirrored decoder, linear output of width n_in.

The dense forward is the reference path: it maps a (B, n_in) rating matrix (0 where
unrated) to (B, n_in) predictions. A newcomer should read this file in five minutes.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

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


class AutoEncoder(nn.Module):
    """n_in -> hidden[0] -> ... -> hidden[-1] (the code) -> ... -> hidden[0] -> n_in.

    activation: applied after every hidden layer (encoder and decoder).
    dropout: on the code layer. tied: decoder weights are the encoder's, transposed
    (each decoder layer keeps its own bias). last_activation: on the output layer
    ("none" = linear, the default). Weights are Xavier-uniform, biases zero.
    """

    def __init__(
        self,
        n_in: int,
        hidden: Sequence[int] = (512, 512, 1024),
        activation: str = "relu",
        dropout: float = 0.0,
        tied: bool = False,
        last_activation: str = "none",
    ) -> None:
        super().__init__()
        for name in (activation, last_activation):
            if name not in ACTIVATIONS:
                raise ValueError(
                    f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}"
                )
        if n_in < 1 or not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"bad layer sizes: n_in={n_in}, hidden={tuple(hidden)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.config = dict(
            n_in=n_in,
            hidden=list(hidden),
            activation=activation,
            dropout=dropout,
            tied=tied,
            last_activation=last_activation,
        )
        sizes = [n_in, *hidden]
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes))
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

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.encoder:
            x = self.act(layer(x))
        return self.drop(x)

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
        """(weight (n_in x h), bias (n_in)) of the output layer, for sparse evaluation."""
        last = len(self.encoder) - 1
        if self.tied:
            return self.encoder[0].weight.t(), self.decoder_bias[last]
        return self.decoder[last].weight, self.decoder[last].bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.decode_hidden(self.encode(x))
        weight, bias = self.output_layer()
        return self.last_act(nn.functional.linear(h, weight, bias))
