"""Integer ids -> dense positions, and membership tests, in O(n) where ids allow.

Rating sets number users and items with integers that are mostly dense (MovieLens and
Netflix ids stay below 3M), so a lookup table beats hashing or sorting 100M values; sparse
or huge ids take numpy's sort-based path.
"""

from __future__ import annotations

import numpy as np

_TABLE = 1 << 28  # ids below this use a lookup table (transient, at most 1.25 GiB)


def _small(values: np.ndarray) -> bool:
    if values.size == 0 or values.dtype.kind not in "iu":
        return False
    return bool(values.min() >= 0 and values.max() < _TABLE)


def ids_and_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct ids, int32 position of each value among them).

    Ids are usually dense-ish integers (MovieLens, Netflix: max id < 3M), so a lookup
    table does this in two O(n) passes; sparse or huge ids take np.unique's sort.
    """
    values = np.asarray(values)
    if _small(values):
        present = np.zeros(int(values.max()) + 1, dtype=bool)
        present[values] = True
        ids = np.flatnonzero(present).astype(values.dtype)
        table = np.full(len(present), -1, dtype=np.int32)
        table[ids] = np.arange(len(ids), dtype=np.int32)
        return ids, table[values]
    ids, codes = np.unique(values, return_inverse=True)
    return ids, codes.astype(np.int32)


def codes_of(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Position of each value among the sorted ``ids``, -1 where it is not one of them."""
    values = np.asarray(values)
    if values.size == 0 or ids.size == 0:
        return np.full(values.shape, -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(ids, values), len(ids) - 1)
    return np.where(ids[pos] == values, pos, -1).astype(np.int64)


def contained(values: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Boolean mask: which of ``values`` occur in ``pool`` (np.isin, in O(n) for small ids)."""
    values, pool = np.asarray(values), np.asarray(pool)
    if _small(values) and _small(pool):
        present = np.zeros(max(int(values.max()), int(pool.max())) + 1, dtype=bool)
        present[pool] = True
        return present[values]
    return np.isin(values, pool)
