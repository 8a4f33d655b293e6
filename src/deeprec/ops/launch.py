"""How an op reaches native code: the impl choice, the checks shared by every op,
``launch``, the one place that picks the CPU or CUDA entry point of a kernel (ops/cpu.py
and ops/cuda.py add each device's arguments), and the kernels' error word.

Kept in one place so every op launches the same way: arguments by name, addresses of
contiguous tensors, dtype codes and dtype tables read from the compiled module.

The kernels check every index they read (csrc/checks.h) and record the first one they
refuse in an error word. On the CPU the launch raises at once. On CUDA the word stays in
device memory, so checking costs no host sync; ``raise_kernel_errors`` reads it, and the
training loop calls it where it reads the loss anyway.
"""

from __future__ import annotations

import struct
import threading
import warnings
from typing import Literal

import torch

from deeprec.csr import entry_rows
from deeprec.ops import _native, cpu, cuda

Impl = Literal["auto", "fused", "reference"]
# An impl already decided (by deeprec.training.plan), as the model and training receive it.
ChosenImpl = Literal["fused", "reference"]
_warned: set[tuple[str, str]] = set()


def fused_available(device: torch.device | str) -> bool:
    """True when the fused kernels are compiled and can run on ``device``."""
    return _native.unavailable_reason(device) is None


def choose_impl(t: torch.Tensor, impl: str, op: str, family: str) -> str:
    """Resolve impl to "fused" or "reference" for a tensor's device and dtype, or raise.

    "auto" falls back to the reference with one warning per (device type, reason).
    family: the kernel family whose dtype table applies (deeprec._C.KERNEL_DTYPES).
    """
    if impl == "reference":
        return "reference"
    if impl not in ("auto", "fused"):
        raise ValueError(f"impl must be 'auto', 'fused' or 'reference', got {impl!r}")
    reason = _native.unavailable_reason(t.device)
    supported = _native.kernel_dtypes(family, t.device.type)
    if reason is None and t.dtype not in supported:
        reason = (
            f"no fused kernel for {t.dtype} on {t.device.type} "
            f"(supported: {', '.join(str(d) for d in supported)})"
        )
        if impl == "fused":
            raise TypeError(f"{op}(impl='fused'): {reason}")
    if reason is None:
        return "fused"
    if impl == "fused":
        raise RuntimeError(f"{op}(impl='fused') is unavailable on {t.device}: {reason}")
    key = (t.device.type, reason)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(
            f"deeprec: using the reference {op} because {reason}",
            RuntimeWarning,
            stacklevel=3,
        )
    return "reference"


def check_kernel(op: str, t: torch.Tensor, family: str) -> None:
    """Inside a registered op: the native kernels of ``family`` exist for t's device and
    dtype."""
    reason = _native.unavailable_reason(t.device)
    if reason is not None:
        raise RuntimeError(f"deeprec::{op}: no native kernel on {t.device}: {reason}")
    supported = _native.kernel_dtypes(family, t.device.type)
    if t.dtype not in supported:
        raise TypeError(
            f"deeprec::{op}: no kernel for {t.dtype} on {t.device.type} "
            f"(supported: {', '.join(str(d) for d in supported)})"
        )


