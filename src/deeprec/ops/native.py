"""How a native kernel is launched on each device type torch's dispatcher routes an op to.

An op registers one kernel per device type with ``torch.library`` (ops/schema.py's Op);
each receives the ``DeviceKernels`` of its device type, so no launch asks which device it
is on. A launch passes the kernel's arguments by name (the fields csrc/kernel_args.h
declares for it), tensors as addresses of contiguous tensors, and the device's own
launch arguments: on the CPU the error word and torch's thread count, on CUDA the
reduction workspace, the error word of the current stream, the device and that stream.
"""

from __future__ import annotations

import torch

from deeprec.ops import _native, errors


def ptr(t: torch.Tensor | None) -> int:
    """The data address of a contiguous tensor, or 0 for None."""
    return 0 if t is None else t.data_ptr()


def index_code(t: torch.Tensor) -> int:
    return _native.INDEX_CODE[t.dtype]


def batch_args(crow: torch.Tensor, col: torch.Tensor) -> dict[str, object]:
    """A CSR batch's arguments as every kernel that reads one names them: its row pointers
    and columns, its entry count and its index dtype."""
    return {"crow": crow, "col": col, "nnz": col.numel(), "index_dtype": index_code(col)}


class DeviceKernels:
    """The native kernels of one device type."""

    device_type = ""

    def launch(self, name: str, device: torch.device, *, op: str, dtype: torch.dtype,
               reduce: bool = True, **args) -> None:  # fmt: skip
        """Run kernel ``name`` (``<family>.<kernel>``: deeprec._C's ``<kernel>_<device
        type>``, defined in csrc/<family>/cpu.cpp or cuda.cu) on ``device`` with its
        arguments by name; a tensor (or None, for an optional one) goes as its address.

        op: the public op this launch serves (errors.TAGS), recorded with a refused index.
        dtype: the scalar dtype it computes in, which the family's kernels must support.
        reduce: it computes a loss (on CUDA: it gets a reduction workspace).
        """
        family, dot, kernel = name.partition(".")
        if not (family and dot and kernel):
            raise ValueError(f"a launch name is <family>.<kernel>, got {name!r}")
        require(op, device, dtype, family)
        args = {k: ptr(v) if v is None or isinstance(v, torch.Tensor) else v
                for k, v in args.items()}  # fmt: skip
        args["dtype"] = _native.DTYPE_CODE[dtype]
        self._run(kernel, device, op, reduce, args)

    def _run(self, kernel: str, device: torch.device, op: str, reduce: bool,
             args: dict[str, object]) -> None:  # fmt: skip
        raise NotImplementedError


class CpuKernels(DeviceKernels):
    """CPU launches: synchronous; a refused index raises before the launch returns."""

    device_type = "cpu"

    def _run(self, kernel, device, op, reduce, args) -> None:
        word = errors.word(device)
        tail = {"err": ptr(word), "err_tag": errors.TAG[op], "num_threads": torch.get_num_threads()}
        try:
            _native.call(f"{kernel}_cpu", {**args, **tail})
        except _native.module().BadIndex:
            if errors.deferred(device):
                return  # in the word until the next read, as on a GPU
            errors.raise_from(word)
            raise  # a BadIndex with no word recorded: say what the binding said


class CudaKernels(DeviceKernels):
    """CUDA launches on torch's current stream; a refused index waits in that stream's
    error word."""

    device_type = "cuda"

    def _run(self, kernel, device, op, reduce, args) -> None:
        blocks = _native.module().CUDA_WORKSPACE_BLOCKS.get(kernel)
        partials = counter = None
        if blocks is not None and reduce:  # the deterministic last-block loss reduction
            partials = torch.empty(blocks, dtype=torch.float64, device=device)
            counter = torch.zeros(1, dtype=torch.int32, device=device)
        index = device.index if device.index is not None else torch.cuda.current_device()
        tail = {
            "partials": ptr(partials),
            "counter": ptr(counter),
            "err": ptr(errors.word(device)),
            "err_tag": errors.TAG[op],
            "device": index,
            "stream": torch.cuda.current_stream(device).cuda_stream,
        }
        _native.call(f"{kernel}_cuda", {**args, **tail})


CPU = CpuKernels()
CUDA = CudaKernels()
# The device types ops register kernels for.
DEVICES: tuple[DeviceKernels, ...] = (CPU, CUDA)


_available: set[tuple[torch.device, torch.dtype, str, object]] = set()


def require(op: str, device: torch.device, dtype: torch.dtype, family: str) -> None:
    """The native kernels of ``family`` exist for ``device`` and ``dtype``, or raise. Asked
    at every launch; an answer that was yes is remembered (for this module: a test may
    swap it)."""
    key = (device, dtype, family, _native.module())
    if key in _available:
        return
    reason = _native.unavailable_reason(device)
    if reason is not None:
        raise RuntimeError(f"deeprec::{op}: no native kernel on {device}: {reason}")
    supported = _native.kernel_dtypes(family, device.type)
    if dtype not in supported:
        raise TypeError(
            f"deeprec::{op}: no kernel for {dtype} on {device.type} "
            f"(supported: {', '.join(str(d) for d in supported)})"
        )
    if _native.ISA_ERROR is None:  # DEEPREC_ISA's refusal is the process's answer
        _available.add(key)
