"""The typed training Config: every option's name, default, check and help in one place.

The command line (``python -m deeprec.train``), presets, checkpoints and metrics.json all
go through this class: argparse is built from its fields (``add_arguments``), a preset, a
config file (TOML) or a saved config is read by ``from_dict`` (unknown keys refused, missing
keys defaulted, so older checkpoints still load) and written by ``to_dict`` / ``toml_text``.
The defaults are the seed recipe; the shipped presets are TOML files in deeprec/presets.

It stands on the ground floor: its choice lists come from ``deeprec.choices``, so the
model, the optimizer and the training plan can all take a Config. How a Config trains on
a device is decided once, by ``deeprec.training.plan``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from deeprec.choices import (
    ACTIVATIONS,
    DATA_ON_DEVICE,
    LR_SCHEDULES,
    OBJECTIVES,
    OPTIMIZERS,
    ORIENTATIONS,
    PRECISIONS,
    SPLITS,
)
from deeprec.errors import ConfigError, read_bytes

# (low, high, low included, high included); None is unbounded. NaN fails every comparison.
Range = tuple[float | None, float | None, bool, bool]


def parse_hidden(text: str) -> list[int]:
    """'512,512,1024' -> [512, 512, 1024] (an argparse type)."""
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive integers, got {text!r}")
    return sizes


def parse_scale(text: str) -> list[float]:
    """'0.5,5' -> [0.5, 5.0] (an argparse type): a rating scale, low < high."""
    try:
        values = [float(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two numbers), got {text!r}") from None
    if len(values) != 2 or not all(map(math.isfinite, values)) or values[0] >= values[1]:
        raise argparse.ArgumentTypeError(f"expected LO,HI with LO < HI, got {text!r}")
    return values


def parse_prior_weights(text: str) -> list[float]:
    """'0.15,0.75,0.1' -> [0.15, 0.75, 0.1] (an argparse type): RecVAE's prior mixture."""
    try:
        weights = [float(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected S,P,W (three numbers), got {text!r}") from None
    problem = prior_weights_problem(weights)
    if problem:
        raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
    return weights


def prior_weights_problem(weights: Sequence[float]) -> str | None:
    """What is wrong with RecVAE's prior mixture weights, or None: three finite numbers
    >= 0 summing to 1 (a mixture's weights)."""
    if len(weights) != 3 or not all(map(math.isfinite, weights)) or min(weights) < 0:
        return "expected three numbers >= 0 (standard, posterior, wide)"
    if abs(sum(weights) - 1.0) > 1e-6:
        return f"the three weights must sum to 1 (they sum to {sum(weights):g})"
    return None


def _option(
    default: Any,
    help: str,
    group: str,
    *,
    choices: tuple[str, ...] | None = None,
    range: Range | None = None,
    switch: bool = False,
) -> Any:
    """A Config field with what argparse and the checks need in its metadata. switch: a
    flag that only turns the option on (``--fused``), with no ``--no-`` form."""
    meta = _meta(help, group, choices=choices, range=range, switch=switch)
    return field(default=default, metadata=meta)


def _meta(
    help: str,
    group: str,
    *,
    choices: tuple[str, ...] | None = None,
    range: Range | None = None,
    switch: bool = False,
    parse: Callable[[str], Any] | None = None,
    show: Callable[[Any], str] | None = None,
) -> dict[str, Any]:
    """parse: the flag's argparse type where it is not the field's own; show: how --help
    writes the default."""
    return {"help": help, "group": group, "choices": choices, "range": range,
            "switch": switch, "parse": parse, "show": show}  # fmt: skip


# The options a workflow (tune, the blends) shares with every model it trains: the data,
# its split, the seed and the path. The rest is each model's own recipe.
SHARED = ("data", "scale", "split", "quantile", "val_frac", "seed", "fused")


@dataclass
class Config:
    """One training recipe. Field defaults: the seed recipe (``--preset seed``)."""

    data: str = _option(
        "ml-latest-small",
        "dataset name (ml-latest-small, ml-100k, ml-1m, ml-20m, ...) or a path to a "
        "ratings folder/CSV",
        "data",
    )
    scale: list[float] = field(
        default_factory=list,
        metadata=_meta(
            "rating scale LO,HI (e.g. 0.5,5) of a ratings file that does not state one (a "
            "bare CSV); a rating outside it is refused. Unset: the dataset's own scale, or a "
            "bare file's range, refused where a rare far value would widen it",
            "data",
            parse=parse_scale,
            show=lambda s: ",".join(f"{v:g}" for v in s) or "the dataset's",
        ),
    )
    split: str = _option("global-time", "train/validation split", "data", choices=SPLITS)
    quantile: float = _option(
        0.98, "global-time: timestamp quantile", "data", range=(0, 1, False, False)
    )
    val_frac: float = _option(
        0.2, "user-time/random: validation fraction", "data", range=(0, 1, False, False)
    )
    by: str = _option(
        "user", "rows are users (U-AutoRec) or items (I-AutoRec)", "data", choices=ORIENTATIONS
    )
    data_on_device: str = _option(
        "auto",
        "keep the training ratings on --device and gather each batch there, with no "
        "per-step host-to-device copy (auto: yes on CUDA)",
        "data",
        choices=DATA_ON_DEVICE,
    )
    hidden: list[int] = field(
        default_factory=lambda: [512, 512, 1024],
        metadata=_meta(
            "encoder sizes, e.g. 512,512,1024",
            "model",
            parse=parse_hidden,
            show=lambda sizes: ",".join(map(str, sizes)),
        ),
    )
    activation: str = _option("relu", "hidden activation", "model", choices=ACTIVATIONS)
    last_activation: str = _option("none", "output activation", "model", choices=ACTIVATIONS)
    dropout: float = _option(0.0, "dropout on the code layer", "model", range=(0, 1, True, False))
    input_dropout: float = _option(
        0.0,
        "dropout on the input ratings while training (denoising)",
        "model",
        range=(0, 1, True, False),
    )
    objective: str = _option(
        "mse",
        "what the model learns: mse (the ratings, masked MSE at the stored ones) or "
        "multinomial (Mult-DAE: which items a user rated, a softmax over every item; for "
        "top-k lists, needs --by user and a linear output)",
        "model",
        choices=OBJECTIVES,
    )
    variational: bool = _option(
        False,
        "Mult-VAE (Liang et al. 2018): the code layer is a Gaussian latent of the last "
        "--hidden width, sampled while training, and the loss adds beta x its KL term "
        "(see --beta-cap, --anneal-steps); needs --objective multinomial",
        "model",
    )
    recvae: bool = _option(
        False,
        "RecVAE (Shenbin et al. 2020): --hidden W,K is a densely connected encoder of "
        "--recvae-depth swish + layer-norm layers of width W and a Gaussian code of width K, "
        "decoded by one linear layer; a composite prior, a KL weight of --gamma x the user's "
        "item count, and --encoder-passes encoder passes per decoder pass each epoch; needs "
        "--objective multinomial",
        "model",
    )
    recvae_depth: int = _option(
        5, "--recvae: the encoder's layers", "model", range=(1, None, True, False)
    )
    gamma: float = _option(
        0.005,
        "--recvae: a user's KL weight is gamma x the number of items they rated",
        "optimization",
        range=(0, None, True, False),
    )
    prior_weights: list[float] = field(
        default_factory=lambda: [0.15, 0.75, 0.1],
        metadata=_meta(
            "--recvae: the composite prior's mixture weights S,P,W of N(0, I), the previous "
            "epoch's posterior and the wide N(0, e^10 I); three numbers >= 0 summing to 1 "
            "(the paper's 0.15,0.75,0.1; 1,0,0 is a standard-normal prior)",
            "model",
            parse=parse_prior_weights,
            show=lambda w: ",".join(f"{v:g}" for v in w),
        ),
    )
    encoder_passes: int = _option(
        3,
        "--recvae: passes over the users updating the encoder (with input dropout) before "
        "each pass updating the decoder; the two make one epoch",
        "optimization",
        range=(1, None, True, False),
    )
    liked_at: float = _option(
        0.0,
        "ranking models: learn from the items a user rated at least this (e.g. 4: what "
        "evaluate counts as relevant), input and target alike; 0: every rated item. "
        "Lists still leave out every rated item",
        "model",
        range=(0, None, True, False),
    )
    residual: bool = _option(
        False, "learn the residual over the regularized user+item bias baseline", "model"
    )
    tied: bool = _option(False, "decoder reuses the encoder's weights, transposed", "model")
    optimizer: str = _option(
        "adam",
        "sparse-adam: lazy Adam on the item matrices (only the batch's items move; needs "
        "--fused; different math)",
        "optimization",
        choices=OPTIMIZERS,
    )
    lr: float = _option(1e-3, "learning rate", "optimization", range=(0, None, False, False))
    lr_schedule: str = _option(
        "constant",
        "learning rate over the epochs: constant, or cosine annealing to 0",
        "optimization",
        choices=LR_SCHEDULES,
    )
    refeed: bool = _option(
        False,
        "dense re-feeding (Kuchaiev & Ginsburg 2017): after each step, feed the dense output "
        "back in and fit it too; needs the dense output, so it is slow",
        "optimization",
    )
    weight_decay: float = _option(
        0.0, "L2 weight decay", "optimization", range=(0, None, True, False)
    )
    epochs: int = _option(
        40,
        "total epochs (with --resume: continue up to this)",
        "optimization",
        range=(1, None, True, False),
    )
    batch_size: int = _option(
        32,
        "rows per batch (under torchrun: the global batch, split across the processes)",
        "optimization",
        range=(1, None, True, False),
    )
    max_batches: int = _option(
        0,
        "stop each epoch after this many batches (smoke tests, benchmarks); 0: all",
        "optimization",
        range=(0, None, True, False),
    )
    loss_every: int = _option(
        0,
        "read the training loss back from the device every N steps (and at each epoch's "
        "end); 0: about once a second. Between reads a GPU step never waits for the host",
        "optimization",
        range=(0, None, True, False),
    )
    beta_cap: float = _option(
        0.2,
        "--variational: the KL term's weight beta rises linearly from 0 and stays at this",
        "optimization",
        range=(0, None, True, False),
    )
    anneal_steps: int = _option(
        200_000,
        "--variational: updates over which beta rises from 0 to 1 (capped at --beta-cap); "
        "beta at update t is min(beta_cap, t / anneal_steps)",
        "optimization",
        range=(1, None, True, False),
    )
    seed: int = _option(
        0,
        "random seed (init, shuffling, dropout)",
        "optimization",
        range=(0, 2**63 - 1, True, True),
    )
    precision: str = _option(
        "fp32",
        "bf16: the forward pass under torch.autocast in bfloat16 (weights and Adam state stay "
        "float32; ~2x faster Mult-DAE steps on CPUs with AVX512_BF16 or AMX, refused on CPUs "
        "without them); tf32: float32 GEMMs on a GPU's TensorFloat-32 cores (CUDA only)",
        "optimization",
        choices=PRECISIONS,
    )
    fused: bool = _option(
        False,
        "use deeprec's fused native kernels: the sparse path (the masked-MSE kernel with a "
        "last activation); error if unavailable on --device",
        "optimization",
        switch=True,
    )

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> Config:
        """A checked Config from plain values (a preset, a checkpoint, a config file).

        Missing keys take their defaults (options added later); unknown keys and values of
        the wrong type are refused, naming ``source`` and the key.
        """
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise ConfigError(
                f"{source}: unknown option(s) {', '.join(unknown)} "
                f"(known: {', '.join(cls.names())})"
            )
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in values:
                kwargs[f.name] = _coerce(f, values[f.name], source)
        config = cls(**kwargs)
        config.check()
        return config

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (what checkpoints and metrics.json store)."""
        return dataclasses.asdict(self)

    def scale_range(self) -> tuple[float, float] | None:
        """--scale as (low, high), or None: the dataset's own (deeprec.data.load's scale)."""
        return (self.scale[0], self.scale[1]) if self.scale else None

    def split_options(self) -> dict[str, Any]:
        """How this recipe splits its ratings: deeprec.data.split's keyword arguments."""
        return {
            "how": self.split,
            "quantile": self.quantile,
            "val_frac": self.val_frac,
            "seed": self.seed,
        }

    def replace(self, **changes: Any) -> Config:
        """A checked copy with ``changes`` applied, each of its option's type (an unknown
        option or a value of the wrong type is a one-line ConfigError naming it)."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - set(fields))
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(unknown)} "
                              f"(known: {', '.join(fields)})")  # fmt: skip
        typed = {k: _coerce(fields[k], v, "option") for k, v in changes.items()}
        config = dataclasses.replace(self, **typed)
        config.check()
        return config

    # ------------------------------------------------------------------ checks
    def check(self) -> None:
        """Every option within its choices and range, or a one-line ConfigError."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            choices = f.metadata["choices"]
            if choices is not None and value not in choices:
                raise ConfigError(
                    f"{flag(f.name)} must be one of {', '.join(choices)}, got {value!r}"
                )
            if f.metadata["range"] is not None:
                check_range(f.name, value, f.metadata["range"])
        if self.scale and (
            len(self.scale) != 2
            or not all(map(math.isfinite, self.scale))
            or self.scale[0] >= self.scale[1]
        ):
            raise ConfigError(f"--scale must be LO,HI with LO < HI, got {self.scale}")
        problem = prior_weights_problem(self.prior_weights)
        if problem:
            raise ConfigError(f"--prior-weights: {problem}, got {self.prior_weights}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"--hidden: layer sizes must be positive integers, got {self.hidden}")
        if self.liked_at and self.objective != "multinomial":
            raise ConfigError("--liked-at (learning from liked items) needs --objective "
                              "multinomial; a rating model learns every rating")  # fmt: skip
        if self.recvae and (self.objective != "multinomial" or self.variational
                            or len(self.hidden) != 2 or self.tied):  # fmt: skip
            raise ConfigError(
                "--recvae needs --objective multinomial and --hidden WIDTH,CODE (two sizes); "
                "it is variational itself (no --variational) and not --tied"
            )
        if self.variational and self.objective != "multinomial":
            raise ConfigError("--variational (Mult-VAE) needs --objective multinomial")
        if self.variational and self.tied:
            raise ConfigError("--variational does not go with --tied (the encoder's last "
                              "layer gives a mean and a log-variance)")  # fmt: skip
        if self.objective == "multinomial":
            clash = [
                flag
                for flag, bad in (
                    ("--by item", self.by != "user"),
                    (f"--last-activation {self.last_activation}", self.last_activation != "none"),
                    ("--residual", self.residual),
                    ("--refeed", self.refeed),
                    ("--optimizer sparse-adam", self.optimizer == "sparse-adam"),
                )
                if bad
            ]
            if clash:
                raise ConfigError(
                    f"--objective multinomial (a softmax over a user's items) does not go with "
                    f"{', '.join(clash)}"
                )

    # ------------------------------------------------------------------ argparse
    @classmethod
    def add_arguments(
        cls, parser: argparse.ArgumentParser, only: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """One flag per field (or per field named in ``only``), grouped, with the default in
        its help; returns the groups by name. Every flag defaults to None, so ``overrides``
        can tell given flags from absent ones."""
        groups: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if only is not None and f.name not in only:
                continue
            meta = f.metadata
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_argument_group(meta["group"])
            shown = f.default_factory() if f.default is dataclasses.MISSING else f.default
            if meta["show"] is not None:
                shown = meta["show"](shown)
            elif isinstance(shown, bool):
                shown = "yes" if shown else "no"
            kwargs: dict[str, Any] = {"default": None, "help": f"{meta['help']} [{shown}]"}
            if meta["switch"]:
                kwargs["action"] = "store_true"
            elif f.type in ("bool", bool):
                kwargs["action"] = argparse.BooleanOptionalAction
            elif meta["parse"] is not None:
                kwargs["type"] = meta["parse"]
            else:
                kwargs["type"] = {"int": int, "float": float}.get(f.type, str)
                if meta["choices"] is not None:
                    kwargs["choices"] = meta["choices"]
            groups[meta["group"]].add_argument(flag(f.name), **kwargs)
        return groups

    @classmethod
    def overrides(cls, args: argparse.Namespace) -> dict[str, Any]:
        """The options given on the command line (those not None)."""
        return {n: getattr(args, n) for n in cls.names() if getattr(args, n, None) is not None}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _coerce(f: dataclasses.Field, value: Any, source: str) -> Any:
    """value as field f's type; ConfigError naming the key otherwise (bools are not ints)."""
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    ok = {
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "list[int]": isinstance(value, (list, tuple))
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value),
        "list[float]": isinstance(value, (list, tuple))
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value),
    }[kind]
    if not ok:
        raise ConfigError(f"{source}: {f.name} must be {kind}, got {value!r}")
    if kind == "float":
        return float(value)
    if kind == "list[int]":
        return list(value)
    if kind == "list[float]":
        return [float(v) for v in value]
    return value


def check_range(name: str, value: float, bounds: Range) -> None:
    """One numeric option inside its range (and finite), or a one-line ConfigError."""
    lo, hi, lo_in, hi_in = bounds
    ok = math.isfinite(value)
    if lo is not None:
        ok = ok and (value >= lo if lo_in else value > lo)
    if hi is not None:
        ok = ok and (value <= hi if hi_in else value < hi)
    if not ok:  # every range has a lower bound; e.g. "in [0, 1)" or ">= 1"
        if hi is None:
            wanted = f">{'=' if lo_in else ''} {lo}"
        else:
            wanted = f"in {'[' if lo_in else '('}{lo}, {hi}{']' if hi_in else ')'}"
        raise ConfigError(f"{flag(name)} must be {wanted}, got {value}")


# ---------------------------------------------------------------------- config files
def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's table, or a ConfigError naming the file (missing, unreadable, bad TOML)."""
    raw = read_bytes(path, ConfigError, f"--config {path}")
    try:
        return tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc})") from None


