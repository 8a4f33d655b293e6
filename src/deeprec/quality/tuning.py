"""Hyper-parameter search on a nested split, with Optuna (the ``tune`` extra).

The honest protocol: the ratings are split as the run would split them (outer split), and
the outer *training* ratings are split again with the same rule (inner split). Every trial
trains on the inner training part and is scored, every epoch, on the inner validation
part; the outer validation ratings are never read. TPE proposes the trials and a median
pruner stops those whose inner-validation curve falls behind. The study lives in an
SQLite file, so an interrupted or extended search resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deeprec.config import Config, ConfigError, toml_text
from deeprec.data import DataError, RatingMatrix, load, split
from deeprec.training import Trainer, fit

STUDY = "deeprec"
# The space TPE searches: each option's candidates (categorical) or [low, high] (log scale
# for the learning rate and weight decay), around what the seed recipe and the published
# autoencoders (AutoRec, DeepRecommender) use.
SPACE: dict[str, Any] = {
    "by": ("user", "item"),
    "layers": (1, 2, 3),
    "width": (128, 256, 512, 1024),
    "activation": ("sigmoid", "selu", "relu", "elu"),
    "residual": (False, True),
    "dropout": (0.0, 0.6),
    "input_dropout": (0.0, 0.5),
    "weight_decay": (1e-6, 1e-2),
    "lr": (1e-4, 3e-3),
    "batch_size": (32, 64, 128, 256),
}


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "python -m deeprec.tune needs Optuna: pip install 'deeprec[tune]'"
        ) from None
    return optuna


@dataclass
class NestedData:
    """The inner split of the outer training ratings, as a RatingMatrix per orientation."""

    train: Any  # the inner training ratings (a DataFrame)
    val: Any  # the inner validation ratings
    scale: tuple[float, float]
    n_outer_train: int
    n_outer_val: int
    _matrices: dict[str, RatingMatrix] | None = None

    def fingerprint(self) -> str:
        """sha256 over the inner ratings: identifies the data a study searches on."""
        h = hashlib.sha256()
        for frame in (self.train, self.val):
            for name in ("user", "item", "rating"):
                h.update(np.ascontiguousarray(frame[name].to_numpy()).tobytes())
        h.update(json.dumps(list(self.scale)).encode())
        return h.hexdigest()

    def matrix(self, by: str) -> RatingMatrix:
        self._matrices = self._matrices or {}
        if by not in self._matrices:
            self._matrices[by] = RatingMatrix.from_split(self.train, self.val, by, self.scale)
        return self._matrices[by]


def nested_data(base: Config, data_dir: str | None) -> NestedData:
    """Load ``base.data``, split it as ``base`` says, and split its training part again."""
    dataset = load(base.data, data_dir, base.scale_range())
    outer_train, outer_val = split(dataset.ratings, **base.split_options())
    n_outer_val = len(outer_val)
    del outer_val  # the outer validation ratings go no further
    inner_train, inner_val = split(outer_train, **base.split_options())
    if inner_val.empty:
        raise DataError(
            f"the inner {base.split} split of {base.data}'s training ratings leaves no "
            "validation rating; use more data or another --split/--quantile/--val-frac"
        )
    return NestedData(inner_train, inner_val, dataset.scale, len(outer_train), n_outer_val)


def suggest(trial, base: Config) -> Config:
    """The trial's configuration: the base with the searched options drawn by TPE."""
    s = SPACE
    layers = trial.suggest_categorical("layers", s["layers"])
    hidden = [trial.suggest_categorical(f"width_{i}", s["width"]) for i in range(layers)]
    return base.replace(
        by=trial.suggest_categorical("by", s["by"]),
        hidden=hidden,
        activation=trial.suggest_categorical("activation", s["activation"]),
        residual=trial.suggest_categorical("residual", s["residual"]),
        dropout=trial.suggest_float("dropout", *s["dropout"]),
        input_dropout=trial.suggest_float("input_dropout", *s["input_dropout"]),
        weight_decay=trial.suggest_float("weight_decay", *s["weight_decay"], log=True),
        lr=trial.suggest_float("lr", *s["lr"], log=True),
        batch_size=trial.suggest_categorical("batch_size", s["batch_size"]),
    )


