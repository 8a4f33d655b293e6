// CUDA row-sparse Adam (see row_adam.h). One block per parameter row (exact:
// all N rows, each finding its gradient row by binary search in the sorted
// ucol; lazy: the U touched rows), threads across H. Each element has one
// writer, so the update is deterministic. Each row id is checked (checks.h): a refused
// one is skipped and recorded in the device error word.
#include <cuda_runtime.h>

#include <algorithm>

#include "checks.h"
#include "common.h"
#include "row_adam/row_adam.h"
#include "cuda_common.cuh"

namespace deeprec {

// The scalar types this file's entry points dispatch on: its header's table.
using Floats = Float32And64;
static_assert(same_codes(Floats{}, kRowAdamCudaDtypes), "the dtype table and the dispatch differ");

namespace {

constexpr int kThreads = 128;
constexpr int64_t kMaxBlocks = 65535;

template <typename T>
__global__ void __launch_bounds__(kThreads)
row_adam_kernel(T* __restrict__ p, T* __restrict__ m, T* __restrict__ v, const T* __restrict__ g,
                const int64_t* __restrict__ ucol, int64_t U, int64_t N, int64_t H, T step_size,
                T inv_sqrt_bc2, T b1, T b2, T eps, T wd, bool lazy, ErrorSink err) {
  // Exact: blocks cover the N parameter rows and check the U ids on the way; lazy: the U ids.
  const int64_t span = lazy ? U : (N > U ? N : U);
  for (int64_t r = blockIdx.x; r < span; r += gridDim.x) {
    int64_t j = r, gu = -1;
    if (lazy) {
      j = grad_row(ucol, r, N, err);
      if (j < 0) continue;
      gu = r;
    } else {
      if (r < U && threadIdx.x == 0) grad_row(ucol, r, N, err);
      if (r >= N) continue;
      // Binary search for row j among the touched rows (a search over ids the check
      // refuses may miss; that launch reports the failure either way).
      int64_t lo = 0, hi = U;
      while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (ucol[mid] < j) lo = mid + 1; else hi = mid;
      }
      if (lo < U && ucol[lo] == j) gu = lo;
    }
    for (int64_t x = threadIdx.x; x < H; x += kThreads) {
      const int64_t i = j * H + x;
      const T grad = (gu >= 0 ? g[gu * H + x] : T(0)) + wd * p[i];
      const T mx = b1 * m[i] + (T(1) - b1) * grad;
      const T vx = b2 * v[i] + (T(1) - b2) * grad * grad;
      m[i] = mx;
      v[i] = vx;
      p[i] -= step_size * mx / (sqrt(vx) * inv_sqrt_bc2 + eps);
    }
  }
}

}  // namespace

int row_adam_cuda(const RowAdamArgs& a, const CudaLaunch& on) {
  cuda::DeviceGuard guard;
  if (const int st = cuda::fail(guard.set(on.device))) return st;
  const int64_t rows = a.lazy ? a.U : std::max(a.N, a.U);
  if (rows == 0 || a.H == 0) return kOk;
  const unsigned int blocks = static_cast<unsigned int>(std::min(rows, kMaxBlocks));
  auto s = static_cast<cudaStream_t>(on.stream);
  return dispatch_dtype(Floats{}, a.dtype, [&](auto t) {
    using T = typename decltype(t)::type;
    row_adam_kernel<T><<<blocks, kThreads, 0, s>>>(
        static_cast<T*>(a.p), static_cast<T*>(a.m), static_cast<T*>(a.v),
        static_cast<const T*>(a.g), a.ucol, a.U, a.N, a.H, static_cast<T>(a.step_size),
        static_cast<T>(a.inv_sqrt_bc2), static_cast<T>(a.b1), static_cast<T>(a.b2),
        static_cast<T>(a.eps), static_cast<T>(a.wd), a.lazy, sink_of(on));
    return cuda::check_launch();
  });
}

}  // namespace deeprec
