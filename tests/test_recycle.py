"""ops/recycle.py hands a large block out again only when nothing outside the pool can reach
its memory."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from deeprec.ops import recycle

pytestmark = pytest.mark.skipif(recycle._use_count is None, reason="no use-count query")
ROWS, COLS = 2048, 1024  # 8 MiB of float32: above the pool's threshold


@pytest.fixture(autouse=True)
def empty_pool():
    recycle._pool.clear()
    yield
    recycle._pool.clear()


def block() -> torch.Tensor:
    return recycle.empty(ROWS, COLS, torch.float32, torch.device("cpu"))


def same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def test_a_dropped_block_is_reused():
    first = block()
    address = first.data_ptr()
    del first
    gc.collect()
    assert block().data_ptr() == address


@pytest.mark.parametrize(
    "keep",
    [
        lambda t: t,  # the tensor itself
        lambda t: t[3:5],  # a view
        lambda t: t.untyped_storage(),  # its storage, which torch hands out as one object
        lambda t: t[7].untyped_storage(),  # the same, through a view since dropped
        lambda t: t.numpy(),  # a NumPy array over it
        lambda t: torch.sparse_coo_tensor(torch.tensor([[0, 1]]), t[:2], (ROWS, COLS)),
    ],
)
def test_a_block_anything_still_reaches_is_not_reused(keep):
    first = block()
    first.fill_(1.0)
    kept = keep(first)
    del first
    gc.collect()
    second = block()
    second.fill_(2.0)
    if isinstance(kept, torch.UntypedStorage):
        assert kept.data_ptr() != second.untyped_storage().data_ptr()
        assert torch.tensor([], dtype=torch.float32).set_(kept)[:4].eq(1.0).all()
    elif isinstance(kept, np.ndarray):
        assert (kept == 1.0).all()
    elif kept.is_sparse:
        assert (kept._values() == 1.0).all()
    else:
        assert not same_memory(kept, second) and (kept == 1.0).all()


def test_small_blocks_are_plain_allocations():
    small = recycle.empty(4, 4, torch.float32, torch.device("cpu"))
    assert small.shape == (4, 4) and not recycle._pool


def test_the_pool_forgets_its_smallest_idle_block_among_blocks_of_other_sizes():
    # more live blocks than the pool keeps, each a different size, then one more once the
    # smallest is idle: the pool drops that one (comparing blocks by identity, not by value)
    held = [recycle.empty(ROWS + 64 * k, COLS, torch.float32, torch.device("cpu"))
            for k in range(recycle.KEEP, 0, -1)]  # fmt: skip
    smallest = held.pop()
    del smallest
    gc.collect()
    bigger = recycle.empty(2 * ROWS, COLS, torch.float32, torch.device("cpu"))
    pool = recycle._pool[torch.float32]
    assert len(pool) == recycle.KEEP
    assert min(b.numel() for b in pool) == (ROWS + 64 * 2) * COLS
    assert any(b.data_ptr() == bigger.data_ptr() for b in pool)


def test_release_forgets_idle_blocks_and_keeps_held_ones():
    held = block()
    idle = block()
    address = idle.data_ptr()
    del idle
    gc.collect()
    recycle.release()
    pool = recycle._pool[torch.float32]
    assert [b.data_ptr() for b in pool] == [held.data_ptr()]  # the idle block is gone
    assert address not in [b.data_ptr() for b in pool]
    assert not same_memory(block(), held)  # the held block is never handed out
