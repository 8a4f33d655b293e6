"""Scorers for a saved model, whichever form it takes: a run folder (torch), an ONNX export
(onnxruntime, no torch) or a blend folder; and the ranking helpers that turn scores into
lists. What ``python -m deeprec.recommend`` stands on. torch is imported only for a run
folder or a blend.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from deeprec.errors import ConfigError
from deeprec.inference.ranking import Scorer, list_lines, user_position, write_all_users

__all__ = ["NewUser", "Scorer", "list_lines", "open_scorer", "user_position", "write_all_users"]

# A new user's (scores of every item, positions of their rated items) from {item: rating}.
NewUser = Callable[[dict[int, float]], tuple[np.ndarray, np.ndarray]]


def open_scorer(
    checkpoint: str | Path | None = None,
    onnx: str | Path | None = None,
    blend: str | Path | None = None,
    data_dir: str | None = None,
    device: str = "cpu",
) -> tuple[Scorer, NewUser | None]:
    """(the model as a ranking Scorer, its new-user fold-in or None for a blend), from the
    one of ``checkpoint`` (a run folder or model.pt), ``onnx`` (an export with its .npz
    sidecar) or ``blend`` (a folder saved by ``blend --save``) given."""
    if onnx is not None:
        from deeprec.inference.serving import OnnxScorer, ServingError

        try:
            scorer = OnnxScorer(Path(onnx))
        except ServingError as exc:
            raise ConfigError(str(exc)) from None

        def new_user(given: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
            try:
                return scorer.new_user(given)
            except ServingError as exc:
                raise ConfigError(str(exc)) from None

        return scorer, new_user
    from deeprec.inference import recommendation
    from deeprec.inference.trained import load_trained
    from deeprec.training.lifecycle import resolve_device

    where = resolve_device(device)
    if blend is not None:
        from deeprec.quality.blending import BlendScorer
        from deeprec.quality.topk_blend import TopkScorer

        folder = Path(blend)
        if (folder / "topk.json").exists():
            return TopkScorer(folder, data_dir, where), None
        return BlendScorer(folder, data_dir, where), None
    if checkpoint is None:
        raise ConfigError("open_scorer: give one of checkpoint, onnx or blend")
    trained = load_trained(checkpoint, data_dir, where)
    return recommendation.TrainedScorer(trained), lambda given: recommendation.new_user(
        trained, given
    )
