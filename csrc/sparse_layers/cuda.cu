// CUDA kernels of the sparse input layer and the sparse output layer + loss
// (see sparse_layers.h). One block per batch row (spmm, sddmm) or per distinct
// column (col_accumulate), threads across the hidden width H, so every write
// has one owner: no atomics, deterministic results. The sddmm loss uses the
// same last-block reduction as the masked MSE. Every index is checked before use
// (checks.h); a refused one is skipped and recorded in the device error word.
#include <cuda_runtime.h>

#include <algorithm>

#include "checks.h"
#include "common.h"
#include "sparse_layers/sparse_layers.h"
#include "cuda_common.cuh"
#include "cuda_reduce.cuh"

namespace deeprec {

// The scalar types this file's entry points dispatch on: its header's table.
using Floats = Float32And64;
static_assert(same_codes(Floats{}, kSparseLayersCudaDtypes), "the dtype table and the dispatch differ");

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
                 T* __restrict__ out, int64_t B, int64_t N, int64_t H, int64_t nnz,
                 const T* __restrict__ scale, ErrorSink err) {
  const T s = read_scale(scale);
  for (int64_t i = blockIdx.x; i < B; i += gridDim.x) {
    int64_t k0 = 0, k1 = 0;  // a refused row has no entries
    row_entries(crow, i, B, nnz, err, &k0, &k1);
    for (int64_t c = threadIdx.x; c < H; c += kThreads) {
      T acc = bias != nullptr ? bias[c] : T(0);
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t j = entry_column(col, k, k0, N, err);
        if (j >= 0) acc += s * val[k] * W[j * H + c];
      }
      out[i * H + c] = acc;
    }
  }
}

template <typename T, typename I>
__global__ void __launch_bounds__(kThreads)
sddmm_residual_kernel(const int64_t* __restrict__ crow, const I* __restrict__ col,
                      const T* __restrict__ val, const T* __restrict__ h,
                      const T* __restrict__ W, const T* __restrict__ bias, T* __restrict__ resid,
                      T* __restrict__ loss, int64_t B, int64_t N, int64_t H, int64_t nnz,
                      double* __restrict__ partials, unsigned int* __restrict__ counter,
                      ErrorSink err) {
  __shared__ double smem[kThreads];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  double acc = 0.0;  // squared residuals summed by lane 0 of each warp, in double as on the CPU
  for (int64_t i = blockIdx.x; i < B; i += gridDim.x) {
    const T* hi = h + i * H;
    int64_t k0 = 0, k1 = 0;  // a refused row has no entries (its resid stays as zero-filled)
    row_entries(crow, i, B, nnz, err, &k0, &k1);
    for (int64_t k = k0 + warp; k < k1; k += kWarps) {
      // Lane 0 reads and checks the column; the warp follows its verdict as one.
      int64_t j = lane == 0 ? entry_column(col, k, k0, N, err) : 0;
      j = __shfl_sync(0xffffffffu, j, 0);
      if (j < 0) {
        if (lane == 0) resid[k] = T(0);
        continue;
      }
      const T* w = W + j * H;
      T dot = T(0);
      for (int64_t c = lane; c < H; c += 32) dot += hi[c] * w[c];
      for (int off = 16; off > 0; off >>= 1) dot += __shfl_down_sync(0xffffffffu, dot, off);
      if (lane == 0) {
        const T r = dot + (bias != nullptr ? bias[j] : T(0)) - val[k];
        resid[k] = r;
        acc += static_cast<double>(r) * static_cast<double>(r);
      }
    }
  }
  if (loss != nullptr) cuda::write_mean<kThreads>(acc, nnz, partials, counter, smem, loss);
}

template <typename T, typename I>
__global__ void __launch_bounds__(kThreads)
col_accumulate_kernel(const int64_t* __restrict__ perm, const int64_t* __restrict__ ucol,
                      const int64_t* __restrict__ uptr, const int64_t* __restrict__ rows,
                      const int64_t* __restrict__ crow, const I* __restrict__ col,
                      const T* __restrict__ coef, const T* __restrict__ A, T* __restrict__ dW,
                      T* __restrict__ db, int64_t U, int64_t N, int64_t B, int64_t H,
                      int64_t nnz, const T* __restrict__ scale, bool compact,
                      ErrorSink err) {
  const T s = read_scale(scale);
  // The batch's offsets, which each entry's row is checked against (group_entry).
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < B;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t k0 = 0, k1 = 0;
    row_entries(crow, i, B, nnz, err, &k0, &k1);
  }
  for (int64_t u = blockIdx.x; u < U; u += gridDim.x) {
    int64_t p0 = 0, p1 = 0, c = 0;
    // A refused group writes nothing (dense: its row stays zero; compact: row u is zeroed).
    const bool ok = column_group(ucol, uptr, u, U, N, nnz, err, &p0, &p1, &c);
    const int64_t j = compact ? u : c;
    if (!ok) {
      if (compact) {
        for (int64_t x = threadIdx.x; x < H; x += kThreads) dW[u * H + x] = T(0);
        if (db != nullptr && threadIdx.x == 0) db[u] = T(0);
      }
      continue;
    }
    for (int64_t x = threadIdx.x; x < H; x += kThreads) {
      T acc = T(0);
      for (int64_t p = p0; p < p1; ++p) {
        int64_t k = 0, r = 0;
        if (group_entry(perm, rows, crow, col, p, p0, c, B, nnz, err, &k, &r)) {
          acc += s * coef[k] * A[r * H + x];
        }
      }
      dW[j * H + x] = acc;
    }
    if (db != nullptr && threadIdx.x == 0) {
      T b = T(0);
      for (int64_t p = p0; p < p1; ++p) {
        int64_t k = 0, r = 0;
        if (group_entry(perm, rows, crow, col, p, p0, c, B, nnz, err, &k, &r)) b += s * coef[k];
      }
      db[j] = b;
    }
  }
  // No groups yet entries to group: the index covers none of them.
  if (U == 0 && nnz != 0 && blockIdx.x == 0 && threadIdx.x == 0) {
    report(err, kUptrOrder, 0, uptr[0], nnz);
  }
}