def train_inner(
    config: Config, data: NestedData, epochs: int, report=None, label: str | None = None
) -> list[float]:
    """Train ``config`` on the inner training part for ``epochs``, as ``deeprec.train``
    trains (the one Trainer: --refeed, --max-batches and the rest apply); the inner
    validation RMSE after each epoch (``report(epoch, rmse)`` is called with each, and
    may raise to stop). label: the progress bar's name for the trial (None: no bar)."""
    curve: list[float] = []

    if config.objective != "mse":
        raise ConfigError("tune searches rating recipes (--objective mse)")

    def after_epoch(_trainer: Trainer, record: dict[str, Any]) -> None:
        curve.append(record["val_rmse"])
        if report is not None:
            report(record["epoch"], curve[-1])

    config = config.replace(epochs=epochs)
    trainer = Trainer.assemble(config, data.matrix(config.by), torch.device("cpu"))
    fit(trainer, [after_epoch], quiet=label is None, label=label or "")
    return curve


def study_identity(base: Config, data: NestedData) -> dict[str, Any]:
    """What a study folder studies: the data (name and fingerprint), how it is split, the
    search space and the base recipe the trials vary. A resume must match it."""
    fixed = {k: v for k, v in base.to_dict().items() if k not in ("data", "epochs")}
    return {
        "data": base.data,
        "data_fingerprint": data.fingerprint(),
        "split": {
            "split": base.split,
            "quantile": base.quantile,
            "val_frac": base.val_frac,
            "seed": base.seed,
        },
        "search_space": json.loads(json.dumps(SPACE)),
        "base": fixed,
    }


def check_identity(out: Path, identity: dict[str, Any]) -> None:
    """Record what a new study studies (out/study.json), or refuse to resume one that
    studies something else, naming each difference."""
    record = out / "study.json"
    if not (out / "study.db").exists():
        record.write_text(json.dumps(identity, indent=1))
        return
    try:
        saved = json.loads(record.read_text())
    except (OSError, ValueError):
        raise ConfigError(
            f"{out / 'study.db'}: a study without a readable record of what it studies "
            f"({record.name}); pick another --out"
        ) from None
    if not isinstance(saved, dict):
        saved = {}
    differ = [
        f"{key} ({_short(saved.get(key))} there, {_short(value)} now)"
        for key, value in identity.items()
        if saved.get(key) != value
    ]
    if differ:
        raise ConfigError(
            f"{out} holds a study of other data or settings: {'; '.join(differ)}. Resume it "
            "with its own --data/--split/--config, or pick another --out"
        )


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:28] + "..." + text[-28:]


def run_study(
    base: Config,
    data: NestedData,
    out: Path,
    trials: int,
    timeout: float | None,
    epochs: int,
    seed: int = 0,
    progress: bool = True,
) -> Any:
    """Run (or resume) the study in ``out/study.db`` for ``trials`` more trials; the study."""
    optuna = _optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out.mkdir(parents=True, exist_ok=True)
    check_identity(out, study_identity(base, data))
    try:
        study = optuna.create_study(
            study_name=STUDY,
            storage=f"sqlite:///{out / 'study.db'}",
            load_if_exists=True,
            direction="minimize",
            sampler=optuna.samplers.TPESampler(seed=seed + len_trials(out)),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2),
        )
    except _storage_errors() as exc:
        raise ConfigError(
            f"{out / 'study.db'}: not a readable study ({str(exc).splitlines()[0][:120]}); "
            "move it aside, or pick another --out"
        ) from None

    def objective(trial) -> float:
        config = suggest(trial, base)
        trial.set_user_attr("config", config.to_dict())
        best = [math.inf, 0]

        def report(epoch: int, rmse: float) -> None:
            if rmse < best[0]:
                best[:] = [rmse, epoch]
            trial.report(rmse, epoch)
            if trial.should_prune():
                trial.set_user_attr("best_epoch", best[1])
                raise optuna.TrialPruned()

        t = time.perf_counter()
        curve = train_inner(
            config, data, epochs, report, f"trial {trial.number} " if progress else None
        )
        trial.set_user_attr("best_epoch", best[1])
        trial.set_user_attr("curve", curve)
        trial.set_user_attr("seconds", time.perf_counter() - t)
        if not math.isfinite(best[0]):
            raise optuna.TrialPruned()  # diverged: nothing to compare
        return best[0]

    study.optimize(
        objective,
        n_trials=trials,
        timeout=timeout,
        catch=(ConfigError,),  # a diverged trial (TrainingDiverged) is a failed trial
        show_progress_bar=progress and sys.stderr.isatty(),  # as tqdm does by itself
    )
    return study


