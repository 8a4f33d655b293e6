// CUDA kernels of the sparse input layer and the sparse output layer + loss
// (see sparse_layers.h). One block per batch row (spmm, sddmm) or per distinct
// column (col_accumulate), threads across the hidden width H, so every write
// has one owner: no atomics, deterministic results. The sddmm loss uses the
// same last-block reduction as the masked MSE.
#include <cuda_runtime.h>

#include <algorithm>

#include "../common.h"
#include "../sparse_layers.h"
#include "common.cuh"
#include "reduce.cuh"

namespace deeprec {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

template <typename T>
__device__ __forceinline__ T read_scale(const T* p) {
  return p != nullptr ? *p : T(1);
}

template <typename T, typename I>
__global__ void __launch_bounds__(kThreads)
spmm_rows_kernel(const int64_t* __restrict__ crow, const I* __restrict__ col,
                 const T* __restrict__ val, const T* __restrict__ W, const T* __restrict__ bias,
                 T* __restrict__ out, int64_t B, int64_t H, const T* __restrict__ scale_ptr) {
  const T s = read_scale(scale_ptr);
  for (int64_t i = blockIdx.x; i < B; i += gridDim.x) {
    const int64_t k0 = crow[i], k1 = crow[i + 1];
    for (int64_t c = threadIdx.x; c < H; c += kThreads) {
      T acc = bias != nullptr ? bias[c] : T(0);
      for (int64_t k = k0; k < k1; ++k) acc += s * val[k] * W[static_cast<int64_t>(col[k]) * H + c];
      out[i * H + c] = acc;
    }
  }
}

template <typename T, typename I>
__global__ void __launch_bounds__(kThreads)
sddmm_residual_kernel(const int64_t* __restrict__ crow, const I* __restrict__ col,
                      const T* __restrict__ val, const T* __restrict__ h,
                      const T* __restrict__ W, const T* __restrict__ bias, T* __restrict__ resid,
                      T* __restrict__ loss, int64_t B, int64_t H, int64_t nnz,
                      T* __restrict__ partials, unsigned int* __restrict__ counter) {
  __shared__ T smem[kThreads];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  T acc = T(0);  // squared residuals summed by lane 0 of each warp
  for (int64_t i = blockIdx.x; i < B; i += gridDim.x) {
    const T* hi = h + i * H;
    for (int64_t k = crow[i] + warp; k < crow[i + 1]; k += kWarps) {
      const int64_t j = static_cast<int64_t>(col[k]);
      const T* w = W + j * H;
      T dot = T(0);
      for (int64_t c = lane; c < H; c += 32) dot += hi[c] * w[c];
      for (int off = 16; off > 0; off >>= 1) dot += __shfl_down_sync(0xffffffffu, dot, off);
      if (lane == 0) {
        const T r = dot + bias[j] - val[k];
        resid[k] = r;
        acc += r * r;
      }
    }
  }
  if (loss == nullptr) return;
  const T block_total = cuda::block_sum<kThreads>(acc, smem);
  T all;
  if (cuda::grid_sum_last_block<kThreads>(block_total, partials, counter, smem, &all) &&
      threadIdx.x == 0) {
    *loss = nnz > 0 ? all / static_cast<T>(nnz) : T(0);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
col_accumulate_kernel(const int64_t* __restrict__ perm, const int64_t* __restrict__ ucol,
                      const int64_t* __restrict__ uptr, const int64_t* __restrict__ rows,
                      const T* __restrict__ coef, const T* __restrict__ A, T* __restrict__ dW,
                      T* __restrict__ db, int64_t U, int64_t H, const T* __restrict__ scale_ptr,
                      bool compact) {
  const T s = read_scale(scale_ptr);
  for (int64_t u = blockIdx.x; u < U; u += gridDim.x) {
    const int64_t p0 = uptr[u], p1 = uptr[u + 1], j = compact ? u : ucol[u];
    for (int64_t x = threadIdx.x; x < H; x += kThreads) {
      T acc = T(0);
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t k = perm[p];
        acc += s * coef[k] * A[rows[k] * H + x];
      }
      dW[j * H + x] = acc;
    }
    if (db != nullptr && threadIdx.x == 0) {
      T b = T(0);
      for (int64_t p = p0; p < p1; ++p) b += s * coef[perm[p]];
      db[j] = b;
    }
  }
}

unsigned int grid_for(int64_t n) {
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(n, kSparseMaxBlocks)));
}

}  // namespace

