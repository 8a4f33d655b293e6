// CUDA kernels for the fused masked MSE (see masked_mse.h for the contract).
//
// One launch computes the loss and/or the gradient. Each block owns whole
// rows (grid-stride over rows): it zero-fills the gradient row, syncs, then
// scatters the stored entries, so no two threads write one element. The loss
// is reduced without float atomics: a fixed-order tree inside each block, one
// partial per block, and the last block to finish (found with an integer
// atomic counter) adds the partials in block order. The grid size depends only
// on B, so the result is bitwise reproducible run to run. Each row's offsets and
// each entry's column are checked before use (checks.h); a refused row or entry
// is skipped and recorded in the device error word, never a device-side assert.
#include <algorithm>

#include "checks.h"
#include "common.h"
#include "masked_mse/masked_mse.h"
#include "cuda_common.cuh"
#include "cuda_reduce.cuh"

namespace deeprec {

// The scalar types this file's entry points dispatch on: its header's table.
using Floats = Float32To16;
static_assert(same_codes(Floats{}, kMaskedMseCudaDtypes), "the dtype table and the dispatch differ");

namespace {

constexpr int kThreads = 256;
using cuda::Acc;
using cuda::from_acc;
using cuda::to_acc;

template <typename T> __device__ __forceinline__ T zero() { return T(0); }
template <> __device__ __forceinline__ __half zero<__half>() { return __float2half_rn(0.f); }
template <> __device__ __forceinline__ __nv_bfloat16 zero<__nv_bfloat16>() { return __float2bfloat16_rn(0.f); }

template <typename T, typename I>
__global__ void __launch_bounds__(kThreads)
masked_mse_kernel(const T* __restrict__ out, const int64_t* __restrict__ crow,
                  const I* __restrict__ col, const T* __restrict__ val, int64_t B, int64_t N,
                  int64_t nnz, typename Acc<T>::type* __restrict__ loss, T* __restrict__ grad,
                  const typename Acc<T>::type* __restrict__ grad_scale,
                  double* __restrict__ partials,
                  unsigned int* __restrict__ counter, ErrorSink err) {
  using A = typename Acc<T>::type;  // the gradient's arithmetic
  __shared__ double smem[kThreads];
  const A inv_nnz = nnz > 0 ? A(1) / static_cast<A>(nnz) : A(0);
  A coef = A(0);
  if (grad != nullptr) {
    coef = A(2) * inv_nnz;
    if (grad_scale != nullptr) coef *= *grad_scale;
  }
  double acc = 0.0;  // the loss's squared residuals, summed in double as on the CPU
  for (int64_t row = blockIdx.x; row < B; row += gridDim.x) {
    const T* o = out + row * N;
    int64_t k0 = 0, k1 = 0;  // a refused row has no entries
    row_entries(crow, row, B, nnz, err, &k0, &k1);
    if (grad != nullptr) {
      T* g = grad + row * N;
      for (int64_t j = threadIdx.x; j < N; j += kThreads) g[j] = zero<T>();
      __syncthreads();  // zero-fill of this row before its scatter
    }
    for (int64_t k = k0 + threadIdx.x; k < k1; k += kThreads) {
      const int64_t j = entry_column(col, k, k0, N, err);
      if (j < 0) continue;
      const A d = to_acc<T, A>(o[j]) - to_acc<T, A>(val[k]);
      const double dd = static_cast<double>(d);
      acc += dd * dd;
      if (grad != nullptr) grad[row * N + j] = from_acc<T, A>(coef * d);
    }
  }
  if (loss != nullptr) cuda::write_mean<kThreads>(acc, nnz, partials, counter, smem, loss);
}

template <typename T, typename I>
int launch(const MaskedMseArgs& a, const CudaLaunch& on, cudaStream_t stream) {
  const unsigned int blocks =
      static_cast<unsigned int>(std::min<int64_t>(a.B, kMaskedMseMaxBlocks));
  masked_mse_kernel<T, I><<<blocks, kThreads, 0, stream>>>(
      static_cast<const T*>(a.out), a.crow, static_cast<const I*>(a.col),
      static_cast<const T*>(a.val), a.B, a.N, a.nnz, static_cast<typename Acc<T>::type*>(a.loss),
      static_cast<T*>(a.grad), static_cast<const typename Acc<T>::type*>(a.grad_scale),
      static_cast<double*>(on.partials), static_cast<unsigned int*>(on.counter), sink_of(on));
  return cuda::check_launch();
}

}  // namespace

int masked_mse_cuda(const MaskedMseArgs& a, const CudaLaunch& on) {
  cuda::DeviceGuard guard;
  if (const int st = cuda::fail(guard.set(on.device))) return st;
  cudaStream_t s = static_cast<cudaStream_t>(on.stream);
  if (a.B == 0) {  // nothing to launch; the loss of an empty batch is 0 (all-zero bits)
    if (a.loss == nullptr) return kOk;
    return cuda::fail(cudaMemsetAsync(a.loss, 0, a.dtype == kFloat64 ? 8 : 4, s));
  }
  return dispatch(Floats{}, a.dtype, a.index_dtype, [&](auto t, auto i) {
    return launch<typename decltype(t)::type, typename decltype(i)::type>(a, on, s);
  });
}

}  // namespace deeprec
