"""RecVAE (Shenbin et al., WSDM 2020): Mult-VAE with a composite prior, a user-size KL
weight, alternating encoder/decoder updates and a densely connected encoder.

- Encoder: the user's binary row scaled to unit length (input dropout while the encoder
  learns), then ``depth`` layers of width H, each swish(linear(previous) + the sum of every
  earlier layer's output) under layer norm (eps 0.1); two linear heads give the Gaussian
  code's mean and log-variance (width K). The first layer reads the CSR batch through the
  sparse input layer (deeprec.ops.sparse_linear).
- Decoder: one linear layer K -> items, scored by the chunked multinomial loss
  (deeprec.ops.multinomial_nll): no batch x items logits on the fused path.
- Loss of a batch: the multinomial NLL (the mean over users of -sum log softmax at their
  items) plus the mean over users of ``gamma * |x_u| * KL_u``, where KL_u is the one-sample
  estimate log q(z|x) - log p(z) at the sampled code and the prior is the mixture
  w_s N(0, I) + w_p q_old(z|x) + w_w N(0, e^10 I) (``prior_weights``, the paper's 3/20,
  15/20, 2/20 by default); q_old is the encoder as it stood at the end of the previous epoch
  (a frozen copy, kept in the checkpoint).
- Schedule: each epoch makes ``encoder_passes`` passes over the users updating the encoder
  only (input dropout on), then one pass updating the decoder only (no dropout), then
  refreshes q_old (``phases`` and ``end_epoch``, read by deeprec.training.loop).

The same interface as deeprec.model.AutoEncoder where the package reads one (forward,
reconstruct, hidden_of, outputs_at, multinomial_loss, input_values, output_layer), so
scoring, evaluation, recommendation and fold-in treat both alike.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from deeprec.config import Config, prior_weights_problem
from deeprec.csr import entry_rows as entry_rows_of
from deeprec.model import InputLayer, unit_row_values, unit_rows
from deeprec.ops import multinomial_nll, sparse_linear
from deeprec.ops.schema import ChosenImpl

# The wide component's log-variance, as the paper fixes it.
WIDE_LOGVAR = 10.0
LAYER_NORM_EPS = 0.1
LOG_2PI = math.log(2 * math.pi)


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(z; mu, exp(logvar))."""
    return -0.5 * (logvar + LOG_2PI + (z - mu).pow(2) / logvar.exp())


class Encoder(nn.Module):
    """The densely connected encoder: (B, n_in) rows -> (mean, log-variance) of the code."""

    def __init__(self, n_in: int, width: int, code: int, depth: int) -> None:
        super().__init__()
        self.first = InputLayer(n_in, width)
        self.rest = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.norms = nn.ModuleList(nn.LayerNorm(width, eps=LAYER_NORM_EPS) for _ in range(depth))
        self.mu = nn.Linear(width, code)
        self.logvar = nn.Linear(width, code)
        for layer in [self.first, *self.rest, self.mu, self.logvar]:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def layers(self, z1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) from the first layer's pre-activation z1."""
        act = nn.functional.silu
        h = self.norms[0](act(z1))
        total = h
        for layer, norm in zip(self.rest, self.norms[1:], strict=True):
            h = norm(act(layer(h) + total))
            total = total + h
        return self.mu(h), self.logvar(h)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layers(self.first(x))