unsigned int grid_for(int64_t n) {
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(n, kSparseMaxBlocks)));
}

}  // namespace

int spmm_rows_cuda(const SpmmRowsArgs& a, const CudaLaunch& on) {
  if (a.index_dtype != kInt32 && a.index_dtype != kInt64) return kBadIndexDtype;
  cuda::DeviceGuard guard;
  if (const int st = cuda::fail(guard.set(on.device))) return st;
  if (a.B == 0 || a.H == 0) return kOk;
  auto s = static_cast<cudaStream_t>(on.stream);
  return dispatch(Floats{}, a.dtype, a.index_dtype, [&](auto t, auto i) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    spmm_rows_kernel<T, I><<<grid_for(a.B), kThreads, 0, s>>>(
        a.crow, static_cast<const I*>(a.col), static_cast<const T*>(a.val),
        static_cast<const T*>(a.W), static_cast<const T*>(a.bias), static_cast<T*>(a.out), a.B,
        a.N, a.H, a.nnz, static_cast<const T*>(a.scale), sink_of(on));
    return cuda::check_launch();
  });
}

int sddmm_residual_cuda(const SddmmResidualArgs& a, const CudaLaunch& on) {
  if (a.index_dtype != kInt32 && a.index_dtype != kInt64) return kBadIndexDtype;
  cuda::DeviceGuard guard;
  if (const int st = cuda::fail(guard.set(on.device))) return st;
  auto s = static_cast<cudaStream_t>(on.stream);
  if (a.B == 0) {  // no rows: the loss is 0 (all-zero bits)
    if (a.loss == nullptr) return kOk;
    return cuda::fail(cudaMemsetAsync(a.loss, 0, dtype_size(a.dtype), s));
  }
  // Zero first: the entries of a refused row are never written (a refused batch's
  // residuals are 0 where the refusal is read later).
  if (const int st = cuda::fail(cudaMemsetAsync(a.resid, 0, a.nnz * dtype_size(a.dtype), s))) {
    return st;
  }
  return dispatch(Floats{}, a.dtype, a.index_dtype, [&](auto t, auto i) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    sddmm_residual_kernel<T, I><<<grid_for(a.B), kThreads, 0, s>>>(
        a.crow, static_cast<const I*>(a.col), static_cast<const T*>(a.val),
        static_cast<const T*>(a.h), static_cast<const T*>(a.W), static_cast<const T*>(a.bias),
        static_cast<T*>(a.resid), static_cast<T*>(a.loss), a.B, a.N, a.H, a.nnz,
        static_cast<double*>(on.partials), static_cast<unsigned int*>(on.counter),
        sink_of(on));
    return cuda::check_launch();
  });
}

int col_accumulate_cuda(const ColAccumulateArgs& a, const CudaLaunch& on) {
  cuda::DeviceGuard guard;
  if (const int st = cuda::fail(guard.set(on.device))) return st;
  auto s = static_cast<cudaStream_t>(on.stream);
  const size_t elem = dtype_size(a.dtype);
  cudaError_t status = cudaSuccess;
  if (!a.compact) {  // untouched rows stay zero; compact output has no untouched rows
    status = cudaMemsetAsync(a.dW, 0, static_cast<size_t>(a.N * a.H) * elem, s);
    if (status == cudaSuccess && a.db != nullptr) {
      status = cudaMemsetAsync(a.db, 0, static_cast<size_t>(a.N) * elem, s);
    }
  }
  if (status != cudaSuccess) return cuda::fail(status);
  return dispatch(Floats{}, a.dtype, a.index_dtype, [&](auto t, auto i) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    col_accumulate_kernel<T, I><<<grid_for(a.U), kThreads, 0, s>>>(
        a.perm, a.ucol, a.uptr, a.rows, a.crow, static_cast<const I*>(a.col),
        static_cast<const T*>(a.coef), static_cast<const T*>(a.A), static_cast<T*>(a.dW),
        static_cast<T*>(a.db), a.U, a.N, a.B, a.H, a.nnz, static_cast<const T*>(a.scale),
        a.compact, sink_of(on));
    return cuda::check_launch();
  });
}

}  // namespace deeprec