def load_config_file(path: str | Path) -> Config:
    """A config file (TOML, any subset of the train options) as a checked Config: keys
    it leaves out take the defaults (the seed recipe). Unknown keys and bad values are
    one-line ConfigErrors naming the file and the key."""
    return Config.from_dict(read_toml(path), str(path))


def toml_text(config: Config, header: str = "") -> str:
    """The config as TOML that load_config_file reads back to an equal Config.

    The values are strings, booleans, numbers and lists of numbers, so each is written
    as its TOML literal (json.dumps escapes strings as TOML basic strings want; repr keeps
    every float's digits)."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += [""] if lines else []
    for name, value in config.to_dict().items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = json.dumps(value, ensure_ascii=False)
        elif isinstance(value, list):
            text = "[" + ", ".join(repr(v) for v in value) + "]"
        else:
            text = repr(value)
        lines.append(f"{name} = {text}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- presets
def presets() -> list[str]:
    """Names of the recipes shipped in deeprec/presets/*.toml."""
    return sorted(
        p.name.removesuffix(".toml")
        for p in resources.files("deeprec.presets").iterdir()
        if p.name.endswith(".toml")
    )


def load_preset(name: str) -> Config:
    """A shipped recipe as a Config (its keys over the defaults)."""
    path = resources.files("deeprec.presets") / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"--preset {name!r} does not exist (choose from {', '.join(presets())})")
    with resources.as_file(path) as file:
        return Config.from_dict(read_toml(file), f"preset {name}")