class RecVAE(nn.Module):
    """RecVAE on ``n_in`` items: encoder width ``width`` and ``depth`` layers, code ``code``."""

    multinomial = True
    variational = True

    def __init__(
        self,
        n_in: int,
        width: int = 600,
        code: int = 200,
        depth: int = 5,
        input_dropout: float = 0.5,
        gamma: float = 0.005,
        prior_weights: tuple[float, float, float] = (0.15, 0.75, 0.1),
    ) -> None:
        super().__init__()
        if n_in < 1 or min(width, code, depth) < 1:
            raise ValueError(f"bad RecVAE sizes: n_in={n_in}, width={width}, code={code}, "
                             f"depth={depth}")  # fmt: skip
        if not 0.0 <= input_dropout < 1.0:
            raise ValueError(f"input_dropout must be in [0, 1), got {input_dropout}")
        problem = prior_weights_problem(list(prior_weights))
        if problem:
            raise ValueError(f"prior_weights: {problem}, got {prior_weights}")
        self.config = dict(n_in=n_in, width=width, code=code, depth=depth,
                           input_dropout=input_dropout, gamma=gamma,
                           prior_weights=tuple(map(float, prior_weights)),
                           objective="multinomial", recvae=True)  # fmt: skip
        self.encoder = Encoder(n_in, width, code, depth)
        self.decoder = nn.Linear(code, n_in)
        nn.init.xavier_uniform_(self.decoder.weight)
        nn.init.zeros_(self.decoder.bias)
        self.prior = copy.deepcopy(self.encoder).requires_grad_(False)  # q_old
        self.phase = "encoder"

    @classmethod
    def from_config(cls, config: Config, n_in: int) -> RecVAE:
        """hidden = [width, code]; depth, gamma, prior weights and input dropout from the
        config."""
        width, code = config.hidden
        return cls(n_in, width, code, config.recvae_depth, config.input_dropout, config.gamma,
                   tuple(config.prior_weights))  # fmt: skip

    # ------------------------------------------------------------ the schedule
    def phases(self, encoder_passes: int) -> list[str]:
        """The passes of one epoch: the encoder's, then the decoder's."""
        return ["encoder"] * encoder_passes + ["decoder"]

    def set_phase(self, phase: str) -> None:
        """Which half learns (the other's parameters take no gradient, so Adam leaves
        them and their moments alone), and whether input dropout applies."""
        self.phase = phase
        self.encoder.requires_grad_(phase == "encoder")
        self.decoder.requires_grad_(phase == "decoder")

    def end_epoch(self) -> None:
        """q_old becomes the encoder as it stands now."""
        self.prior.load_state_dict(self.encoder.state_dict())

    def learnable(self) -> list[nn.Parameter]:
        """The parameters an optimizer steps (not q_old's)."""
        return [*self.encoder.parameters(), *self.decoder.parameters()]

    # ------------------------------------------------------------ the parts
    def input_values(self, crow, col, val=None, rows=None) -> torch.Tensor:
        """The stored input values: 1 / sqrt(the row's count) (unit-length binary rows),
        after input dropout while the encoder learns."""
        values = unit_row_values(crow, col, self.decoder.weight.dtype, rows)
        drop = self.training and self.phase == "encoder"
        return nn.functional.dropout(values, self.config["input_dropout"], drop)

    def encode_input(self, x: torch.Tensor) -> torch.Tensor:
        """Dense rows as the encoder reads them (the dense reference path)."""
        x = unit_rows(x)
        drop = self.training and self.phase == "encoder"
        return nn.functional.dropout(x, self.config["input_dropout"], drop)

    def output_layer(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decoder.weight, self.decoder.bias

    def code(self, z1: torch.Tensor, prior_z1: torch.Tensor | None, counts: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """(the code: sampled while training, the mean otherwise; the mean over users of
        gamma |x_u| KL_u, 0 outside training) from the first layers' pre-activations."""
        mu, logvar = self.encoder.layers(z1)
        if not self.training:
            return mu, mu.new_zeros(())
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return z, self.kl_term(z, mu, logvar, prior_z1, counts)

    def kl_term(self, z, mu, logvar, prior_z1, counts) -> torch.Tensor:
        """mean_u gamma |x_u| (log q(z|x) - log p(z)) at the sampled z, p the composite prior."""
        with torch.no_grad():
            old_mu, old_logvar = self.prior.layers(prior_z1)
        zeros = torch.zeros_like(z)
        # (mean, log-variance) of the standard, the previous posterior and the wide parts
        components = ((zeros, zeros), (old_mu, old_logvar), (zeros, zeros + WIDE_LOGVAR))
        parts = torch.stack([log_normal(z, mean, lv) + math.log(w)
                             for (mean, lv), w in zip(components, self.config["prior_weights"],
                                                      strict=True)
                             if w > 0])  # a weight of 0 drops its component  # fmt: skip
        log_p = torch.logsumexp(parts, dim=0)
        kl = (log_normal(z, mu, logvar) - log_p).sum(-1)
        return (self.config["gamma"] * counts.to(kl.dtype) * kl).mean()

    # ------------------------------------------------------------ the package's interface
    def multinomial_loss(self, crow, col, *, impl: ChosenImpl, backend: str, index=None,
                         beta: float = 0.0) -> torch.Tensor:  # fmt: skip
        """The batch's loss (module docstring) from a CSR batch of who-rated-what; ``beta``
        is not read (the KL weight is gamma |x_u|). impl "fused": the output layer chunk
        by chunk; "reference": the dense log-softmax."""
        rows = entry_rows_of(crow, col.numel())
        counts = crow[1:] - crow[:-1]
        x_val = self.input_values(crow, col, None, rows)
        first = self.encoder.first
        z1 = sparse_linear((crow, col, x_val), first.weight, first.bias, index=index,
                           impl=impl, backend=backend)  # fmt: skip
        prior_z1 = None
        if self.training:
            clean = unit_row_values(crow, col, x_val.dtype, rows)  # q_old reads no dropout
            pf = self.prior.first
            prior_z1 = sparse_linear((crow, col, clean), pf.weight, pf.bias, index=index,
                                     impl=impl, backend=backend)  # fmt: skip
        z, kl = self.code(z1, prior_z1, counts)
        nll = multinomial_nll(z, self.decoder.weight, self.decoder.bias, (crow, col), impl=impl,
                              backend=backend)  # fmt: skip
        return nll + kl

    def hidden_of(self, crow, col, val, *, impl: ChosenImpl, backend: str, index=None
                  ) -> torch.Tensor:  # fmt: skip
        """The code (the mean in eval mode) of a CSR batch: what the output layer reads."""
        x_val = self.input_values(crow, col, val)
        first = self.encoder.first
        z1 = sparse_linear((crow, col, x_val), first.weight, first.bias, index=index,
                           impl=impl, backend=backend)  # fmt: skip
        return self.encoder.layers(z1)[0]

    def outputs_at(self, crow, col, val, rows, cols, *, impl: ChosenImpl, backend: str,
                   index=None) -> torch.Tensor:  # fmt: skip
        """The logits at entries (rows[k], cols[k]) of a CSR batch, with no N-wide tensor."""
        h = self.hidden_of(crow, col, val, impl=impl, backend=backend, index=index)
        return (h[rows] * self.decoder.weight[cols]).sum(1) + self.decoder.bias[cols]

    def reconstruct(self, crow, col, val, *, impl: ChosenImpl, backend: str, index=None
                    ) -> torch.Tensor:  # fmt: skip
        """Every item's logit for a CSR batch (from the code's mean)."""
        return self.decoder(self.hidden_of(crow, col, val, impl=impl, backend=backend,
                                           index=index))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dense rows -> every item's logit, from the code's mean (the dense reference)."""
        return self.decoder(self.encoder.layers(self.encoder.first(self.encode_input(x)))[0])


def recvae_reference(model: RecVAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """RecVAE's training loss from its definition on dense rows ``x`` (0: not rated), with
    the code's noise ``eps`` given and no dropout: -mean_u sum_i x_ui log softmax(W z_u + b)_i
    + mean_u gamma |x_u| (log q(z_u|x_u) - log p(z_u)), every density written out."""
    rated = (x != 0).to(x.dtype)
    counts = rated.sum(1)
    unit = rated / rated.norm(dim=1, keepdim=True).clamp(min=1e-12)
    mu, logvar = model.encoder(unit)
    old_mu, old_logvar = model.prior(unit)
    z = mu + eps * torch.exp(0.5 * logvar)
    log_q = (-0.5 * (LOG_2PI + logvar) - 0.5 * eps**2).sum(1)
    std = -0.5 * (LOG_2PI + z**2)
    old = -0.5 * (LOG_2PI + old_logvar + (z - old_mu) ** 2 / torch.exp(old_logvar))
    wide = -0.5 * (LOG_2PI + WIDE_LOGVAR + z**2 / math.exp(WIDE_LOGVAR))
    w = model.config["prior_weights"]
    log_p = torch.log(w[0] * std.exp() + w[1] * old.exp() + w[2] * wide.exp()).sum(1)
    logits = z @ model.decoder.weight.T + model.decoder.bias
    nll = -(rated * torch.log_softmax(logits, dim=1)).sum(1).mean()
    return nll + (model.config["gamma"] * counts * (log_q - log_p)).mean()
