// CUDA epilogues of the chunked multinomial loss (see multinomial.h). One block per batch
// row (grid-stride), threads across the chunk's columns: block-wide max and sum reductions
// in a fixed order (deterministic), each written value owned by one thread. Every offset
// and column is checked before use (checks.h) and a refused one recorded in the device
// error word. Compiled in every CUDA build; the driver runs it only where it has passed a
// measured GPU run (deeprec/ops/multinomial.py), else torch ops do the epilogue.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "checks.h"
#include "common.h"
#include "multinomial/multinomial.h"
#include "cuda_common.cuh"

namespace deeprec {

using Floats = Float32And64;
static_assert(same_codes(Floats{}, kMultinomialCudaDtypes), "the dtype table and the dispatch differ");

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;

__device__ __forceinline__ float exp_of(float x) { return expf(x); }
__device__ __forceinline__ double exp_of(double x) { return exp(x); }

// Block-wide sum and max of one value per thread, in a fixed order; valid in every thread.
template <typename A, typename Op>
__device__ A block_reduce(A v, A* smem, Op op) {
  __syncthreads();  // smem may still be read by a previous call
  smem[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) smem[threadIdx.x] = op(smem[threadIdx.x], smem[threadIdx.x + s]);
    __syncthreads();
  }
  return smem[0];
}

// Whether every offset and column of row i passes (checks.h), decided by the whole block.
template <typename I>
__device__ bool row_checked(const int64_t* crow, const I* col, int64_t i, int64_t B, int64_t N,
                            int64_t nnz, ErrorSink err) {
  int64_t k0 = 0, k1 = 0;
  int bad = row_entries(crow, i, B, nnz, err, &k0, &k1) ? 0 : 1;
  for (int64_t k = k0 + threadIdx.x; k < k1; k += kThreads) {
    if (entry_column(col, k, k0, N, err) < 0) bad = 1;
  }
  return __syncthreads_or(bad) == 0;
}


struct Max {
  template <typename A>
  __device__ A operator()(A a, A b) const { return b > a ? b : a; }
};
struct Sum {
  template <typename A>
  __device__ A operator()(A a, A b) const { return a + b; }
};

template <typename T, typename I>
__global__ void __launch_bounds__(kThreads)
lse_chunk_kernel(const T* __restrict__ Z, const int64_t* __restrict__ crow,
                 const I* __restrict__ col, double* __restrict__ run_max,
                 double* __restrict__ run_sum, double* __restrict__ observed, int64_t B,
                 int64_t N, int64_t n0, int64_t C, int64_t ldz, int64_t nnz, ErrorSink err) {
  __shared__ double smem[kThreads];
  for (int64_t i = blockIdx.x; i < B; i += gridDim.x) {
    const T* z = Z + i * ldz;
    double m_old = -INFINITY, s_old = 0.0, obs_old = 0.0;
    if (n0 == 0) {
      if (!row_checked(crow, col, i, B, N, nnz, err)) {
        if (threadIdx.x == 0) run_max[i] = -INFINITY, run_sum[i] = 0.0, observed[i] = 0.0;
        continue;
      }
    } else {
      m_old = run_max[i], s_old = run_sum[i], obs_old = observed[i];
    }
    int64_t k0 = 0, k1 = 0, p0 = 0, p1 = 0;
    // A row refused here keeps its state (a row refused at the first chunk: sum 0, which the
    // driver reads as refused); the condition is the block's own, so all its threads agree.
    if (!row_entries(crow, i, B, nnz, err, &k0, &k1)) continue;
    double m = -INFINITY;
    for (int64_t c = threadIdx.x; c < C; c += kThreads) m = fmax(m, static_cast<double>(z[c]));
    const double m_chunk = block_reduce(m, smem, Max{});
    const double m_new = fmax(m_old, m_chunk);
    double s = 0.0;
    for (int64_t c = threadIdx.x; c < C; c += kThreads) {
      s += static_cast<double>(exp_of(z[c] - static_cast<T>(m_new)));
    }
    s = block_reduce(s, smem, Sum{});
    double obs = 0.0;
    chunk_entries(col, k0, k1, n0, C, &p0, &p1);
    for (int64_t k = p0 + threadIdx.x; k < p1; k += kThreads) {
      const int64_t c = chunk_column(col, k, k0, n0, C, err);
      if (c >= 0) obs += static_cast<double>(z[c]);
    }
    obs = block_reduce(obs, smem, Sum{});
    if (threadIdx.x == 0) {
      run_sum[i] = (m_old == m_new ? s_old : s_old * exp(m_old - m_new)) + s;
      run_max[i] = m_new;
      observed[i] = obs_old + obs;
    }
  }
}

