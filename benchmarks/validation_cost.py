"""What the checks inside every registered op cost, next to the op itself (CPU).

The hardening issue moved validation into the ops, so raw torch.ops.deeprec.* calls are
as safe as the wrappers. This measures, per shape: the CSR checks (structure + values),
the column-index check, and the fused ops they guard, forward and backward. Medians of
repeated runs in one process.

    python benchmarks/validation_cost.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_model, measure, rating_batch

from deeprec import csr
from deeprec.config import decide_path, load_preset
from deeprec.ops import column_index, masked_mse, sparse_output_mse
from deeprec.optim import build
from deeprec.run import build_model, prepare_data
from deeprec.training import flushed_denormals, run_epoch

SHAPES = {  # name: (B, N, density, H)
    "seed (128 x 9,559, 1.7%)": (128, 9559, 0.017, 512),
    "ML-32M batch (512 x 87,585, ~160/row)": (512, 87585, 160 / 87585, 512),
}


def main() -> None:
    print(f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| shape | CSR checks | index check | masked_mse fwd+bwd | sparse_output_mse fwd+bwd |")
    print("|---|---:|---:|---:|---:|")
    for name, shape in SHAPES.items():
        t = shape_costs(*shape)
        print(
            f"| {name} | {t['checks'] * 1e6:.0f} us | {t['index'] * 1e6:.0f} us | "
            f"{t['mse'] * 1e3:.3f} ms | {t['out'] * 1e3:.2f} ms |"
        )


def shape_costs(B: int, N: int, density: float, H: int) -> dict[str, float]:
    """Median seconds of the checks and of the ops they guard, at one batch shape."""
    output, (crow, col, val), _ = rating_batch(B, N, density)
    col = col.long()
    parts = csr.CSRParts(crow, col, val)
    idx = column_index(crow, col)

    def checks():
        csr.check_structure(crow, col, val, B)
        csr.check_values(parts, N)

    out = output.clone().requires_grad_()

    def loss_step():
        masked_mse(out, (crow, col, val), impl="fused").backward()

    h = torch.randn(B, H, requires_grad=True)
    W = torch.randn(N, H, requires_grad=True)
    b = torch.randn(N, requires_grad=True)

    def output_step():
        sparse_output_mse(h, W, b, (crow, col, val), index=idx, impl="fused").backward()

    t = {
        "checks": measure(checks, runs=31)["median"],
        "index": measure(lambda: csr.check_index(idx, parts, N), runs=31)["median"],
        "mse": measure(loss_step, runs=21)["median"],
        "out": measure(output_step, runs=11)["median"],
    }
    return t


if __name__ == "__main__":
    main()


def epoch_cost(batch_size: int = 128) -> tuple[float, float]:
    """(seconds with every check, seconds with the value checks patched out) for one seed
    epoch on the fused sparse path (ml-latest-small; needs the data)."""
    from unittest import mock

    config = load_preset("seed").replace(fused=True)
    path = decide_path(config, torch.device("cpu"))
    _, matrix = prepare_data(config, None)
    torch.manual_seed(0)
    model = build_model(config, matrix.n_cols)
    opt = build("adam", model, 1e-3, 0.0, path.sparse_grad)
    batches = list(matrix.batches(batch_size))

    def epoch():
        run_epoch(model, opt, batches, path)

    with flushed_denormals():
        full = measure(epoch, runs=7, warmup=1)["median"]
        noop = lambda *a, **k: None  # noqa: E731
        with (
            mock.patch.object(csr, "check_values", noop),
            mock.patch.object(csr, "check_index", noop),
            mock.patch.object(csr, "check_grouping", noop),
        ):
            bare = measure(epoch, runs=7, warmup=1)["median"]
    return full, bare


if __name__ == "__main__" and "--epoch" in sys.argv:
    full, bare = epoch_cost()
    print(
        f"\nseed epoch, batch 128, --fused: {full * 1e3:.0f} ms with checks, "
        f"{bare * 1e3:.0f} ms without value checks ({(full / bare - 1) * 100:.1f}%)"
    )
