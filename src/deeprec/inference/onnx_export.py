"""Export a trained model as an ONNX dense scorer plus the sidecar deeprec.inference.serving reads.

The graph is the AutoEncoder in eval mode, traced by torch.onnx's exporter with a dynamic
batch dimension. Both files are written under temporary names; onnxruntime scores real
training rows and must agree with the torch model (float32, within 1e-4 relative); only
then are both renamed into place, so a failure at any point leaves a previous export whole.
The sidecar records the sha256 of the model it belongs to, and serving refuses a pair that
does not match. Only user-based models are exported: an item-based one has no input row for
a user, so it could not serve one.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch

from deeprec import __version__
from deeprec.digest import file_sha256
from deeprec.errors import DeeprecError
from deeprec.inference.serving import SIDECAR_FORMAT, sidecar_path
from deeprec.training.assembly import ModelOnData


class ExportError(DeeprecError):
    """The model could not be exported, or the export disagrees with the torch model."""


def export_onnx(run: ModelOnData, out: Path, check_rows: int = 64) -> dict[str, float]:
    """Write ``out`` (ONNX) and ``out``.npz (sidecar); returns the verification figures."""
    if not run.matrix.rows_are_users:
        raise ExportError(
            "an item-based model (--by item) has no input row for a user, so an export could "
            "not serve one; export a user-based model, or recommend with --checkpoint"
        )
    if run.config.objective != "mse":
        raise ExportError(
            "the ONNX scorer serves rating models (--objective mse); recommend with a ranking "
            "model through --checkpoint"
        )
    try:
        import onnxruntime  # noqa: F401 - checked before the slow export
    except ImportError:
        raise ExportError(
            "--format onnx needs onnx and onnxruntime: pip install 'deeprec[onnx]'"
        ) from None
    model = copy.deepcopy(run.model).cpu().eval()
    n_check = min(check_rows, run.inputs.n_rows)
    example = run.inputs.batch(np.arange(n_check), "cpu").dense()
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp_model = out.with_name(tag + ".onnx")
    tmp_side = sidecar_path(tmp_model)
    try:
        _export(model, example, tmp_model)
        _write_sidecar(run, tmp_side, file_sha256(tmp_model))
        check = _verify(model, tmp_model, example)
        # both verified: the sidecar first, so a crash between the renames leaves a pair
        # that serving refuses (hash mismatch), never a silently mismatched one
        tmp_side.replace(sidecar_path(out))
        tmp_model.replace(out)
        return check
    finally:
        tmp_model.unlink(missing_ok=True)
        tmp_side.unlink(missing_ok=True)


def _export(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    quiet = logging.getLogger("torch.onnx")  # it logs about optional torchvision ops
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=["ratings"],
                output_names=["scores"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                verbose=False,
            )
            program.save(str(path))
    except Exception as exc:  # the exporter raises many types; all mean "not exported"
        raise ExportError(f"torch.onnx.export failed: {str(exc).splitlines()[0]}") from None
    finally:
        quiet.setLevel(level)


def _write_sidecar(run: ModelOnData, path: Path, model_sha256: str) -> None:
    matrix = run.matrix
    items = matrix.item_ids()
    titles = [run.titles.get(int(i), "") for i in items]
    meta = {
        "format": SIDECAR_FORMAT,
        "deeprec": __version__,
        "dataset": run.config.data,
        "by": matrix.by,
        "scale": list(matrix.scale),
        "residual": run.offsets is not None,
        "n_rows": matrix.n_rows,
        "n_cols": matrix.n_cols,
        "input": "ratings: float32 (batch, n_cols)",
        "output": "scores: float32 (batch, n_cols)",
        "config": run.config.to_dict(),
        "model_sha256": model_sha256,
    }
    arrays = {
        "meta": np.array(json.dumps(meta)),
        "row_ids": np.asarray(matrix.row_ids, dtype=np.int64),
        "col_ids": np.asarray(matrix.col_ids, dtype=np.int64),
        "indptr": matrix.train.indptr.astype(np.int64),
        "indices": matrix.train.indices.astype(np.int64),
        "data": matrix.train.data.astype(np.float32),
        "title_ids": np.asarray(items, dtype=np.int64),
        "titles": np.array(titles, dtype=np.str_),
    }
    if run.offsets is not None:
        arrays |= {
            "mu": np.array(run.offsets.mu),
            "row_bias": run.offsets.rows,
            "col_bias": run.offsets.cols,
        }
    np.savez_compressed(path, **arrays)


def _verify(model: torch.nn.Module, out: Path, example: torch.Tensor) -> dict[str, float]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = model(example).numpy()
    got = session.run(["scores"], {"ratings": example.numpy()})[0]
    if got.shape != want.shape:
        raise ExportError(f"onnxruntime gives shape {got.shape}, torch {want.shape}")
    diff = float(np.abs(got - want).max()) if want.size else 0.0
    size = float(np.abs(want).max()) if want.size else 0.0
    if not diff <= 1e-4 * max(1.0, size):
        raise ExportError(f"onnxruntime disagrees with torch: max |diff| {diff:.3g}")
    # and a different batch size (the dynamic dimension) gives the same rows
    one = session.run(["scores"], {"ratings": example[:1].numpy()})[0]
    if not np.allclose(one, got[:1], rtol=1e-5, atol=1e-5 * max(1.0, size)):
        raise ExportError("onnxruntime gives different rows for batch size 1")
    return {"rows_checked": float(len(example)), "max_abs_diff": diff}
