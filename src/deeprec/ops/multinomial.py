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

Four GEMMs of the full size per step (forward, recompute, dh, dW) against the dense path's
three: the floor of an exact loss that never holds a row's logits whole. The chunk is
sized so its B x C block stays in cache between the GEMM and the epilogue
(``chunk_items``).

The epilogue runs as CPU kernels (csrc/multinomial/cpu.cpp, with the SIMD variants and
index checks of every kernel) or as torch ops on any device, with the same index checks
made on the device (no host sync). The CUDA epilogue kernels are compiled but used only
where ``NATIVE_EPILOGUE`` says so: a GPU runs the torch-op epilogue until its kernels have
passed a measured GPU run. The op is defined once here (``Op``: schema, fake, autograd,
eager fast path); ``multinomial_nll_reference`` is its dense definition.
"""

from __future__ import annotations

import torch

from deeprec import csr
from deeprec.ops import recycle
from deeprec.ops.launch import (
    Impl,
    as_scalar,
    batch_args,
    check_kernel,
    choose_impl,
    csr_problem,
    dtype_code,
    launch,
    report_problem,
)
from deeprec.ops.schema import Op, check_same, check_weight

__all__ = ["chunk_items", "multinomial_nll", "multinomial_nll_reference"]

# Where the native epilogue runs (else torch ops): on the CPU, measured; on CUDA only once
# a GPU run has measured its kernels (benchmarks/gpu_check.sh), which has not happened yet.
NATIVE_EPILOGUE = {"cpu": True, "cuda": False}
EPILOGUES = ("native", "torch")

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
    bias: torch.Tensor,
    target: object,
    *,
    impl: Impl = "auto",
    chunk: int | None = None,
    epilogue: str | None = None,
) -> torch.Tensor:
    """The multinomial negative log-likelihood of the output layer h @ weight^T + bias at
    the items ``target`` stores, averaged over the rows: equal to
    ``-(log_softmax(h @ weight.T + bias)[row, col]).sum() / B``.

    h: (B, H); weight: (N, H) item-major; bias: (N); target: who rated what, as a Batch, a
    torch sparse CSR tensor, a (crow, col, val) triple or a (crow, col) pair (values are
    not read). Differentiable with respect to h, weight and bias. chunk: items per chunk
    (default ``chunk_items``); epilogue: "native" or "torch" (default: NATIVE_EPILOGUE
    for the device). impl: "reference" is the dense definition.
    """
    check_weight(weight, bias, 0)
    if bias is None:
        raise ValueError("multinomial_nll needs the output bias (a tensor of N entries)")
    if not isinstance(h, torch.Tensor) or h.dim() != 2 or h.shape[1] != weight.shape[1]:
        raise ValueError(
            f"h must be (B, {weight.shape[1]}) to match weight {tuple(weight.shape)}, "
            f"got {tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__}"
        )
    check_same(weight, h, "h")
    crow, col = csr.unpack_structure(target, (h.shape[0], weight.shape[0]))
    if crow.device != weight.device:
        raise ValueError(f"target is on {crow.device} but the weight is on {weight.device}")
    if choose_impl(weight, impl, "multinomial_nll", "multinomial") == "reference":
        if not torch.compiler.is_compiling():
            csr.check_values(csr.CSRParts(crow, col, col), weight.shape[0])
        return multinomial_nll_reference(h, weight, bias, crow, col)
    if chunk is None:
        chunk = chunk_items(h.shape[0], weight.shape[0], weight.element_size())
    if epilogue is None:
        epilogue = "native" if NATIVE_EPILOGUE.get(weight.device.type, False) else "torch"
    if not h.is_contiguous():
        h = h.contiguous()
    loss, _ = MULTINOMIAL_NLL(h, weight, bias, crow, col, chunk, epilogue)
    return loss


def multinomial_nll_reference(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, crow: torch.Tensor,
    col: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """The dense definition: every logit at once, log_softmax, the rated items' sum."""
    rows = csr.entry_rows(crow, col.numel())
    log_p = torch.nn.functional.linear(h, weight, bias).log_softmax(1)
    return -log_p[rows, col].sum() / max(h.shape[0], 1)


