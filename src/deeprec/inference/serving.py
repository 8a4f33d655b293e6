"""Serving an exported model without torch: onnxruntime, numpy and the export's sidecar.

``python -m deeprec.export`` writes ``model.onnx`` (the dense scorer) and ``model.onnx.npz``
(the sidecar). The ONNX graph maps a batch of rating rows to predicted rows:

- input ``ratings``: float32 (batch, n_cols), a row's known ratings at their columns and
  0 elsewhere (with a residual model: ratings minus mu + row bias + column bias);
- output ``scores``: float32 (batch, n_cols), the model's output (with a residual model:
  add mu + row bias + column bias back).

The sidecar holds what turns ids into columns and scores into ratings: ``meta`` (JSON:
format, orientation, scale for clipping, residual or not, shapes), ``row_ids`` and
``col_ids`` (sorted ids: position = row/column), the training ratings as CSR
(``indptr``, ``indices``, ``data``: a known user's input row, and their items to exclude),
the residual offsets ``mu``, ``row_bias``, ``col_bias`` when the model learns residuals,
and the item titles (``title_ids``, ``titles``). This module reads both and is a
ranking.Scorer, so ``recommend --onnx`` ranks exactly as ``recommend --checkpoint`` does.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from deeprec.digest import file_sha256
from deeprec.errors import DeeprecError
from deeprec.inference.ranking import new_user_row
from deeprec.scoring.baseline import Biases

SIDECAR_FORMAT = 1


class ServingError(DeeprecError):
    """An unusable ONNX model or sidecar, or a request the model cannot answer."""


def sidecar_path(model: Path) -> Path:
    return model.with_name(model.name + ".npz")


def _check_sidecar(side: Path, meta: object, arrays: dict[str, np.ndarray]) -> None:
    """Every array the scorer indexes, consistent with the others: a damaged or edited
    sidecar is refused in one line instead of indexing out of bounds later."""

    def bad(what: str) -> ServingError:
        return ServingError(f"{side}: damaged sidecar ({what})")

    if not isinstance(meta, dict) or not {"format", "by", "scale", "residual"} <= set(meta):
        raise bad("meta lacks format/by/scale/residual")
    if meta.get("format") != SIDECAR_FORMAT:
        raise ServingError(f"{side}: sidecar format {meta.get('format')!r} is not supported")
    need = ["row_ids", "col_ids", "indptr", "indices", "data", "title_ids", "titles"]
    if meta["residual"]:
        need += ["mu", "row_bias", "col_bias"]
    missing = [k for k in need if k not in arrays]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    rows, cols = len(arrays["row_ids"]), len(arrays["col_ids"])
    indptr, indices = arrays["indptr"], arrays["indices"]
    if indptr.ndim != 1 or len(indptr) != rows + 1 or indptr[0] != 0:
        raise bad("indptr does not match row_ids")
    if (np.diff(indptr) < 0).any() or indptr[-1] != len(indices):
        raise bad("indptr and indices disagree")
    if len(arrays["data"]) != len(indices):
        raise bad("indices and data differ in length")
    if len(indices) and (indices.min() < 0 or indices.max() >= cols):
        raise bad("a column index is out of range")
    if len(arrays["title_ids"]) != len(arrays["titles"]):
        raise bad("title_ids and titles differ in length")
    scale = meta["scale"]
    if not (isinstance(scale, list) and len(scale) == 2 and scale[0] < scale[1]):
        raise bad(f"scale {scale!r}")
    if meta["residual"] and (len(arrays["row_bias"]) != rows or len(arrays["col_bias"]) != cols):
        raise bad("residual offsets do not match the ids")


class OnnxScorer:
    """An exported user-based model as a ranking.Scorer, scored by onnxruntime."""

    def __init__(self, model: str | Path, threads: int = 0) -> None:
        model = Path(model)
        try:
            import onnxruntime as ort
        except ImportError:
            raise ServingError("--onnx needs onnxruntime: pip install 'deeprec[onnx]'") from None
        side = sidecar_path(model)
        if not model.is_file():
            raise ServingError(f"{model}: no such ONNX model")
        if not side.is_file():
            raise ServingError(f"{side}: the export's sidecar is missing (export writes both)")
        try:
            with np.load(side, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            meta = json.loads(str(arrays.pop("meta")))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise ServingError(f"{side}: unreadable sidecar ({type(exc).__name__})") from None
        _check_sidecar(side, meta, arrays)
        recorded = meta.get("model_sha256")
        if not isinstance(recorded, str):
            raise ServingError(
                f"{side}: records no model hash (an export of an older deeprec); export the "
                "model again"
            )
        if recorded != file_sha256(model):
            raise ServingError(
                f"{side}: this sidecar belongs to another model than {model.name} (its recorded "
                "model hash does not match); export again to write a matching pair"
            )
        if meta["by"] != "user":
            raise ServingError(
                f"{model}: an item-based model (--by item) has no input row for a user; "
                "serve user-based models, or use --checkpoint"
            )
        self.meta = meta
        self.user_ids, self.item_ids = arrays["row_ids"], arrays["col_ids"]
        self.indptr, self.indices = arrays["indptr"], arrays["indices"]
        self.data = arrays["data"]
        self.scale = tuple(meta["scale"])
        self.titles = {
            int(i): str(t) for i, t in zip(arrays["title_ids"], arrays["titles"], strict=True)
        }
        self.offsets = (
            Biases(float(arrays["mu"]), arrays["row_bias"], arrays["col_bias"])
            if meta["residual"]
            else None
        )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(model), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ServingError(f"{model}: onnxruntime cannot load it ({exc})") from None
        shape = self.session.get_inputs()[0].shape
        if shape[-1] != len(self.item_ids):
            raise ServingError(
                f"{model}: takes {shape[-1]} columns, the sidecar has {len(self.item_ids)} items"
            )

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(["scores"], {"ratings": x.astype(np.float32)})[0]

    def rated(self, user: int) -> np.ndarray:
        return self.indices[self.indptr[user] : self.indptr[user + 1]]

    def score_users(self, users: np.ndarray) -> np.ndarray:
        x = np.zeros((len(users), len(self.item_ids)), dtype=np.float32)
        for row, u in enumerate(users):
            cols = self.rated(int(u))
            values = self.data[self.indptr[u] : self.indptr[u + 1]]
            if self.offsets is not None:
                values = (values - self.offsets.at(np.full(len(cols), u), cols)).astype(np.float32)
            x[row, cols] = values
        out = self._run(x).astype(np.float64)
        if self.offsets is not None:
            o = self.offsets
            out += o.mu + o.rows[np.asarray(users)][:, None] + o.cols[None, :]
        return out

    def new_user(self, given: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
        """(scores of every item, positions of the given items) for an unseen user."""
        try:
            pos, inputs, offset = new_user_row(self.item_ids, given, self.offsets)
        except ValueError as exc:
            raise ServingError(str(exc)) from None
        x = np.zeros((1, len(self.item_ids)), dtype=np.float32)
        x[0, pos] = inputs.astype(np.float32)
        return self._run(x)[0].astype(np.float64) + offset, pos
