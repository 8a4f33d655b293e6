"""The multinomial loss of an output layer over the whole catalogue, chunk by chunk.

``multinomial_nll(h, weight, bias, target)`` is Mult-DAE's and Mult-VAE's loss: the
negative log-likelihood of each row's items under a softmax over every item, averaged over
the rows,

    L = (1 / B) sum_i [ c_i lse_i - sum_{j in row i} z_ij ],   z = h W^T + b,

with lse_i the log-sum-exp of row i's logits and c_i its item count. It never holds the
B x N logits. Forward: the logits of one chunk of items at a time (torch's GEMM into one
reused B x C buffer), then a native epilogue keeps a running max and sum per row (the
online log-sum-exp, accumulated in double across chunks) and adds the observed items'
logits, read straight from the CSR batch; only the per-row log-sum-exp is kept. Backward:
each chunk is recomputed and turned in place into the logit gradient
scale * (c_i softmax_ij - [j rated]), which feeds the GEMMs dh += G W_c, dW_c = G^T h and
db_c = sum_i G (each chunk owns its rows of dW and db, so nothing is accumulated across
chunks but dh).

Precision: the GEMMs run in h's dtype. The weight and bias are of h's dtype, or float32
master weights under a 16-bit h: then each chunk's rows are cast into a reused bf16 block
just before its GEMM (in cache: no pass over the catalogue's weight), and dW and db come
back float32, each chunk's rounded once from its bf16 GEMM, as autocast's cast of the
whole weight would give them but without its two catalogue-sized conversions. The
epilogue computes in ``acc_dtype`` of h's dtype (float32 for 16-bit logits: the running
max and sum in double, the softmax in float), so the log-sum-exps and the loss are float32
in a bf16 op, and the logit gradient is rounded to bf16 once, for the two backward GEMMs;
dh, summed over the chunks, is accumulated in float32 and rounded once. Inside
``torch.autocast`` the op casts h to the autocast dtype where the backend has kernels for
it (bfloat16 on the CPU; any on the torch backend) and leaves the weight and bias as they
are; otherwise it runs in float32.

Four GEMMs of the full size per step (forward, recompute, dh, dW) against the dense path's
three: the floor of an exact loss that never holds a row's logits whole. The chunk is
sized so its B x C block stays in cache between the GEMM and the epilogue
(``chunk_items``).

The epilogue runs as native kernels (backend "native": csrc/multinomial/, with the SIMD
variants and index checks of every kernel) or as torch ops on any device (backend
"torch"), after the same index checks made on the device (ops/device_checks.py, no host
sync). The default is the measured one per device (ops/backends.py): the CUDA epilogue
kernels are compiled but a GPU runs the torch-op epilogue until its kernels have passed a
measured GPU run. The op is defined once here (``Op``: schema, validator, kernel per
device, fake, autograd); ``multinomial_nll_reference`` is its dense definition.
"""

from __future__ import annotations

import threading

import torch

from deeprec import csr
from deeprec.ops import _native, backends, chunk_pool, recycle
from deeprec.ops.device_checks import checked_csr
from deeprec.ops.native import DeviceKernels, batch_args
from deeprec.ops.schema import (
    HALF,
    Impl,
    Op,
    acc_dtype,
    as_scalar,
    autocast_dtype,
    check_grad,
    check_rows_input,
    check_weight,
    in_float32,
)

__all__ = ["chunk_items", "multinomial_nll", "multinomial_nll_reference"]

# The chunk's logit block: about this many bytes, so the GEMM leaves it in the caches the
# epilogue reads it from (2 MiB: the L2 of two cores on the machines measured;
# benchmarks/multinomial_cost.py --chunks shows the curve), in multiples of 128 items.
CHUNK_BYTES = 2 * 2**20
CHUNK_RANGE = (256, 8192)