def _storage_errors() -> tuple[type[BaseException], ...]:
    """What optuna's SQLite storage raises on a damaged or foreign study.db."""
    import sqlite3

    import sqlalchemy.exc

    return (sqlalchemy.exc.SQLAlchemyError, sqlite3.DatabaseError)


def len_trials(out: Path) -> int:
    """Trials already in the study (a resumed study's sampler gets a fresh seed)."""
    db = out / "study.db"
    if not db.exists():
        return 0
    import optuna

    try:
        return len(optuna.load_study(study_name=STUDY, storage=f"sqlite:///{db}").trials)
    except KeyError:
        return 0


def best_config(study: Any, base: Config) -> Config:
    """The best trial's configuration, trained for its best inner epoch count."""
    try:
        trial = study.best_trial
    except ValueError:
        raise ConfigError("no trial finished; raise --trials or --timeout") from None
    config = Config.from_dict(trial.user_attrs["config"], "best trial")
    return config.replace(epochs=max(1, int(trial.user_attrs["best_epoch"])))


def write_results(study: Any, base: Config, data: NestedData, out: Path) -> Config:
    """results.json, results.md and best.toml in ``out``; the best config."""
    best = best_config(study, base)
    rows = []
    for t in study.trials:
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "inner_val_rmse": t.value,
                "best_epoch": t.user_attrs.get("best_epoch"),
                "seconds": t.user_attrs.get("seconds"),
                "params": t.params,
            }
        )
    doc = {
        "protocol": {
            "data": base.data,
            "split": base.split,
            "outer_train_ratings": data.n_outer_train,
            "outer_val_ratings_never_read": data.n_outer_val,
            "inner_train_ratings": len(data.train),
            "inner_val_ratings": len(data.val),
        },
        "best": {"trial": study.best_trial.number, "inner_val_rmse": study.best_value},
        "best_config": best.to_dict(),
        "trials": rows,
    }
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    header = (
        f"Best of {len(rows)} trials (deeprec.tune, TPE + median pruning) on the inner split of "
        f"{base.data}'s {base.split} training ratings:\ninner validation RMSE "
        f"{study.best_value:.4f} (trial {study.best_trial.number}). The reported validation "
        f"ratings were never read.\nTrain it: python -m deeprec.train --config {out / 'best.toml'}"
    )
    (out / "best.toml").write_text(toml_text(best, header))
    finished = [r for r in rows if r["inner_val_rmse"] is not None]
    finished.sort(key=lambda r: r["inner_val_rmse"])
    lines = [
        f"# Tuning {base.data} ({base.split})",
        "",
        f"Nested split: {data.n_outer_train} outer training ratings -> {len(data.train)} inner "
        f"training / {len(data.val)} inner validation; the {data.n_outer_val} outer "
        "validation ratings were never read.",
        "",
        f"Best: trial {study.best_trial.number}, inner validation RMSE **{study.best_value:.4f}** "
        f"at epoch {best.epochs}; config in `best.toml`.",
        "",
        "| trial | state | inner val RMSE | best epoch | s | params |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for r in finished + [r for r in rows if r["inner_val_rmse"] is None]:
        rmse = f"{r['inner_val_rmse']:.4f}" if r["inner_val_rmse"] is not None else "-"
        secs = f"{r['seconds']:.0f}" if r["seconds"] is not None else "-"
        params = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in sorted(r["params"].items())
        )
        lines.append(
            f"| {r['trial']} | {r['state']} | {rmse} | {r['best_epoch']} | {secs} | {params} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return best


__all__ = ["SPACE", "NestedData", "best_config", "nested_data", "run_study", "write_results"]