# ------------------------------------------------------------------ checks
def _check(h, weight, bias, crow, col, chunk, epilogue) -> None:
    check_weight(weight, bias, 0)
    csr.check_tensor(h, "h", dim=2)
    check_same(weight, h, "h")
    if bias is None:
        raise ValueError("deeprec::multinomial_nll: bias must be a tensor")
    if h.shape[1] != weight.shape[1]:
        raise ValueError(f"h has {h.shape[1]} columns but the weight has {weight.shape[1]}")
    check_kernel("multinomial_nll", weight, "multinomial")
    csr.check_structure(crow, col, None, h.shape[0], "target")
    if crow.device != weight.device:
        raise ValueError(f"target is on {crow.device} but the weight is on {weight.device}")
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"chunk must be a positive number of items, got {chunk!r}")
    if epilogue not in EPILOGUES:
        raise ValueError(f"epilogue must be one of {EPILOGUES}, got {epilogue!r}")


def _check_backward(grad, h, weight, bias, crow, col, lse, chunk, epilogue, need_h,
                    need_params) -> None:  # fmt: skip
    _check(h, weight, bias, crow, col, chunk, epilogue)
    if not isinstance(grad, torch.Tensor) or grad.numel() != 1 or not grad.is_floating_point():
        raise ValueError("deeprec::multinomial_nll_backward: grad must be a one-element float")
    if grad.device != h.device:
        raise ValueError(f"grad is on {grad.device} but h is on {h.device}")
    csr.check_tensor(lse, "lse", dim=1, dtypes=(h.dtype,), device=h.device)
    if lse.numel() != h.shape[0]:
        raise ValueError(f"lse has {lse.numel()} entries for {h.shape[0]} rows")


# ------------------------------------------------------------------ the chunked driver
def _chunks(N: int, chunk: int):
    for n0 in range(0, N, chunk):
        yield n0, min(N, n0 + chunk)


def _logits(h, weight, bias, n0, n1, buf) -> torch.Tensor:
    """The chunk's logits h @ W[n0:n1]^T + b[n0:n1], into the reused buffer (contiguous)."""
    Z = buf[: h.shape[0] * (n1 - n0)].view(h.shape[0], n1 - n0)
    return torch.addmm(bias[n0:n1], h, weight[n0:n1].t(), out=Z)


def _epilogue(kernel, op, Z, crow, col, N, n0, **state) -> None:
    """Launch a native epilogue ``kernel`` on the chunk Z (B x C logits of items n0 ...,
    contiguous) of a batch; ``state``: its other tensors, by the kernel's argument names."""
    B, C = Z.shape
    launch(f"multinomial.{kernel}", Z.device, op=op, reduce=False, Z=Z, **batch_args(crow, col),
           B=B, N=N, n0=n0, C=C, ldz=C, dtype=dtype_code(Z), **state)  # fmt: skip


