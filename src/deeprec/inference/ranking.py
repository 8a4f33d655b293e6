"""Top-k lists from predicted scores, one user or every user, without torch.

Shared by the checkpoint path (deeprec.inference.recommendation) and the ONNX path
(deeprec.inference.serving), so both rank the same scores the same way: highest raw
score first (clipping to the scale first would tie everything above its top), ties
broken by the item's column, the user's training items excluded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm import tqdm

from deeprec.scoring.baseline import Biases, fold_in_row
from deeprec.top_items import top_rows


class Scorer(Protocol):
    """What a trained model offers for ranking, whichever runtime scores it."""

    user_ids: np.ndarray  # the training data's users, sorted
    item_ids: np.ndarray  # the model's items, sorted (the scores' columns)
    titles: dict[int, str]
    scale: tuple[float, float]

    def score_users(self, users: np.ndarray) -> np.ndarray:
        """(len(users), n_items) scores for user positions ``users``."""
        ...

    def rated(self, user: int) -> np.ndarray:
        """Item positions user position ``user`` rated in training."""
        ...


def user_position(scorer: Scorer, user_id: int) -> int:
    """The position of ``user_id`` among the training users, or ValueError."""
    users = scorer.user_ids
    u = int(np.searchsorted(users, user_id))
    if u >= len(users) or users[u] != user_id:
        raise ValueError(f"--user {user_id} is not in the training data ({len(users)} users)")
    return u


def new_user_row(
    item_ids: np.ndarray, given: dict[int, float], offsets: Biases | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(item positions of ``given``, the model's inputs there, the offset to add to every
    score) for a user the model never saw, folded in from ``given`` {item id: rating}.

    With residual offsets the user's bias is folded in from the given ratings and the
    inputs are the ratings minus mu + b_user + b_item, as the model was trained. A
    ValueError names item ids the model does not know."""
    pos = np.searchsorted(item_ids, list(given))
    unknown = [i for i, p in zip(given, pos, strict=True) if p >= len(item_ids) or item_ids[p] != i]
    if unknown:
        raise ValueError(f"--ratings: item ids not in the training data: {unknown[:10]}")
    values = np.array(list(given.values()), dtype=np.float64)
    offset = np.zeros(len(item_ids))
    if offsets is not None:
        b_user = fold_in_row(offsets, pos, values)
        offset = offsets.mu + b_user + offsets.cols
    return pos, values - offset[pos], offset


def list_lines(scorer: Scorer, items: np.ndarray, scores: np.ndarray) -> list[str]:
    """A top list as printed: rank, the predicted rating clipped to the scale and, where
    clipping hid it, the score that orders the list ("5.00 (5.83)"), title and item id."""
    lo, hi = scorer.scale
    lines = []
    for rank, ((item, shown, title), raw) in enumerate(
        zip(rows_of(scorer, items, scores), scores[items], strict=True), 1
    ):
        hidden = f" ({raw:.2f})" if not lo <= raw <= hi else ""
        lines.append(f"{rank:3d}. {shown:.2f}{hidden}  {title}  [{item}]")
    return lines


def rows_of(scorer: Scorer, items: np.ndarray, scores: np.ndarray) -> list[tuple[int, float, str]]:
    """(item id, score clipped to the scale, title) for item positions ``items``."""
    ids = scorer.item_ids[items]
    shown = np.clip(scores[items], *scorer.scale)
    return [
        (int(i), float(s), scorer.titles.get(int(i), f"item {i}"))
        for i, s in zip(ids, shown, strict=True)
    ]


def top_frame(
    scorer: Scorer, users: np.ndarray, k: int, exclude_seen: bool = True, unclipped: bool = False
) -> pd.DataFrame:
    """The top ``k`` items of user positions ``users`` (one batch: len(users) x catalogue
    scores), as rows user, rank, item, score (clipped to the scale), [unclipped (the score
    that orders the list),] title; the users' training items left out with ``exclude_seen``."""
    scores = scorer.score_users(users)
    rated = [np.unique(scorer.rated(int(u))) if exclude_seen else np.empty(0, np.int64)
             for u in users]  # fmt: skip
    exclude = sp.csr_matrix(
        (np.ones(sum(map(len, rated)), dtype=bool), np.concatenate([np.empty(0, np.int64), *rated]),
         np.cumsum([0, *map(len, rated)])),
        shape=scores.shape,
    )  # fmt: skip
    frames = []
    for row, (u, best) in enumerate(zip(users, top_rows(scores, exclude, k), strict=True)):
        frame = list_frame(scorer, best, scores[row], unclipped)
        frame.insert(0, "user", np.full(len(best), scorer.user_ids[u]))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def list_frame(
    scorer: Scorer, best: np.ndarray, scores: np.ndarray, unclipped: bool = False
) -> pd.DataFrame:
    """One top list, item positions ``best`` of a row of ``scores``, as rows rank, item,
    score (clipped to the scale), [unclipped (the score that orders the list),] title."""
    items = scorer.item_ids[best]
    columns = {
        "rank": np.arange(1, len(best) + 1),
        "item": items,
        "score": np.clip(scores[best], *scorer.scale),
    }
    if unclipped:
        columns["unclipped"] = scores[best]
    columns["title"] = [scorer.titles.get(int(i), "") for i in items]
    return pd.DataFrame(columns)


def write_all_users(
    scorer: Scorer,
    k: int,
    out: Path,
    batch_size: int = 512,
    progress: bool = True,
) -> tuple[int, float]:
    """Write every training user's top k unrated items to ``out`` (.csv or .parquet):
    columns user, rank, item, score, title with the dataset's ids, scores clipped to the
    scale. Users are scored ``batch_size`` at a time and each batch's rows written before
    the next is scored, so memory stays at one batch x catalog. Returns (users, users/s).
    """
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"--out {out}: use a .csv or .parquet file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    write = _csv_writer(tmp) if suffix == ".csv" else _parquet_writer(tmp)
    n_users = len(scorer.user_ids)
    start = time.perf_counter()
    try:
        with tqdm(total=n_users, unit="user", desc="recommending", disable=not progress) as bar:
            for s in range(0, n_users, batch_size):
                users = np.arange(s, min(s + batch_size, n_users))
                write(top_frame(scorer, users, k), final=False)
                bar.update(len(users))
        write(None, final=True)
        tmp.replace(out)  # a complete file or none: never a truncated list
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    return n_users, n_users / max(seconds, 1e-9)


def _csv_writer(path: Path) -> Callable[..., None]:
    f = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed by final=True
    first = [True]

    def write(frame: pd.DataFrame | None, final: bool) -> None:
        if frame is not None:
            frame.to_csv(f, header=first[0], index=False, float_format="%.4f")
            first[0] = False
        if final:
            f.close()

    return write


def _parquet_writer(path: Path) -> Callable[..., None]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    holder: list = []

    def write(frame: pd.DataFrame | None, final: bool) -> None:
        if frame is not None:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if not holder:
                holder.append(pq.ParquetWriter(path, table.schema))
            holder[0].write_table(table)
        if final and holder:
            holder[0].close()

    return write