def chunk_items(batch_rows: int, n_items: int, itemsize: int = 4) -> int:
    """Items per chunk for a batch of ``batch_rows`` rows: CHUNK_BYTES of logits, a
    multiple of 128 inside CHUNK_RANGE, and never more than the catalogue."""
    per = CHUNK_BYTES // max(batch_rows * itemsize, 1) // 128 * 128
    lo, hi = CHUNK_RANGE
    return max(1, min(n_items, max(lo, min(hi, per))))


# ------------------------------------------------------------------ the public op
def multinomial_nll(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: object,
    *,
    impl: Impl = "auto",
    chunk: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """The multinomial negative log-likelihood of the output layer h @ weight^T + bias at
    the items ``target`` stores, averaged over the rows: equal to
    ``-(log_softmax(h @ weight.T + bias)[row, col]).sum() / B``.

    h: (B, H); weight: (N, H) item-major; bias: (N) or None; target: who rated what, as a
    Batch, a torch sparse CSR tensor, a (crow, col, val) triple or a (crow, col) pair
    (values are not read). Differentiable with respect to h, weight and bias. chunk: items
    per chunk (default ``chunk_items``); backend: the epilogue, "native" or "torch"
    (default: the measured one for the device, ops/backends.py). impl: "reference" is the
    dense definition.
    """
    crow, col = csr.unpack_structure(target, (csr.dim(h, 0), csr.dim(weight, 0)), rows_from="h")
    backend = backends.resolve(backend, weight)
    if isinstance(weight, torch.Tensor) and isinstance(h, torch.Tensor) and chunk is None:
        itemsize = _gemm_dtype(h, weight, backend, autocast_dtype(weight)).itemsize
        chunk = chunk_items(csr.dim(h, 0) or 1, weight.shape[0], itemsize)
    loss, _ = MULTINOMIAL_NLL.call(impl, csr.contiguous(h), weight, bias, crow, col, chunk,
                                   backend)  # fmt: skip
    return loss


def multinomial_nll_reference(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, crow: torch.Tensor,
    col: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """The dense definition: every logit at once (a GEMM in h's dtype: float32 master
    weights under a 16-bit h are cast to it), log_softmax in ``acc_dtype`` of it, the rated
    items' sum."""
    rows = csr.entry_rows(crow, col.numel())
    if weight.dtype != h.dtype:
        weight, bias = weight.to(h.dtype), (bias.to(h.dtype) if bias is not None else None)
    logits = torch.nn.functional.linear(h, weight, bias)
    log_p = logits.to(acc_dtype(logits.dtype)).log_softmax(1)
    return -log_p[rows, col].sum() / max(h.shape[0], 1)


# ------------------------------------------------------------------ checks
def _check(h, weight, bias, crow, col, chunk, backend) -> None:
    check_weight(weight, bias, 0)
    check_rows_input(h, "h", weight, half_over_float32=True)
    csr.check_structure(crow, col, None, h.shape[0], "target", rows_from="h")
    if crow.device != weight.device:
        raise ValueError(f"target is on {crow.device} but the weight is on {weight.device}")
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of items, got {chunk!r}")
    backends.check(backend)


def _check_backward(grad, h, weight, bias, crow, col, lse, chunk, backend, need_h,
                    need_params) -> None:  # fmt: skip
    _check(h, weight, bias, crow, col, chunk, backend)
    check_grad(grad, h, "multinomial_nll_backward")
    csr.check_tensor(lse, "lse", dim=1, dtypes=(acc_dtype(h.dtype),), device=h.device)
    if lse.numel() != h.shape[0]:
        raise ValueError(f"lse has {lse.numel()} entries for {h.shape[0]} rows")


# ------------------------------------------------------------------ the chunked driver
def _chunks(N: int, chunk: int):
    for n0 in range(0, N, chunk):
        yield n0, min(N, n0 + chunk)


class _Chunks:
    """The chunk loop's reused blocks: the logits (B x chunk, h's dtype) and, over float32
    master weights with a 16-bit h, the chunk's weight and bias rows cast to h's dtype."""

    def __init__(self, h, weight, bias, chunk: int) -> None:
        B, N, H = h.shape[0], weight.shape[0], weight.shape[1]
        C = min(chunk, N)
        self.h, self.weight, self.bias = h, weight, bias
        self.z = torch.empty(B * C, dtype=h.dtype, device=h.device)
        self.mixed = weight.dtype != h.dtype
        if self.mixed:
            self.w = torch.empty(C * H, dtype=h.dtype, device=h.device)
            self.b = torch.empty(C, dtype=h.dtype, device=h.device) if bias is not None else None

    def weight_rows(self, n0: int, n1: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W[n0:n1], b[n0:n1]) in h's dtype."""
        w = self.weight[n0:n1]
        b = self.bias[n0:n1] if self.bias is not None else None
        if not self.mixed:
            return w, b
        w = self.w[: w.numel()].view(w.shape).copy_(w)
        return w, (self.b[: b.numel()].copy_(b) if b is not None else None)

    def logits(self, n0: int, n1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the chunk's logits h @ W[n0:n1]^T + b[n0:n1] into the reused block, W[n0:n1] as
        the GEMM read it)."""
        h = self.h
        w, b = self.weight_rows(n0, n1)
        Z = self.z[: h.shape[0] * (n1 - n0)].view(h.shape[0], n1 - n0)
        if b is None:
            return torch.mm(h, w.t(), out=Z), w
        return torch.addmm(b, h, w.t(), out=Z), w


def _epilogue(kernels: DeviceKernels, kernel: str, op: str, Z, crow, col, N, n0,
              **state) -> None:  # fmt: skip
    """Launch a native epilogue ``kernel`` on the chunk Z (B x C logits of items n0 ...,
    contiguous) of a batch; ``state``: its other tensors, by the kernel's argument names."""
    B, C = Z.shape
    kernels.launch(f"multinomial.{kernel}", Z.device, op=op, dtype=Z.dtype, reduce=False, Z=Z,
                   **batch_args(crow, col), B=B, N=N, n0=n0, C=C, ldz=C, **state)  # fmt: skip


class _TorchBatch:
    """What the torch-op epilogue reads of a batch, after the device checks: each entry's
    row and column, and each row's item count (all zero for a refused batch, so it
    contributes nothing)."""

    def __init__(self, op: str, crow, col, N: int, dtype: torch.dtype) -> None:
        checked = checked_csr(op, csr.CSRParts(crow, col, None), N)
        self.col, self.ok = checked.col, checked.ok
        self.rows = csr.entry_rows(checked.crow, self.col.numel())
        counts = (crow[1:] - crow[:-1]).to(dtype)
        self.counts = torch.where(self.ok, counts, 0)


def _run(
    kernels: DeviceKernels,
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    crow: torch.Tensor,
    col: torch.Tensor,
    chunk: int,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss, each row's log-sum-exp): one pass over the items, chunk by chunk."""
    B, N = h.shape[0], weight.shape[0]
    device, acc = h.device, acc_dtype(h.dtype)
    chunks = list(_chunks(N, chunk))
    torch_ops = backend == "torch"
    batch = _TorchBatch("multinomial_nll", crow, col, N, torch.float64) if torch_ops else None
    counts = batch.counts if batch is not None else (crow[1:] - crow[:-1]).to(torch.float64)

    def lse_chunk(blocks: _Chunks, n0: int, n1: int, state: torch.Tensor) -> None:
        Z, _ = blocks.logits(n0, n1)
        if backend == "native":
            _epilogue(kernels, "lse_chunk", "multinomial_nll", Z, crow, col, N, n0,
                      run_max=state[0], run_sum=state[1], observed=state[2])  # fmt: skip
        else:
            _torch_lse_chunk(Z, batch, n0, *state)

    if _side_by_side(device, len(chunks)):
        # each chunk its own running state (max, sum, observed), merged in chunk order
        states = torch.zeros(len(chunks), 3, B, dtype=torch.float64)
        states[:, 0] = float("-inf")
        chunk_pool.run(len(chunks), lambda c: lse_chunk(
            _Chunks(h, weight, bias, chunk), *chunks[c], states[c]))  # fmt: skip
        run_max, run_sum, observed = _merged(states)
    else:
        state = torch.empty(3, B, dtype=torch.float64, device=device)  # max, sum, observed
        if backend == "torch":
            state[0].fill_(float("-inf"))
            state[1:].zero_()
        blocks = _Chunks(h, weight, bias, chunk)
        for n0, n1 in chunks:
            lse_chunk(blocks, n0, n1, state)
        run_max, run_sum, observed = state
    lse = run_max + run_sum.log()
    # A row the native epilogue refused keeps a sum of 0 (any row's own maximum adds 1): it
    # contributes nothing. A NaN sum (diverged logits) still reaches the loss.
    terms = torch.where((counts > 0) & (run_sum != 0), counts * lse - observed, 0.0)
    loss = (terms.sum() / max(B, 1)).to(acc)
    return loss, lse.to(acc)


def _side_by_side(device: torch.device, n_chunks: int) -> bool:
    """Whether the chunks run side by side (ops/chunk_pool.py): on the CPU, with two or more
    threads and at least two chunks per thread."""
    return device.type == "cpu" and (t := chunk_pool.threads()) > 1 and n_chunks >= 2 * t


def _merged(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(max, sum, observed) per row from each chunk's own (chunks x 3 x rows), in chunk
    order: the log-sum-exp's parts rescaled to the overall maximum. A row refused by the
    first chunk (the one that checks every row: sum 0) stays refused."""
    m, s, o = states.unbind(1)
    run_max = m.amax(0)
    weight = torch.where(s != 0, (m - run_max).exp(), 0.0)
    run_sum = torch.where(s[0] != 0, (s * weight).sum(0), 0.0)
    return run_max, run_sum, o.sum(0)


def _torch_lse_chunk(Z, batch: _TorchBatch, n0, run_max, run_sum, observed) -> None:
    """The forward epilogue as torch ops (any device): the same running state as lse_chunk."""
    C = Z.shape[1]
    Z = Z.to(acc_dtype(Z.dtype))  # 16-bit logits: the softmax in float32
    m_new = torch.maximum(run_max, Z.amax(1).to(torch.float64))
    decay = torch.where(run_max == m_new, 1.0, (run_max - m_new).exp())
    part = (Z - m_new.to(Z.dtype)[:, None]).exp().sum(1, dtype=torch.float64)
    run_sum.mul_(decay).add_(part)
    run_max.copy_(m_new)
    inside = (batch.col >= n0) & (batch.col < n0 + C) & batch.ok
    at = Z[batch.rows, (batch.col - n0).clamp(0, C - 1)].to(torch.float64)
    observed.index_add_(0, batch.rows, torch.where(inside, at, 0.0))


def _reference(h, weight, bias, crow, col, chunk, backend):
    checked = checked_csr("multinomial_nll", csr.CSRParts(crow, col, None), weight.shape[0])
    loss = multinomial_nll_reference(h, weight, bias, checked.crow, checked.col)
    return torch.where(checked.ok, loss, 0), None


def _backward_run(
    kernels: DeviceKernels,
    grad: torch.Tensor,
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    crow: torch.Tensor,
    col: torch.Tensor,
    lse: torch.Tensor,
    chunk: int,
    backend: str,
    need_h: bool,
    need_params: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dh, dW, db) of the loss scaled by ``grad``; an empty tensor for one not needed
    (db: also without a bias)."""
    B, N = h.shape[0], weight.shape[0]
    device, acc = h.device, acc_dtype(h.dtype)
    scale = as_scalar(torch.mul(grad, 1.0 / max(B, 1)), acc)
    # dh sums every chunk's G W_c, in chunk order, in the compute dtype; rounded to h's once
    d_h = torch.zeros(h.shape, dtype=acc, device=device) if need_h else h.new_empty(0)
    # dW is catalogue-sized (87,585 x 600 floats at ML-32M): a recycled block on the CPU
    # instead of fresh pages each step (deeprec.ops.recycle); the weight's dtype
    d_w = recycle.empty(N, h.shape[1], weight.dtype, device) if need_params else weight.new_empty(0)
    with_bias = need_params and bias is not None
    d_b = torch.empty(N, dtype=weight.dtype, device=device) if with_bias else h.new_empty(0)
    torch_ops = backend == "torch"
    batch = _TorchBatch("multinomial_nll backward", crow, col, N, acc) if torch_ops else None
    chunks = list(_chunks(N, chunk))

    def grad_chunk(blocks: _Chunks, n0: int, n1: int, part: torch.Tensor | None) -> None:
        """The chunk's G, its rows of dW and db, and G W_c into ``part``."""
        G, w = blocks.logits(n0, n1)
        if backend == "native":
            _epilogue(kernels, "softmax_grad_chunk", "multinomial_nll backward", G, crow, col,
                      N, n0, lse=lse, scale=scale)  # fmt: skip
        else:
            _torch_grad_chunk(G, batch, n0, lse, scale)
        if part is not None:
            torch.mm(G, w, out=part)
        if need_params and blocks.mixed:  # each chunk's dW in h's dtype, widened into d_w
            d_w[n0:n1].copy_(torch.mm(G.t(), h))
        elif need_params:
            torch.mm(G.t(), h, out=d_w[n0:n1])
        if with_bias:
            torch.sum(G, 0, dtype=d_b.dtype, out=d_b[n0:n1])

    if _side_by_side(device, len(chunks)):

        def task(c: int, part: torch.Tensor | None) -> None:
            grad_chunk(_Chunks(h, weight, bias, chunk), *chunks[c], part)

        _side_by_side_grads(chunks, task, d_h if need_h else None, h)
    else:
        blocks = _Chunks(h, weight, bias, chunk)
        part = torch.empty_like(h) if need_h else None
        for n0, n1 in chunks:
            grad_chunk(blocks, n0, n1, part)
            if part is not None:
                d_h.add_(part)
    return d_h.to(h.dtype), d_w, d_b


def _side_by_side_grads(chunks, grad_chunk, d_h: torch.Tensor | None, h: torch.Tensor) -> None:
    """The backward's chunks on the pool; each chunk's G W_c is added to d_h in chunk order
    (the same sum whoever ran which chunk), a worker at most a few chunks ahead waiting."""
    ahead = 4 * chunk_pool.threads()
    pending: dict[int, torch.Tensor] = {}
    done = [0]  # the next chunk to add
    turn = threading.Condition()

    def task(c: int) -> None:
        part = torch.empty_like(h) if d_h is not None else None
        grad_chunk(c, part)
        if part is None:
            return
        with turn:
            turn.wait_for(lambda: c - done[0] < ahead)
            pending[c] = part
            while done[0] in pending:
                d_h.add_(pending.pop(done[0]))
                done[0] += 1
            turn.notify_all()

    chunk_pool.run(len(chunks), task)


def _torch_grad_chunk(G, batch: _TorchBatch, n0, lse, scale) -> None:
    """The backward epilogue as torch ops: G = scale (c_i softmax - [rated]), in place
    (computed in lse's dtype, float32 for 16-bit logits, and rounded once into G)."""
    C = G.shape[1]
    out, G = G, G.to(lse.dtype)
    G.sub_(lse[:, None]).exp_().mul_((batch.counts * scale)[:, None])
    inside = (batch.col >= n0) & (batch.col < n0 + C) & batch.ok
    where = (batch.col - n0).clamp(0, C - 1)
    G.index_put_((batch.rows, where), torch.where(inside, -scale, 0.0).to(G.dtype),
                 accumulate=True)  # fmt: skip
    if out is not G:
        out.copy_(G)


# ------------------------------------------------------------------ the op
def _gemm_dtype(h: torch.Tensor, weight: torch.Tensor, backend: str,
                autocast: torch.dtype | None) -> torch.dtype:  # fmt: skip
    """The dtype the op's GEMMs run in: h's; inside torch.autocast (its dtype ``autocast``)
    that dtype where the backend has kernels for it on the device (any on the torch
    backend), else float32; float64 stays float64."""
    if autocast is None or h.dtype == torch.float64:
        return h.dtype
    if backend == "torch" or autocast in _native.kernel_dtypes("multinomial", weight.device.type):
        return autocast
    return torch.float32


def _autocast(dtype: torch.dtype, args: tuple) -> tuple:
    """Inside torch.autocast: h in the autocast dtype where the backend has kernels for it
    on its device (any dtype on the torch backend), the weight and bias as they are (float32
    masters are cast a chunk at a time, in cache); else everything 16-bit in float32. The
    loss and log-sum-exps are float32 either way."""
    h, weight, bias, backend = args[0], args[1], args[2], args[6]
    if not all(isinstance(t, torch.Tensor) for t in (h, weight)):
        return args  # the op's check names what is wrong
    gemm = _gemm_dtype(h, weight, backend, dtype)
    if gemm == torch.float32 or h.dtype == torch.float64:
        return in_float32(dtype, args)
    out = list(args)
    out[0] = h.to(gemm)
    for i, t in ((1, weight), (2, bias)):  # a 16-bit weight of another dtype: float32
        if isinstance(t, torch.Tensor) and t.dtype in HALF and t.dtype != gemm:
            out[i] = t.float()
    return tuple(out)


def _setup(ctx, inputs, output):
    h, weight, bias, crow, col, chunk, backend = inputs
    ctx.save_for_backward(h, weight, bias, crow, col, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # no zero gradient written for the log-sum-exps
    ctx.chunk, ctx.backend = chunk, backend


def _backward(ctx, grad_loss, _grad_lse):
    if grad_loss is None:  # no gradient for the loss
        return (None,) * 7
    h, weight, bias, crow, col, lse = ctx.saved_tensors
    need_h = ctx.needs_input_grad[0]
    need_params = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
    if not (need_h or need_params):
        return (None,) * 7
    d_h, d_w, d_b = MULTINOMIAL_NLL_BACKWARD(
        grad_loss, h, weight, bias, crow, col, lse, ctx.chunk, ctx.backend, need_h,
        need_params,
    )  # fmt: skip
    return (
        d_h if need_h else None,
        d_w if ctx.needs_input_grad[1] else None,
        d_b if ctx.needs_input_grad[2] else None,
        None, None, None, None,
    )  # fmt: skip


MULTINOMIAL_NLL = Op(
    "multinomial_nll",
    _check,
    _run,
    fake=lambda h, weight, bias, crow, col, chunk, backend: (
        h.new_empty((), dtype=acc_dtype(h.dtype)),
        h.new_empty(h.shape[0], dtype=acc_dtype(h.dtype)),
    ),
    family="multinomial",
    reference=_reference,
    setup=_setup,
    backward=_backward,
    lead=1,
    autocast=_autocast,
    backend_arg=6,
)


def _backward_fake(grad, h, weight, bias, crow, col, lse, chunk, backend, need_h, need_params):
    with_bias = need_params and bias is not None
    return (
        torch.empty_like(h) if need_h else h.new_empty(0),
        torch.empty_like(weight) if need_params else weight.new_empty(0),
        weight.new_empty(weight.shape[0]) if with_bias else h.new_empty(0),
    )


MULTINOMIAL_NLL_BACKWARD = Op(
    "multinomial_nll_backward",
    _check_backward,
    _backward_run,
    fake=_backward_fake,
    family="multinomial",
    lead=2,
    backend_arg=8,
)
