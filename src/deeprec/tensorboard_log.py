"""Per-epoch TensorBoard logging for ``train --tensorboard DIR`` (the tensorboard extra).

Scalars per epoch: train/loss, val/rmse, val/mae, lr, seconds; the resolved config as text
at step 0. Written by torch.utils.tensorboard's SummaryWriter, which needs the
``tensorboard`` package: without it the flag is refused in one line saying what to install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deeprec.config import Config, ConfigError, toml_text


def require() -> None:
    """A one-line ConfigError now, before any data is loaded, if tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--tensorboard needs the tensorboard package: pip install 'deeprec[tensorboard]'"
        ) from None


class EpochLog:
    """A SummaryWriter for one run; call it with fit's per-epoch record."""

    def __init__(self, folder: str | Path, config: Config) -> None:
        require()
        from torch.utils.tensorboard import SummaryWriter

        try:
            self.writer = SummaryWriter(log_dir=str(folder))
            self.writer.add_text("config", "```toml\n" + toml_text(config) + "```", 0)
        except OSError as exc:
            raise ConfigError(f"--tensorboard {folder}: cannot write ({exc.strerror})") from None

    def __call__(self, _trainer: Any, record: dict[str, Any]) -> None:
        step = int(record["epoch"])
        self.writer.add_scalar("train/loss", record["train_loss"], step)
        self.writer.add_scalar("val/rmse", record["val_rmse"], step)
        self.writer.add_scalar("val/mae", record["val_mae"], step)
        self.writer.add_scalar("lr", record["lr"], step)
        self.writer.add_scalar("seconds", record["seconds"], step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
