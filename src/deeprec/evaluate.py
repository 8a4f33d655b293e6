"""python -m deeprec.evaluate: a trained model against classical baselines, same split.

Rating accuracy: RMSE (with a bootstrap 95% interval over the validation ratings) and MAE
of the model, the global mean and the regularized user+item bias model (deeprec.baseline),
all clipped to the rating scale. Ranking: Precision@10, Recall@10 and NDCG@10 of each
user's top 10 unrated items, an item being relevant when the user rated it >= 4 in
validation, against ranking by popularity (training rating count).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deeprec import baseline, checkpoint, cli
from deeprec.data import Dataset, RatingMatrix
from deeprec.model import AutoEncoder
from deeprec.predict import predict_entries, rmse_mae, score_items


@dataclass
class Run:
    """A trained model with the data it was trained on, re-derived from its checkpoint."""

    model: AutoEncoder
    matrix: RatingMatrix  # the ratings
    inputs: RatingMatrix  # what the model reads (residuals with --residual)
    offsets: Any  # baseline.Biases added to the model's outputs, or None
    state: dict[str, Any]
    dataset: Dataset


def load_run(path: str, data_dir: str | None, device: torch.device) -> Run:
    """Load a checkpoint and re-derive its data, checked against the saved fingerprint."""
    from deeprec.train import CONFIG_DEFAULTS, build_model, model_inputs, prepare_data

    state = checkpoint.load(path)
    config = {**CONFIG_DEFAULTS, **state["config"]}
    dataset, matrix = prepare_data(config, data_dir or _saved_data_dir(state))
    if matrix.fingerprint() != state["data"]["fingerprint"]:
        raise checkpoint.CheckpointError(
            f"{path}: the data at {dataset.path} is not the data this model was trained on "
            "(fingerprint differs)"
        )
    model = build_model(config, matrix.n_cols)
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise checkpoint.CheckpointError(
            f"{path}: weights do not fit the model ({str(exc).splitlines()[0]})"
        ) from None
    inputs, offsets = model_inputs(config, matrix)
    return Run(model.to(device).eval(), matrix, inputs, offsets, state, dataset)


def _saved_data_dir(state: dict[str, Any]) -> str | None:
    """The folder above the dataset the run used, so a plain re-run finds it again."""
    saved = Path(state["data"]["path"])
    name = state["config"]["data"]
    return str(saved.parent) if saved.exists() and saved.name == Path(name).name else None


def bootstrap_rmse(
    pred: np.ndarray, truth: np.ndarray, reps: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of the RMSE over validation ratings resampled with replacement."""
    err2 = (np.asarray(pred, float) - np.asarray(truth, float)) ** 2
    if len(err2) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = np.empty(reps)
    for i in range(reps):
        stats[i] = np.sqrt(err2[rng.integers(0, len(err2), len(err2))].mean())
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def user_view(matrix: RatingMatrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validation as (user index, item index, rating) whatever the matrix orientation."""
    if matrix.by == "user":
        return matrix.val_rows, matrix.val_cols, matrix.val_ratings
    return matrix.val_cols, matrix.val_rows, matrix.val_ratings


def ranking_metrics(
    scores: np.ndarray,
    users: np.ndarray,
    matrix: RatingMatrix,
    k: int = 10,
    relevant_at: float = 4.0,
) -> dict[str, float]:
    """Mean Precision@k, Recall@k and NDCG@k over users with a relevant validation item.

    scores: (len(users), n_items); items a user rated in training are never recommended.
    """
    v_user, v_item, v_rating = user_view(matrix)
    train_by_user = matrix.train if matrix.by == "user" else matrix.train.T.tocsr()
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    precision, recall, ndcg = [], [], []
    for row, u in enumerate(users):
        relevant = set(v_item[(v_user == u) & (v_rating >= relevant_at)].tolist())
        if not relevant:
            continue
        s = scores[row].copy()
        s[train_by_user[u].indices] = -np.inf
        top = np.argpartition(-s, k)[:k] if len(s) > k else np.arange(len(s))
        top = top[np.argsort(-s[top], kind="stable")]
        hits = np.array([i in relevant for i in top], dtype=float)
        precision.append(hits.sum() / k)
        recall.append(hits.sum() / len(relevant))
        ideal = discounts[: min(len(relevant), k)].sum()
        ndcg.append((hits * discounts[: len(hits)]).sum() / ideal)
    if not precision:
        return {
            "precision@10": float("nan"),
            "recall@10": float("nan"),
            "ndcg@10": float("nan"),
            "users": 0,
        }
    return {
        "precision@10": float(np.mean(precision)),
        "recall@10": float(np.mean(recall)),
        "ndcg@10": float(np.mean(ndcg)),
        "users": len(precision),
    }


def evaluate(run: Run, device: torch.device | str = "cpu", ranking: bool = True) -> dict[str, dict]:
    """Accuracy (RMSE with 95% interval, MAE) and ranking metrics of the model and baselines."""
    m = run.matrix
    lo, hi = m.scale
    fitted = baseline.fit(m.train, m.by)
    preds = {
        "deeprec": predict_entries(
            run.model, run.inputs, m.val_rows, m.val_cols, device, offsets=run.offsets
        ),
        "global mean": np.full(len(m.val_rows), float(m.train.data.mean())),
        "user+item bias": fitted.at(m.val_rows, m.val_cols),
    }
    table: dict[str, dict] = {}
    for name, pred in preds.items():
        clipped = np.clip(pred, lo, hi)
        rmse, mae = rmse_mae(clipped, m.val_ratings)
        ci = bootstrap_rmse(clipped, m.val_ratings)
        table[name] = {"rmse": rmse, "rmse_ci95": ci, "mae": mae}
    if ranking:
        users = np.unique(user_view(m)[0])
        scores = score_items(run.model, run.inputs, users, device, offsets=run.offsets)
        table["deeprec"].update(ranking_metrics(scores, users, m))
        counts = np.bincount(
            m.train.indices if m.by == "user" else m.train.tocoo().row, minlength=m.n_items
        ).astype(float)
        popularity = np.broadcast_to(counts, (len(users), m.n_items))
        table["popularity"] = ranking_metrics(popularity, users, m)
    return table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m deeprec.evaluate",
        description="RMSE/MAE (with bootstrap 95%% intervals) and Precision/Recall/NDCG@10 of a "
        "trained model on its run's validation split, beside the global-mean, user+item-bias "
        "and popularity baselines on the same split.",
    )
    p.add_argument("--checkpoint", required=True, help="model.pt (or its run folder)")
    p.add_argument("--data-dir", help="where the run's dataset lives, if it moved")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--no-ranking", action="store_true", help="skip the ranking metrics")
    cli.add_debug(p)
    return p


def _fmt(x: object, spec: str = ".4f") -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def main(args: argparse.Namespace) -> int:
    from deeprec.train import resolve_device

    device = resolve_device(args.device)
    run = load_run(args.checkpoint, args.data_dir, device)
    table = evaluate(run, device, ranking=not args.no_ranking)
    c, m = run.state["config"], run.matrix
    print(
        f"{run.dataset.path} | split {c['split']} | by {c['by']} | "
        f"{len(m.val_ratings)} validation ratings | epoch {run.state['epoch']}"
    )
    print(
        f"{'model':<16} {'RMSE':>8} {'95% interval':>17} {'MAE':>8} {'P@10':>7} {'R@10':>7} "
        f"{'NDCG@10':>8}"
    )
    for name, row in table.items():
        ci = row.get("rmse_ci95")
        interval = f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "-"
        print(
            f"{name:<16} {_fmt(row.get('rmse')):>8} {interval:>17} {_fmt(row.get('mae')):>8} "
            f"{_fmt(row.get('precision@10')):>7} {_fmt(row.get('recall@10')):>7} "
            f"{_fmt(row.get('ndcg@10')):>8}"
        )
    if "users" in table.get("deeprec", {}):
        print(f"(ranking over {table['deeprec']['users']} users with a validation rating >= 4)")
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli_main())
