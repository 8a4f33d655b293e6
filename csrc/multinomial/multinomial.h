// The epilogues of the chunked multinomial loss (Mult-DAE / Mult-VAE's output layer).
//
// The loss of a batch of B rows over N items is
//   L = (1 / B) * sum_i [ c_i * lse_i - sum_{k in row i} z_{i, col[k]} ],
// z = h W^T + b the logits, lse_i = log sum_j exp(z_ij), c_i the row's item count. The
// driver (deeprec/ops/multinomial.py) never holds more than one chunk of logits: it writes
// Z = h W[n0:n0+C]^T + b[n0:n0+C] (B x C, row stride ldz) with torch's GEMM and calls
// these kernels on it, which are the part torch has no op for:
//  - lse_chunk: the online log-sum-exp (a running max and sum per row, accumulated in
//    double across chunks) and the sum of the row's observed logits that fall in the chunk,
//    read straight from the CSR batch;
//  - softmax_grad_chunk: Z turned in place into the logit gradient
//    G_ij = scale * (c_i * exp(z_ij - lse_i) - [j is one of row i's items]),
//    which the driver then feeds to the GEMMs for dh, dW and db.
// The CSR batch: crow int64[B+1], col int32|int64[nnz] (strictly increasing in a row);
// its values are not read (who rated what). Chunk n0 == 0 starts a pass: it checks every
// offset and column of the batch (checks.h) and initialises the running state; every
// chunk checks each offset again and each column it uses before it indexes Z with it. A
// refused row contributes nothing and is reported through (err, err_tag).
#pragma once

#include <cstdint>

#include "checks.h"
#include "common.h"
#include "kernel_args.h"

namespace deeprec {

// Each epilogue's arguments, declared once (kernel_args.h): the chunk `Z` (B x C logits of
// items n0 .. n0 + C, row stride ldz), the batch's structure (crow, col, nnz, index_dtype)
// over N items, and its own state.
// lse_chunk: run_max, run_sum, observed: double[B], the running state of one pass (written,
// not read, when n0 == 0). After the last chunk lse_i = run_max[i] + log(run_sum[i]); a
// refused row keeps run_sum 0 (a row's own maximum adds at least 1), which marks it.
#define DEEPREC_LSE_CHUNK_ARGS(X)                                                          \
  X(const void*, Z) X(const int64_t*, crow) X(const void*, col) X(double*, run_max)       \
  X(double*, run_sum) X(double*, observed) X(int64_t, B) X(int64_t, N) X(int64_t, n0)     \
  X(int64_t, C) X(int64_t, ldz) X(int64_t, nnz) X(int, dtype) X(int, index_dtype)
DEEPREC_KERNEL_ARGS(LseChunkArgs, DEEPREC_LSE_CHUNK_ARGS)
// softmax_grad_chunk: lse: A[B], the forward's log-sum-exp per row; scale: one A (the
// incoming gradient over B), host memory on the CPU, device memory on CUDA. A is the
// compute type of the logits' dtype: the dtype itself, float for bfloat16 (the logits and
// the gradient written over them are bf16; the log-sum-exp, the softmax and the running
// state are not).
#define DEEPREC_SOFTMAX_GRAD_CHUNK_ARGS(X)                                                 \
  X(void*, Z) X(const int64_t*, crow) X(const void*, col) X(const void*, lse)             \
  X(const void*, scale) X(int64_t, B) X(int64_t, N) X(int64_t, n0) X(int64_t, C)          \
  X(int64_t, ldz) X(int64_t, nnz) X(int, dtype) X(int, index_dtype)
DEEPREC_KERNEL_ARGS(SoftmaxGradChunkArgs, DEEPREC_SOFTMAX_GRAD_CHUNK_ARGS)
inline constexpr int kMultinomialCpuDtypes[] = {kFloat32, kFloat64, kBFloat16};
inline constexpr int kMultinomialCudaDtypes[] = {kFloat32, kFloat64};

int lse_chunk_cpu(const LseChunkArgs& a, const CpuLaunch& on);
int softmax_grad_chunk_cpu(const SoftmaxGradChunkArgs& a, const CpuLaunch& on);
// CUDA twins on `on.stream` of `on.device` (one block per row; every pointer device memory).
int lse_chunk_cuda(const LseChunkArgs& a, const CudaLaunch& on);
int softmax_grad_chunk_cuda(const SoftmaxGradChunkArgs& a, const CudaLaunch& on);

// ------------------------------------------------ shared by cpu.cpp and cuda.cu (checks.h)
// The entries of row i (offsets [k0, k1), already checked) whose column lies in
// [n0, n0 + C): [*p0, *p1), found by binary search. Whatever col holds, the range stays
// inside [k0, k1); each column is still checked against the chunk before it is used.
template <typename I>
DEEPREC_HD void chunk_entries(const I* col, int64_t k0, int64_t k1, int64_t n0, int64_t C,
                              int64_t* p0, int64_t* p1) {
  auto lower = [&](int64_t lo, int64_t value) {
    int64_t hi = k1;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (static_cast<int64_t>(col[mid]) < value) lo = mid + 1; else hi = mid;
    }
    return lo;
  };
  *p0 = lower(k0, n0);
  *p1 = lower(*p0, n0 + C);
}

// Entry k's column as a position in the chunk [n0, n0 + C), or -1 (reported as out of
// order: after the first chunk's check only a batch edited since can get here).
template <typename I>
DEEPREC_HD int64_t chunk_column(const I* col, int64_t k, int64_t k0, int64_t n0, int64_t C,
                                ErrorSink err) {
  const int64_t j = static_cast<int64_t>(col[k]);
  if (j < n0 || j >= n0 + C) {
    report(err, kColOrder, k, j, k > k0 ? static_cast<int64_t>(col[k - 1]) : -1);
    return -1;
  }
  return j - n0;
}

}  // namespace deeprec