def _forward_run(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    crow: torch.Tensor,
    col: torch.Tensor,
    chunk: int,
    epilogue: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss, each row's log-sum-exp): one pass over the items, chunk by chunk."""
    B, N = h.shape[0], weight.shape[0]
    device = h.device
    stats = torch.empty(3, B, dtype=torch.float64, device=device)  # max, sum, observed
    run_max, run_sum, observed = stats
    if epilogue == "torch":
        _torch_checks(crow, col, N, "multinomial_nll")
        rows = csr.entry_rows(crow, col.numel())
        run_max.fill_(float("-inf"))
        run_sum.zero_()
        observed.zero_()
    buf = torch.empty(B * min(chunk, N), dtype=h.dtype, device=device)
    for n0, n1 in _chunks(N, chunk):
        Z = _logits(h, weight, bias, n0, n1, buf)
        if epilogue == "native":
            _epilogue("lse_chunk", "multinomial_nll", Z, crow, col, N, n0,
                      run_max=run_max, run_sum=run_sum, observed=observed)  # fmt: skip
        else:
            _torch_lse_chunk(Z, rows, col, n0, run_max, run_sum, observed)
    lse = run_max + run_sum.log()
    counts = (crow[1:] - crow[:-1]).to(torch.float64)
    terms = torch.where(counts > 0, counts * lse - observed, 0.0)
    loss = (terms.sum() / max(B, 1)).to(h.dtype)
    return loss, lse.to(h.dtype)


def _torch_lse_chunk(Z, rows, col, n0, run_max, run_sum, observed) -> None:
    """The forward epilogue as torch ops (any device): the same running state as lse_chunk."""
    C = Z.shape[1]
    m_new = torch.maximum(run_max, Z.amax(1).to(torch.float64))
    decay = torch.where(run_max == m_new, 1.0, (run_max - m_new).exp())
    part = (Z - m_new.to(Z.dtype)[:, None]).exp().sum(1, dtype=torch.float64)
    run_sum.mul_(decay).add_(part)
    run_max.copy_(m_new)
    inside = (col >= n0) & (col < n0 + C)
    at = Z[rows, (col - n0).clamp(0, C - 1)].to(torch.float64)
    observed.index_add_(0, rows, torch.where(inside, at, 0.0))


def _backward_run(
    grad: torch.Tensor,
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    crow: torch.Tensor,
    col: torch.Tensor,
    lse: torch.Tensor,
    chunk: int,
    epilogue: str,
    need_h: bool,
    need_params: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dh, dW, db) of the loss scaled by ``grad``; an empty tensor for one not needed."""
    B, N = h.shape[0], weight.shape[0]
    device = h.device
    scale = as_scalar(torch.mul(grad, 1.0 / max(B, 1)), h.dtype)
    d_h = torch.zeros_like(h) if need_h else h.new_empty(0)
    # dW is catalogue-sized (87,585 x 600 floats at ML-32M): a recycled block on the CPU
    # instead of fresh pages each step (deeprec.ops.recycle)
    d_w = recycle.empty(N, h.shape[1], h.dtype, device) if need_params else weight.new_empty(0)
    d_b = torch.empty_like(bias) if need_params else bias.new_empty(0)
    if epilogue == "torch":
        _torch_checks(crow, col, N, "multinomial_nll backward")
        rows = csr.entry_rows(crow, col.numel())
        counts = (crow[1:] - crow[:-1]).to(h.dtype)
    buf = torch.empty(B * min(chunk, N), dtype=h.dtype, device=device)
    for n0, n1 in _chunks(N, chunk):
        G = _logits(h, weight, bias, n0, n1, buf)
        if epilogue == "native":
            _epilogue("softmax_grad_chunk", "multinomial_nll backward", G, crow, col, N, n0,
                      lse=lse, scale=scale)  # fmt: skip
        else:
            _torch_grad_chunk(G, rows, col, n0, lse, counts, scale)
        if need_h:
            d_h.addmm_(G, weight[n0:n1])
        if need_params:
            torch.mm(G.t(), h, out=d_w[n0:n1])
            torch.sum(G, 0, out=d_b[n0:n1])
    return d_h, d_w, d_b


def _torch_grad_chunk(G, rows, col, n0, lse, counts, scale) -> None:
    """The backward epilogue as torch ops: G = scale (c_i softmax - [rated]), in place."""
    C = G.shape[1]
    G.sub_(lse[:, None]).exp_().mul_((counts * scale)[:, None])
    inside = (col >= n0) & (col < n0 + C)
    where = (col - n0).clamp(0, C - 1)
    G.index_put_((rows, where), torch.where(inside, -scale, 0.0).to(G.dtype), accumulate=True)


def _torch_checks(crow, col, n_cols, op) -> None:
    """The index checks the native epilogue makes, as torch ops on the batch's device,
    recorded in its error word (on a GPU read at the next sync the training loop makes)."""
    report_problem(crow.device, op, csr_problem(crow, col, n_cols))


# ------------------------------------------------------------------ the op
def _setup(ctx, inputs, output):
    h, weight, bias, crow, col, chunk, epilogue = inputs
    ctx.save_for_backward(h, weight, bias, crow, col, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.chunk, ctx.epilogue = chunk, epilogue


def _backward(ctx, grad_loss, _grad_lse):
    if grad_loss is None:  # eager path, materialize_grads off: no gradient for the loss
        return (None,) * 7
    h, weight, bias, crow, col, lse = ctx.saved_tensors
    need_h = ctx.needs_input_grad[0]
    need_params = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
    if not (need_h or need_params):
        return (None,) * 7
    d_h, d_w, d_b = MULTINOMIAL_NLL_BACKWARD.grad(
        ctx, grad_loss, h, weight, bias, crow, col, lse, ctx.chunk, ctx.epilogue, need_h,
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
    _forward_run,
    fake=lambda h, weight, bias, crow, col, chunk, epilogue: (
        h.new_empty(()),
        h.new_empty(h.shape[0]),
    ),
    setup=_setup,
    backward=_backward,
)


def _backward_fake(grad, h, weight, bias, crow, col, lse, chunk, epilogue, need_h, need_params):
    return (
        torch.empty_like(h) if need_h else h.new_empty(0),
        torch.empty_like(weight) if need_params else weight.new_empty(0),
        torch.empty_like(bias) if need_params else bias.new_empty(0),
    )


MULTINOMIAL_NLL_BACKWARD = Op(
    "multinomial_nll_backward", _check_backward, _backward_run, fake=_backward_fake
)