template <typename T, typename I>
__global__ void __launch_bounds__(kThreads)
softmax_grad_chunk_kernel(T* __restrict__ Z, const int64_t* __restrict__ crow,
                          const I* __restrict__ col, const T* __restrict__ lse,
                          const T* __restrict__ scale, int64_t B, int64_t N, int64_t n0,
                          int64_t C, int64_t ldz, int64_t nnz, ErrorSink err) {
  const T s = scale != nullptr ? *scale : T(1);
  for (int64_t i = blockIdx.x; i < B; i += gridDim.x) {
    T* z = Z + i * ldz;
    bool ok = n0 != 0 || row_checked(crow, col, i, B, N, nnz, err);
    int64_t k0 = 0, k1 = 0, p0 = 0, p1 = 0;
    ok = ok && row_entries(crow, i, B, nnz, err, &k0, &k1);
    if (!ok || k1 == k0) {
      for (int64_t c = threadIdx.x; c < C; c += kThreads) z[c] = T(0);
      continue;
    }
    const T factor = s * static_cast<T>(k1 - k0), shift = lse[i];
    for (int64_t c = threadIdx.x; c < C; c += kThreads) z[c] = factor * exp_of(z[c] - shift);
    __syncthreads();  // the softmax part of the row before its correction
    chunk_entries(col, k0, k1, n0, C, &p0, &p1);
    for (int64_t k = p0 + threadIdx.x; k < p1; k += kThreads) {
      const int64_t c = chunk_column(col, k, k0, n0, C, err);
      if (c >= 0) z[c] -= s;
    }
    __syncthreads();  // the block moves on to its next row together
  }
}

unsigned int blocks_for(int64_t B) {
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(B, kMaxBlocks)));
}

// Both epilogues' entry: ``device`` current for the call (the caller's restored after),
// nothing to launch for an empty batch, and ``launch(t, i)`` for the dtypes of the table;
// the launch's own error is the result.
template <typename Launch>
int on_device(int device, int64_t B, int dtype, int index_dtype, Launch&& launch) {
  cuda::DeviceGuard guard;
  if (const int st = cuda::fail(guard.set(device))) return st;
  if (B == 0) return kOk;
  return dispatch(Floats{}, dtype, index_dtype, [&](auto t, auto i) {
    launch(t, i);
    return cuda::check_launch();
  });
}

}  // namespace

int lse_chunk_cuda(const LseChunkArgs& a, const CudaLaunch& on) {
  cudaStream_t s = static_cast<cudaStream_t>(on.stream);
  return on_device(on.device, a.B, a.dtype, a.index_dtype, [&](auto t, auto i) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    lse_chunk_kernel<T, I><<<blocks_for(a.B), kThreads, 0, s>>>(
        static_cast<const T*>(a.Z), a.crow, static_cast<const I*>(a.col), a.run_max, a.run_sum,
        a.observed, a.B, a.N, a.n0, a.C, a.ldz, a.nnz, sink_of(on));
  });
}

int softmax_grad_chunk_cuda(const SoftmaxGradChunkArgs& a, const CudaLaunch& on) {
  cudaStream_t s = static_cast<cudaStream_t>(on.stream);
  return on_device(on.device, a.B, a.dtype, a.index_dtype, [&](auto t, auto i) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    softmax_grad_chunk_kernel<T, I><<<blocks_for(a.B), kThreads, 0, s>>>(
        static_cast<T*>(a.Z), a.crow, static_cast<const I*>(a.col),
        static_cast<const T*>(a.lse), static_cast<const T*>(a.scale), a.B, a.N, a.n0, a.C,
        a.ldz, a.nnz, sink_of(on));
  });
}

}  // namespace deeprec
