// CUDA row-sparse Adam (see row_adam.h). One block per parameter row (exact:
// all N rows, each finding its gradient row by binary search in the sorted
// ucol; lazy: the U touched rows), threads across H. Each element has one
// writer, so the update is deterministic.
#include <cuda_runtime.h>

#include <algorithm>

#include "../common.h"
#include "../row_adam.h"
#include "common.cuh"

namespace deeprec {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kMaxBlocks = 65535;

template <typename T>
__global__ void __launch_bounds__(kThreads)
row_adam_kernel(T* __restrict__ p, T* __restrict__ m, T* __restrict__ v, const T* __restrict__ g,
                const int64_t* __restrict__ ucol, int64_t U, int64_t rows, int64_t H, T step_size,
                T inv_sqrt_bc2, T b1, T b2, T eps, T wd, bool lazy) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t j = r, gu = -1;
    if (lazy) {
      j = ucol[r];
      gu = r;
    } else {  // binary search for row j among the touched rows
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

int row_adam_cuda(void* p, void* m, void* v, const void* g, const int64_t* ucol, int64_t U,
                  int64_t N, int64_t H, double step_size, double inv_sqrt_bc2, double b1,
                  double b2, double eps, double wd, bool lazy, int dtype, int device,
                  void* stream) {
  cuda::DeviceGuard guard;
  if (const int st = cuda::fail(guard.set(device))) return st;
  const int64_t rows = lazy ? U : N;
  if (rows == 0 || H == 0) return kOk;
  const unsigned int blocks = static_cast<unsigned int>(std::min(rows, kMaxBlocks));
  auto s = static_cast<cudaStream_t>(stream);
  return dispatch_dtype(CpuFloats{}, dtype, [&](auto t) {
    using T = typename decltype(t)::type;
    row_adam_kernel<T><<<blocks, kThreads, 0, s>>>(
        static_cast<T*>(p), static_cast<T*>(m), static_cast<T*>(v), static_cast<const T*>(g),
        ucol, U, rows, H, static_cast<T>(step_size), static_cast<T>(inv_sqrt_bc2),
        static_cast<T>(b1), static_cast<T>(b2), static_cast<T>(eps), static_cast<T>(wd), lazy);
    return cuda::check_launch();
  });
}

}  // namespace deeprec
