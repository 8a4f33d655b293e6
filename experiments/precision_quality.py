"""Does bf16 training (``--precision bf16``) cost quality? Each recipe trained twice on the
same split and seed, float32 and bf16, and scored on the same validation users/ratings:

- Mult-DAE (``--preset topk``) and Mult-VAE (``--preset topk-vae``), ``--fused``, on the
  reported user-time split of ml-latest-small: NDCG@10 of each, and bf16's paired
  difference from float32 with a paired bootstrap 95% interval over users (evaluate's
  protocol: relevant = a validation rating >= 4);
- the seed recipe (``--preset seed --fused``) on its global-time split and on user-time, a
  few seeds each: validation RMSE, and float32's own spread over the seeds beside bf16's
  difference.

    python experiments/precision_quality.py [--data ml-latest-small] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from topk import matrices, ndcg, val_users

from deeprec import precision
from deeprec.config import load_preset
from deeprec.data import RatingMatrix, load, split
from deeprec.quality import topk_blend
from deeprec.scoring.metrics import paired_difference
from deeprec.training import Trainer, fit

PRECISIONS = ("fp32", "bf16")


def ranking(data: str, preset: str) -> list[str]:
    m = matrices(data, "user-time")["outer"][0]
    users = val_users(m)
    scores = {}
    for p in PRECISIONS:
        config = load_preset(preset).replace(data=data, fused=True, precision=p)
        t0 = time.perf_counter()
        scores[p] = topk_blend.member_scores(config, m, m, users, None)
        print(f"{preset} {p}: trained and scored in {time.perf_counter() - t0:.0f} s", flush=True)
    gain, (lo, hi) = paired_difference(scores["bf16"], scores["fp32"], users, m)
    a, b = (ndcg(scores[p], users, m) for p in PRECISIONS)
    return [f"| {preset} | NDCG@10 | {a:.4f} | {b:.4f} | {gain:+.4f} [{lo:+.4f}, {hi:+.4f}] |"]


def rating(data: str, seeds: int) -> list[str]:
    """The seed recipe on its global-time split (188 validation ratings at ml-latest-small)
    and on user-time (18,715): validation RMSE per seed, and bf16 minus float32 per seed."""
    rows = []
    for how in ("global-time", "user-time"):
        rmse: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for seed in range(seeds):
            for p in PRECISIONS:
                config = load_preset("seed").replace(data=data, split=how, seed=seed, fused=True,
                                                     precision=p)  # fmt: skip
                ds = load(data)
                train, val = split(ds.ratings, **config.split_options())
                m = RatingMatrix.from_split(train, val, config.by, ds.scale)
                trainer = Trainer.assemble(config, m, torch.device("cpu"))
                rmse[p].append(fit(trainer, quiet=True)["val_rmse"])
                print(f"seed recipe {how} seed {seed} {p}: {rmse[p][-1]:.4f}", flush=True)
        a, b = rmse["fp32"], rmse["bf16"]
        diffs = [y - x for x, y in zip(a, b, strict=True)]
        rows.append(
            f"| seed recipe, {how} | val RMSE, seeds 0-{seeds - 1} | "
            f"{' / '.join(f'{x:.4f}' for x in a)} | {' / '.join(f'{x:.4f}' for x in b)} | "
            f"{' / '.join(f'{d:+.4f}' for d in diffs)} (float32's own spread "
            f"{max(a) - min(a):.4f}) |"
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--data", default="ml-latest-small")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the rating recipe [3]")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if (why := precision.cpu_bf16_refusal()) is not None:
        p.error(f"bf16 is refused on this machine: {why}")
    rows = ranking(args.data, "topk") + ranking(args.data, "topk-vae")
    rows += rating(args.data, args.seeds)
    lines = [
        f"# float32 against bf16 training: quality on {args.data}",
        "",
        "`python experiments/precision_quality.py`: each recipe trained twice (same split, "
        "seed and batches), float32 and `--precision bf16`, `--fused`, on the CPU. Ranking: "
        "NDCG@10 on the reported user-time split, bf16 minus float32 with a paired bootstrap "
        "95% interval over users. Rating: validation RMSE per seed.",
        "",
        "| recipe | metric | float32 | bf16 | bf16 - float32 |",
        "|---|---|---:|---:|---:|",
        *rows,
        "",
    ]
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
