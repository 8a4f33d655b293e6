"""The error word: how a refused index travels from where it is found to a one-line error.

The native kernels check every index they read (csrc/checks.h), and the torch-op paths
check theirs with torch ops on the batch's device (ops/device_checks.py). Either records
the first refusal in an error word, five int64 (check, tag, position, value, bound). On the
CPU it is raised at once. On a GPU the word stays in device memory, so checking costs no
host sync: ``read_checked`` reads it together with a value the host reads anyway (the
training loop's loss), and ``raise_kernel_errors`` reads it alone.

A GPU has one word per stream: kernels and checks write the word of the stream they run
on, and a read is made on that word's own stream, so it is ordered after every write.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# The words of a record: [0] the check (CHECKS), [1] the tag (TAGS), [2] position,
# [3] the value read there, [4] the bound or neighbour it broke.
WORDS = 5

# The check codes of csrc/checks.h, by name (deeprec._C.CHECKS must equal this table; a
# module built from other sources is refused as stale, ops/_native.py).
CHECKS = {
    "crow_start": 1,
    "crow_order": 2,
    "crow_end": 3,
    "col_range": 4,
    "col_order": 5,
    "uptr_order": 6,
    "ucol_range": 7,
    "ucol_order": 8,
    "perm_range": 9,
    "perm_order": 10,
    "perm_column": 11,
    "rows_range": 12,
    "rows_match": 13,
    "grad_row_range": 14,
    "grad_row_order": 15,
}

# The tag a launch or check records with a refused index: which op, what it calls the CSR
# batch it reads, and what gives that batch's columns their bound.
TAGS: tuple[tuple[str, str, str], ...] = (
    ("masked_mse", "target", "the output's columns"),
    ("masked_mse backward", "target", "the output's columns"),
    ("sparse_linear", "x", "the weight's rows"),
    ("sparse_linear backward", "x", "the weight's rows"),
    ("sparse_output_mse", "target", "the weight's rows"),
    ("sparse_output_mse backward", "target", "the weight's rows"),
    ("spmm_rows", "target", "the weight's rows"),
    ("col_accumulate", "target", "n_cols"),
    ("row_adam_step", "grad", "the param's rows"),
    ("multinomial_nll", "target", "the weight's rows"),
    ("multinomial_nll backward", "target", "the weight's rows"),
)
TAG = {op: i + 1 for i, (op, _, _) in enumerate(TAGS)}

# What each check means, as "<tensor>[<position>] = <value> <says>".
_SAYS = {
    "crow_start": ("crow", "must be 0 (offsets start at 0)"),
    "crow_order": (
        "crow",
        "breaks the offsets (they must be non-decreasing, from 0 to nnz = {bound})",
    ),
    "crow_end": ("crow", "must equal nnz = {bound} (the length of col and val)"),
    "col_range": ("col", "is outside [0, {bound}), {columns}"),
    "col_order": (
        "col",
        "is not strictly increasing after {bound} in its row (CSR rows must be sorted and "
        "free of duplicates: torch's coalesce(), scipy's sort_indices())",
    ),
    "uptr_order": (
        "index.uptr",
        "breaks the column offsets (they must be non-decreasing, from 0 to nnz = {bound})",
    ),
    "ucol_range": ("index.ucol", "is outside [0, {bound})"),
    "ucol_order": ("index.ucol", "is not strictly increasing after {bound}"),
    "perm_range": ("index.perm", "is outside [0, {bound})"),
    "perm_order": (
        "index.perm",
        "is not strictly increasing after {bound} (a column lists its entries once each, in "
        "row order)",
    ),
    "perm_column": (
        "index.perm",
        "is an entry outside column {bound} (an index of another batch?)",
    ),
    "rows_range": ("index.rows", "is outside [0, {bound})"),
    "rows_match": ("index.rows", "is not the row of that entry (an index of another batch?)"),
    "grad_row_range": ("rows", "is outside the parameter's rows [0, {bound})"),
    "grad_row_order": (
        "rows",
        "is not strictly increasing after {bound} (gradient rows must be sorted and unique)",
    ),
}
_NAMES = {code: name for name, code in CHECKS.items()}


def describe(words: list[int]) -> str:
    """The one-line message for an error word (check, tag, position, value, bound)."""
    check, tag, position, value, bound = words
    unknown = ("a deeprec kernel", "batch", "its columns")
    op, batch, columns = TAGS[tag - 1] if 1 <= tag <= len(TAGS) else unknown
    tensor, says = _SAYS.get(_NAMES.get(check, ""), ("index", "was refused (check {check})"))
    owner = batch if not tensor.startswith("index") else batch + " " + tensor.split(".")[0]
    part = tensor.removeprefix("index.")
    says = says.format(bound=bound, check=check, columns=columns)
    return f"deeprec {op}: {owner}: {part}[{position}] = {value} {says}"


# ------------------------------------------------------------------ where errors are raised
_defer_cpu = False


def deferred(device: torch.device) -> bool:
    """Whether a refusal on ``device`` waits in its word for the next read (a GPU) instead
    of being raised at once (the CPU; a worker in cpu_word(..., lent=True) leaves it to the
    thread it works for)."""
    return device.type != "cpu" or _defer_cpu or getattr(_local, "lent", False)


@contextmanager
def deferred_on_cpu() -> Iterator[None]:
    """Run the CPU with a GPU's error flow: refusals wait in the word until a read. For the
    tests that prove a training step reads nothing back (tests/test_host_reads.py)."""
    global _defer_cpu
    was, _defer_cpu = _defer_cpu, True
    try:
        yield
    finally:
        _defer_cpu = was


# ------------------------------------------------------------------ the words
_local = threading.local()
# A GPU's words, by (device, stream id): (the stream, its word).
_stream_words: dict[tuple[torch.device, int], tuple[torch.cuda.Stream, torch.Tensor]] = {}


def word(device: torch.device) -> torch.Tensor:
    """The zeroed error word that kernels and checks on ``device`` report into: one per host
    thread on the CPU (reset when raised), one per stream on a GPU (reset when read)."""
    if device.type == "cpu":
        w = getattr(_local, "word", None)
        if w is None:
            w = _local.word = torch.zeros(WORDS, dtype=torch.int64)
        return w
    device = _gpu(device)
    stream = torch.cuda.current_stream(device)
    key = (device, stream.cuda_stream)
    entry = _stream_words.get(key)
    if entry is None:
        entry = _stream_words[key] = (stream, torch.zeros(WORDS, dtype=torch.int64, device=device))
    return entry[1]


@contextmanager
def cpu_word(w: torch.Tensor, lent: bool = False) -> Iterator[None]:
    """This thread reports CPU refusals into ``w`` for the block: a worker that runs part of
    an op for another thread (ops/chunk_pool.py) reports into that thread's word. lent: it
    records them without raising, and the owner raises once its workers are done (two
    workers raising from one word would race for its one message)."""
    before = getattr(_local, "word", None), getattr(_local, "lent", False)
    _local.word, _local.lent = w, lent
    try:
        yield
    finally:
        _local.word, _local.lent = before


def raise_from(w: torch.Tensor, words: list[int] | None = None) -> None:
    """Raise the error ``w`` records (its values, if already read), resetting it."""
    words = w.tolist() if words is None else words
    if words[0]:
        w.zero_()
        raise ValueError(describe(words)) from None


def report(device: torch.device, op: str, problem: torch.Tensor) -> torch.Tensor:
    """Record ``problem`` (int64 check, position, value, bound; all zero for none: the form
    ops/device_checks.py finds) in ``device``'s word unless a refusal is recorded there
    already, with no host sync; raise it at once where refusals are not deferred. Returns
    whether there was none (a 0-dim bool on the device), for the caller's stand-ins."""
    w = word(device)
    tag = problem.new_full((1,), TAG[op])
    ok = problem[0] == 0
    new = torch.where(ok, 0, torch.cat([problem[:1], tag, problem[1:]]))
    w.copy_(torch.where(w[0] != 0, w, new))
    if not deferred(device):
        raise_from(w)
    return ok


