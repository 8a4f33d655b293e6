"""Export a trained Run as an ONNX dense scorer plus the sidecar deeprec.serving reads.

The graph is the AutoEncoder in eval mode, traced by torch.onnx's exporter with a dynamic
batch dimension. Before anything is reported, onnxruntime scores real training rows and
must agree with the torch model (float32, within 1e-4 relative); a failed check removes
the files.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from deeprec import __version__
from deeprec.run import Run
from deeprec.serving import SIDECAR_FORMAT, ServingError, sidecar_path


class ExportError(ValueError):
    """The model could not be exported, or the export disagrees with the torch model."""


def export_onnx(run: Run, out: Path, check_rows: int = 64) -> dict[str, float]:
    """Write ``out`` (ONNX) and ``out``.npz (sidecar); returns the verification figures."""
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
            program.save(str(out))
    except Exception as exc:  # the exporter raises many types; all mean "not exported"
        raise ExportError(f"torch.onnx.export failed: {str(exc).splitlines()[0]}") from None
    finally:
        quiet.setLevel(level)
    _write_sidecar(run, sidecar_path(out))
    try:
        return _verify(model, out, example)
    except (ExportError, ServingError):
        out.unlink(missing_ok=True)
        sidecar_path(out).unlink(missing_ok=True)
        raise


def _write_sidecar(run: Run, path: Path) -> None:
    matrix = run.matrix
    items = matrix.item_ids()
    titles = [run.dataset.titles.get(int(i), "") for i in items]
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
    tmp = path.with_name(f".{path.name}.partial.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


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
