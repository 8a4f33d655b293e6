// Device helpers shared by the CUDA kernels: the arithmetic type of a scalar type (float
// for float and both half types) and its conversions, a fixed-order block sum, and a deterministic grid-wide sum
// (one partial per block; the last block to finish adds them in block order,
// found with an integer atomic; no float atomics anywhere).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace deeprec {
namespace cuda {

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename T, typename A> __device__ __forceinline__ A to_acc(T x) { return static_cast<A>(x); }
template <> __device__ __forceinline__ float to_acc<__half, float>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_acc<__nv_bfloat16, float>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T, typename A> __device__ __forceinline__ T from_acc(A x) { return static_cast<T>(x); }
template <> __device__ __forceinline__ __half from_acc<__half, float>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float x) { return __float2bfloat16_rn(x); }

// Sum of one value per thread in a fixed order; valid in every thread. kThreads is blockDim.x.
template <int kThreads, typename A>
__device__ A block_sum(A v, A* smem) {
  __syncthreads();  // smem may still be read by a previous call
  smem[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) smem[threadIdx.x] += smem[threadIdx.x + s];
    __syncthreads();
  }
  return smem[0];
}

// Every block calls this with its block-wide total (all threads, same value). Returns true in
// the one block that finishes last, where *total holds the sum of all blocks' values in block
// order; `counter` is reset to zero there so the workspace can be reused.
template <int kThreads, typename A>
__device__ bool grid_sum_last_block(A block_total, A* partials, unsigned int* counter, A* smem,
                                    A* total) {
  __shared__ bool is_last;
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = block_total;
    __threadfence();
    is_last = (atomicAdd(counter, 1u) == gridDim.x - 1);
  }
  __syncthreads();
  if (!is_last) return false;
  __threadfence();
  const volatile A* vp = partials;
  A part = A(0);
  for (int b = threadIdx.x; b < static_cast<int>(gridDim.x); b += kThreads) part += vp[b];
  *total = block_sum<kThreads>(part, smem);
  if (threadIdx.x == 0) *counter = 0u;
  return true;
}

// The mean of every thread's `acc` (a sum of squares, in double) over `count` terms, written
// to *loss (converted to T) by the block that finishes last; every thread of every block
// calls it. `smem` holds kThreads doubles.
template <int kThreads, typename T>
__device__ void write_mean(double acc, int64_t count, double* partials, unsigned int* counter,
                           double* smem, T* loss) {
  const double block_total = block_sum<kThreads>(acc, smem);
  double all;
  if (grid_sum_last_block<kThreads>(block_total, partials, counter, smem, &all) &&
      threadIdx.x == 0) {
    using A = typename Acc<T>::type;
    *loss = from_acc<T, A>(static_cast<A>(count > 0 ? all / static_cast<double>(count) : 0.0));
  }
}

}  // namespace cuda
}  // namespace deeprec