def check_scale(scale: torch.Tensor | None, like: torch.Tensor, name: str = "scale") -> None:
    """An optional one-element scale the kernels read in place: like's dtype and device."""
    if scale is None:
        return
    if not isinstance(scale, torch.Tensor) or scale.numel() != 1:
        raise ValueError(f"{name} must be a one-element tensor")
    if scale.dtype != like.dtype or scale.device != like.device:
        raise TypeError(
            f"{name} must be {like.dtype} on {like.device}, got {scale.dtype} on {scale.device}"
        )
    if not scale.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def as_scalar(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A one-element tensor as the contiguous 0-dim ``dtype`` scalar the kernels read in
    place (an incoming gradient, a folded scale); ``t`` itself when it already is one."""
    if t.dtype == dtype and t.dim() == 0 and t.is_contiguous():
        return t
    return t.to(dtype).reshape(()).contiguous()


def ptr(t: torch.Tensor | None) -> int:
    """The data address of a contiguous tensor, or 0 for None."""
    return 0 if t is None else t.data_ptr()


def dtype_code(t: torch.Tensor) -> int:
    return _native.DTYPE_CODE[t.dtype]


def index_code(t: torch.Tensor) -> int:
    return _native.INDEX_CODE[t.dtype]


# ------------------------------------------------------------------ the error word
# The tag a launch records with a refused index: which op, and what it calls its CSR batch.
TAGS: tuple[tuple[str, str], ...] = (
    ("masked_mse", "target"),
    ("masked_mse backward", "target"),
    ("sparse_linear", "x"),
    ("sparse_linear backward", "x"),
    ("sparse_output_mse", "target"),
    ("sparse_output_mse backward", "target"),
    ("spmm_rows", "target"),
    ("col_accumulate", "target"),
    ("row_adam_step", "grad"),
    ("multinomial_nll", "target"),
    ("multinomial_nll backward", "target"),
)
_TAG = {op: i + 1 for i, (op, _) in enumerate(TAGS)}

# What each check of csrc/checks.h means, as "<tensor>[<position>] = <value> <says>".
_SAYS = {
    "crow_start": ("crow", "must be 0 (offsets start at 0)"),
    "crow_order": (
        "crow",
        "breaks the offsets (they must be non-decreasing, from 0 to nnz = {bound})",
    ),
    "crow_end": ("crow", "must equal nnz = {bound} (the length of col and val)"),
    "col_range": ("col", "is outside [0, {bound})"),
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


def describe_error(words: list[int]) -> str:
    """The one-line message for an error word (check, tag, position, value, bound)."""
    check, tag, position, value, bound = words
    C = _native.module()
    names = {code: name for name, code in (C.CHECKS.items() if C else ())}
    op, batch = TAGS[tag - 1] if 1 <= tag <= len(TAGS) else ("a deeprec kernel", "batch")
    tensor, says = _SAYS.get(names.get(check, ""), ("index", "was refused (check {check})"))
    owner = batch if not tensor.startswith("index") else batch + " " + tensor.split(".")[0]
    part = tensor.removeprefix("index.")
    says = says.format(bound=bound, check=check)
    return f"deeprec {op}: {owner}: {part}[{position}] = {value} {says}"


_local = threading.local()
_device_words: dict[torch.device, torch.Tensor] = {}


def error_word(device: torch.device) -> torch.Tensor:
    """The zeroed error word the kernels on ``device`` report into: one per host thread on
    the CPU (reset after each refusal), one per GPU (reset when it is read)."""
    if device.type == "cpu":
        word = getattr(_local, "word", None)
        if word is None:
            word = _local.word = torch.zeros(_native.module().ERROR_WORDS, dtype=torch.int64)
        return word
    device = _word_device(device)
    word = _device_words.get(device)
    if word is None:
        word = torch.zeros(_native.module().ERROR_WORDS, dtype=torch.int64, device=device)
        _device_words[device] = word
    return word


def _raise_from(word: torch.Tensor, words: list[int] | None = None) -> None:
    """Raise the error ``word`` records (its values, if already read), resetting it."""
    words = word.tolist() if words is None else words
    if words[0]:
        word.zero_()
        raise ValueError(describe_error(words)) from None


def csr_problem(crow: torch.Tensor, col: torch.Tensor, n_cols: int) -> torch.Tensor:
    """The first index of a CSR batch the kernels would refuse, as torch ops on its device
    (no host sync): int64 (check, position, value, bound) as in the error word, all zero for
    a sound batch. Checks in the kernels' order: crow starts at 0, stays in [0, nnz] without
    falling and ends at nnz; columns lie in [0, n_cols) and rise strictly in each row."""
    codes = _native.module().CHECKS
    nnz, c, j = col.numel(), crow.to(torch.int64), col.to(torch.int64)
    candidates, hits = [], []

    def add(check: str, bad: torch.Tensor, value: torch.Tensor, bound: torch.Tensor,
            offset: int = 0) -> None:  # fmt: skip
        """A check failing at the positions ``bad`` marks (value and bound alike shaped)."""
        if bad.numel() == 0:
            return
        at = bad.to(torch.int8).argmax()
        code = c.new_full((), codes[check])
        candidates.append(torch.stack([code, at + offset, value[at], bound[at]]))
        hits.append(bad.any())

    B = c.numel() - 1
    add("crow_start", c[:1] != 0, c[:1], torch.zeros_like(c[:1]))
    falls = (c[1:] < c[:-1]) | (c[1:] < 0) | (c[1:] > nnz)
    add("crow_order", falls, c[1:], torch.full_like(c[1:], nnz), offset=1)
    add("crow_end", c[-1:] != nnz, c[-1:], torch.full_like(c[-1:], nnz), offset=B)
    add("col_range", (j < 0) | (j >= n_cols), j, torch.full_like(j, n_cols))
    if nnz > 1:
        rows = entry_rows(c, nnz)
        add("col_order", (rows[1:] == rows[:-1]) & (j[1:] <= j[:-1]), j[1:], j[:-1], offset=1)
    stacked, found = torch.stack(candidates), torch.stack(hits)
    first = found.to(torch.int8).argmax()
    return torch.where(found.any(), stacked[first], torch.zeros_like(stacked[0]))


def report_problem(device: torch.device, op: str, problem: torch.Tensor) -> None:
    """Record ``problem`` (csr_problem's words) in ``device``'s error word unless a failure
    is recorded there already, with no host sync; on the CPU raise it at once, as a CPU
    kernel's launch does."""
    word = error_word(device)
    tag = problem.new_full((1,), _TAG[op])
    new = torch.where(problem[0] != 0, torch.cat([problem[:1], tag, problem[1:]]), 0)
    word.copy_(torch.where(word[0] != 0, word, new))
    if device.type == "cpu":
        _raise_from(word)


def raise_kernel_errors(device: torch.device | str | None = None) -> None:
    """Raise the ValueError for an index a CUDA kernel refused since the last call.

    One small device-to-host read (a sync): call it where the host waits for the GPU
    anyway. The training loop does at every loss read and at the end of each epoch and
    of validation. ``device``: one GPU, or None for every GPU used so far. CPU kernels
    raise at once, so for the CPU this does nothing.
    """
    if device is not None:
        key = _word_device(torch.device(device))
        words = [_device_words[key]] if key in _device_words else []
    else:
        words = list(_device_words.values())
    for word in words:
        _raise_from(word)


def read_checked(value: torch.Tensor) -> float:
    """A one-element tensor's value on the host, read in one transfer together with its
    device's error word: one sync where there would be one anyway. Raises the ValueError
    for an index a kernel on that device refused since the word was last read."""
    device = _word_device(value.device)
    word = _device_words.get(device) if device is not None else None
    if word is None:  # the CPU, or a device no kernel has run on
        return float(value)
    bits = value.detach().reshape(1).to(torch.float64).view(torch.int64)
    words = torch.cat([word, bits]).tolist()
    _raise_from(word, words[:-1])
    return struct.unpack("<d", struct.pack("<q", words[-1]))[0]


def _word_device(device: torch.device) -> torch.device | None:
    """The key of a GPU's error word (its explicit index); None for the CPU."""
    if device.type == "cpu":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.device(device.type, index)


def launch(name: str, device: torch.device, *, op: str, reduce: bool = True, **args) -> None:
    """Run the native kernel ``name`` on ``device`` with its arguments by name (the family
    header's names). The name is ``<family>.<kernel>``: deeprec._C's ``<kernel>_cpu`` or
    ``<kernel>_cuda``, defined in csrc/<family>/cpu.cpp or csrc/<family>/cuda.cu. A tensor
    argument (or None, for an optional one) goes as its address; ops/cpu.py or ops/cuda.py
    adds the device's own arguments.

    op: the public op this launch serves (a TAGS name), recorded with a refused index.
    reduce: the kernel computes a loss, so on CUDA it gets a reduction workspace.
    """
    family, dot, kernel = name.partition(".")
    if not (family and dot and kernel):
        raise ValueError(f"a launch name is <family>.<kernel>, got {name!r}")
    args = {k: ptr(v) if v is None or isinstance(v, torch.Tensor) else v for k, v in args.items()}
    word = error_word(device)
    if device.type == "cpu":
        try:
            cpu.run(kernel, args, ptr(word), _TAG[op])
        except _native.module().BadIndex:
            _raise_from(word)
            raise  # a BadIndex with no word recorded: say what the binding said
        return
    cuda.run(kernel, device, args, ptr(word), _TAG[op], reduce)


def batch_args(crow: torch.Tensor, col: torch.Tensor) -> dict[str, object]:
    """A CSR batch's arguments as every kernel that reads one names them: its row pointers
    and columns, its entry count and its index dtype."""
    return {"crow": crow, "col": col, "nnz": col.numel(), "index_dtype": index_code(col)}
