"""deeprec's public Python API, the floor the commands stand on.

``Recommender`` (fit, predict, recommend, recommend_new, evaluate, save, load, export) and
the Config with its presets; ``deeprec.api.workflows`` (tuning, the blends, strong
generalization) and ``deeprec.api.serving`` (scorers for saved models, ONNX exports and
blends) for the commands that run them. Names resolve on first use (PEP 562), so a command
that needs no torch (``recommend --onnx``) imports none through this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deeprec.api.datasets import load_ratings
    from deeprec.api.recommender import Recommender
    from deeprec.config import SHARED, Config, flag, load_config_file, load_preset, presets
    from deeprec.errors import CheckpointError, ConfigError, DataError, DeeprecError
    from deeprec.training.lifecycle import default_out, resolve_device, saved_config

# name -> the module that defines it
EXPORTS = {
    "Recommender": "deeprec.api.recommender",
    "load_ratings": "deeprec.api.datasets",
    "Config": "deeprec.config",
    "SHARED": "deeprec.config",
    "flag": "deeprec.config",
    "load_config_file": "deeprec.config",
    "load_preset": "deeprec.config",
    "presets": "deeprec.config",
    "DeeprecError": "deeprec.errors",
    "DataError": "deeprec.errors",
    "ConfigError": "deeprec.errors",
    "CheckpointError": "deeprec.errors",
    "resolve_device": "deeprec.training.lifecycle",
    "default_out": "deeprec.training.lifecycle",
    "saved_config": "deeprec.training.lifecycle",
}

__all__ = [
    "SHARED",
    "CheckpointError",
    "Config",
    "ConfigError",
    "DataError",
    "DeeprecError",
    "Recommender",
    "default_out",
    "flag",
    "load_config_file",
    "load_preset",
    "load_ratings",
    "presets",
    "resolve_device",
    "saved_config",
]


def __getattr__(name: str) -> Any:
    if name not in EXPORTS:
        raise AttributeError(f"module 'deeprec.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *EXPORTS})