int spmm_rows_cuda(const int64_t* crow, const void* col, const void* val, const void* W,
                   const void* bias, void* out, int64_t B, int64_t H, const void* scale_ptr,
                   int dtype, int index_dtype, int device, void* stream) {
  if (index_dtype != kInt32 && index_dtype != kInt64) return kBadIndexDtype;
  cuda::DeviceGuard guard;
  if (const int err = cuda::fail(guard.set(device))) return err;
  if (B == 0 || H == 0) return kOk;
  auto s = static_cast<cudaStream_t>(stream);
  return dispatch(CpuFloats{}, dtype, index_dtype, [&](auto t, auto i) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    spmm_rows_kernel<T, I><<<grid_for(B), kThreads, 0, s>>>(
        crow, static_cast<const I*>(col), static_cast<const T*>(val), static_cast<const T*>(W),
        static_cast<const T*>(bias), static_cast<T*>(out), B, H,
        static_cast<const T*>(scale_ptr));
    return cuda::check_launch();
  });
}

int sddmm_residual_cuda(const int64_t* crow, const void* col, const void* val, const void* h,
                        const void* W, const void* bias, void* resid, void* loss, int64_t B,
                        int64_t H, int64_t nnz, int dtype, int index_dtype, void* partials,
                        void* counter, int device, void* stream) {
  if (index_dtype != kInt32 && index_dtype != kInt64) return kBadIndexDtype;
  cuda::DeviceGuard guard;
  if (const int err = cuda::fail(guard.set(device))) return err;
  auto s = static_cast<cudaStream_t>(stream);
  if (B == 0) {  // no rows: the loss is 0 (all-zero bits)
    if (loss == nullptr) return kOk;
    return cuda::fail(cudaMemsetAsync(loss, 0, dtype == kFloat64 ? 8 : 4, s));
  }
  return dispatch(CpuFloats{}, dtype, index_dtype, [&](auto t, auto i) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    sddmm_residual_kernel<T, I><<<grid_for(B), kThreads, 0, s>>>(
        crow, static_cast<const I*>(col), static_cast<const T*>(val), static_cast<const T*>(h),
        static_cast<const T*>(W), static_cast<const T*>(bias), static_cast<T*>(resid),
        static_cast<T*>(loss), B, H, nnz, static_cast<T*>(partials),
        static_cast<unsigned int*>(counter));
    return cuda::check_launch();
  });
}

int col_accumulate_cuda(const int64_t* perm, const int64_t* ucol, const int64_t* uptr,
                        const int64_t* rows, const void* coef, const void* A, void* dW, void* db,
                        int64_t U, int64_t N, int64_t H, const void* scale_ptr, int dtype,
                        bool compact, int device, void* stream) {
  cuda::DeviceGuard guard;
  if (const int err = cuda::fail(guard.set(device))) return err;
  auto s = static_cast<cudaStream_t>(stream);
  const size_t elem = dtype == kFloat64 ? 8 : 4;
  cudaError_t err = cudaSuccess;
  if (!compact) {  // untouched rows stay zero; compact output has no untouched rows
    err = cudaMemsetAsync(dW, 0, static_cast<size_t>(N * H) * elem, s);
    if (err == cudaSuccess && db != nullptr) err = cudaMemsetAsync(db, 0, static_cast<size_t>(N) * elem, s);
  }
  if (err != cudaSuccess) return cuda::fail(err);
  if (U == 0) return kOk;
  return dispatch_dtype(CpuFloats{}, dtype, [&](auto t) {
    using T = typename decltype(t)::type;
    col_accumulate_kernel<T><<<grid_for(U), kThreads, 0, s>>>(
        perm, ucol, uptr, rows, static_cast<const T*>(coef), static_cast<const T*>(A),
        static_cast<T*>(dW), static_cast<T*>(db), U, H, static_cast<const T*>(scale_ptr), compact);
    return cuda::check_launch();
  });
}

}  // namespace deeprec
