"""A run folder: config.toml, metrics.json, model.pt (the checkpoint), loss.png and, for a
model fitted on ratings held in memory, data/ (those ratings, so the commands read them).

``RunFolder`` owns every file of a run, so what a run writes, and how (atomically), is in
one place; ``FolderSink`` is the sink that writes them after each epoch: the checkpoint
first, so an epoch a user sees reported is already on disk.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from deeprec import checkpoint, memory
from deeprec.config import Config, toml_text
from deeprec.training.assembly import Trainer


class RunFolder:
    """The files of one run, in ``path``."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @classmethod
    def of(cls, given: Path | str) -> RunFolder:
        """The run folder of a --resume argument: the folder, or the folder of its model.pt."""
        given = Path(given)
        return cls(given if given.is_dir() else given.parent)

    @property
    def checkpoint(self) -> Path:
        return self.path / "model.pt"

    @property
    def carried_data(self) -> Path:
        """data/: the ratings a run fitted on a DataFrame carries with it (read back by
        evaluate, recommend and export wherever the folder moves)."""
        return self.path / "data"

    def write_data(self, ratings: pd.DataFrame, titles: dict[int, str]) -> Path:
        """data/ratings.csv (user, item, rating[, timestamp][, validation] as validated:
        float32 ratings round-trip exactly) and data/movies.csv (item id, title) where
        there are titles; each file written atomically. Returns data/."""
        folder = self.carried_data
        text = ratings.assign(**{c: ratings[c].astype(int) for c in ("validation",)
                                 if c in ratings.columns}).to_csv(index=False)  # fmt: skip
        checkpoint.atomic_write(folder / "ratings.csv", lambda f: f.write(text.encode()))
        movies = folder / "movies.csv"
        if titles:
            table = pd.DataFrame({"movieId": list(titles), "title": list(titles.values())})
            names = table.to_csv(index=False)
            checkpoint.atomic_write(movies, lambda f: f.write(names.encode()))
        else:
            movies.unlink(missing_ok=True)
        return folder

    def holds_run(self) -> bool:
        return self.checkpoint.exists()

    def write_config(self, config: Config) -> None:
        """config.toml: the run's resolved configuration; ``train --config`` reproduces it."""
        text = toml_text(
            config,
            "deeprec run configuration (resolved: preset, config file and flags applied).\n"
            f"Reproduce with: python -m deeprec.train --config {self.path / 'config.toml'}",
        )
        self.path.mkdir(parents=True, exist_ok=True)
        checkpoint.atomic_write(self.path / "config.toml", lambda f: f.write(text.encode()))

    def write_metrics(self, doc: dict[str, Any]) -> None:
        """metrics.json (the layout the README documents), written atomically."""
        text = json.dumps(doc, indent=1)
        checkpoint.atomic_write(self.path / "metrics.json", lambda f: f.write(text.encode()))

    def save_checkpoint(self, payload: dict[str, Any]) -> None:
        checkpoint.save(self.checkpoint, payload)

    def load_checkpoint(self) -> dict[str, Any]:
        return checkpoint.load(self.checkpoint)

    def plot(self, history: list[dict[str, Any]]) -> None:
        """loss.png: train loss (log scale) and validation RMSE per epoch."""
        import matplotlib  # deferred: heavy, and only needed once at the end of a run

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [h["epoch"] for h in history]
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
        ax.plot(
            epochs, [h["train_loss"] for h in history], "o-", ms=3, label="train loss (masked MSE)"
        )
        ax.set_xlabel("epoch")
        ax.set_ylabel("train loss")
        ax.set_yscale("log")
        ax2 = ax.twinx()
        key, name = (
            ("val_rmse", "RMSE") if "val_rmse" in history[-1] else ("val_ndcg@10", "NDCG@10")
        )
        values = [h.get(key, float("nan")) for h in history]
        ax2.plot(epochs, values, "s-", ms=3, color="C1", label=f"val {name}")
        ax2.set_ylabel(f"validation {name}")
        fig.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        fig.savefig(self.path / "loss.png")
        plt.close(fig)


class FolderSink:
    """After each epoch: model.pt every ``save_every`` epochs and at the last, then
    metrics.json. ``payload(trainer)`` is the whole checkpoint; ``metrics(trainer,
    final)`` the metrics.json document. ``stop_note`` says what a stopped run left."""

    def __init__(
        self,
        folder: RunFolder,
        save_every: int,
        payload: Callable[[Trainer], dict[str, Any]],
        metrics: Callable[[Trainer, dict[str, float], dict[str, float]], dict[str, Any]],
        resume: str,
        saved_epoch: int | None = None,
    ) -> None:
        self.folder, self.save_every = folder, save_every
        self.payload, self.metrics, self.resume = payload, metrics, resume
        self.saved_epoch = saved_epoch  # the epoch model.pt holds
        self.last: dict[str, Any] = {}  # the last epoch's record handed here

    def __call__(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.last = record
        epoch = record["epoch"]
        if epoch == trainer.config.epochs or epoch % self.save_every == 0:
            self.folder.save_checkpoint(self.payload(trainer))
            self.saved_epoch = epoch
        self.flush(trainer)

    def flush(self, trainer: Trainer) -> None:
        """metrics.json with every finished epoch and the last record's validation metrics
        (after Ctrl-C: the write the interrupt may have cut)."""
        final = {k: v for k, v in self.last.items() if k.startswith("val_")}
        self.folder.write_metrics(self.metrics(trainer, final, memory.peak(trainer.device)))

    def stop_note(self, interrupted: bool) -> str:
        """What a stopped run left: the saved epoch and, after Ctrl-C, how to continue."""
        if self.saved_epoch is None:
            return f"no epoch was saved in {self.folder.path}"
        saved = f"epoch {self.saved_epoch} is saved in {self.folder.checkpoint}"
        return f"{saved}; continue with: {self.resume}" if interrupted else saved
