"""The model a Config names: the autoencoder (deeprec.model), or RecVAE (deeprec.recvae)."""

from __future__ import annotations

from deeprec.config import Config
from deeprec.model import AutoEncoder
from deeprec.recvae import RecVAE

Model = AutoEncoder | RecVAE


def build(config: Config, n_in: int) -> Model:
    """A fresh model of ``config`` for rows of ``n_in`` columns (torch's current seed)."""
    if config.recvae:
        return RecVAE.from_config(config, n_in)
    return AutoEncoder.from_config(config, n_in)