def raise_kernel_errors(device: torch.device | str | None = None) -> None:
    """Raise the ValueError for an index a GPU kernel or check refused since the last read.

    One small device-to-host read per stream used (a sync): call it where the host waits
    for the GPU anyway. The training loop does at every loss read and at the end of each
    epoch and of validation. ``device``: one GPU, or None for every GPU used so far. The
    CPU raises at once; where it defers (``deferred_on_cpu``) this reads its word too.
    """
    if _defer_cpu and (device is None or torch.device(device).type == "cpu"):
        raise_from(word(torch.device("cpu")))
    _raise_words(None if device is None else _gpu(torch.device(device)))


def _raise_words(device: torch.device | None, skip: int | None = None) -> None:
    """Read and raise the words of ``device``'s streams (every GPU's for None), each on its
    own stream, so the read is ordered after that stream's writes; ``skip``: a stream id
    already read."""
    for (dev, stream_id), (stream, w) in list(_stream_words.items()):
        if (device is None or dev == device) and stream_id != skip:
            with torch.cuda.stream(stream):
                raise_from(w)


def read_checked(value: torch.Tensor) -> float:
    """A one-element tensor's value on the host, read in one transfer together with the
    error word of the stream it was computed on: one sync where there would be one anyway.
    Raises the ValueError for an index refused on that device since its words were read."""
    device = _gpu(value.device)
    if device is None and _defer_cpu:  # the CPU with a GPU's error flow
        raise_from(word(value.device))
    if device is None or not any(dev == device for dev, _ in _stream_words):
        return float(value)  # the CPU (raised at once), or a GPU nothing has checked on
    w = word(device)
    bits = value.detach().reshape(1).to(torch.float64).view(torch.int64)
    words = torch.cat([w, bits]).tolist()
    raise_from(w, words[:-1])
    _raise_words(device, skip=torch.cuda.current_stream(device).cuda_stream)
    return struct.unpack("<d", struct.pack("<q", words[-1]))[0]


def _gpu(device: torch.device) -> torch.device | None:
    """A GPU's key (its explicit index); None for the CPU."""
    if device.type == "cpu":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.device(device.type, index)
