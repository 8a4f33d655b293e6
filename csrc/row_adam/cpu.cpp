// CPU row-sparse Adam (see row_adam.h). Threads own disjoint row ranges; the
// per-row update is compiled for AVX-512 / AVX2 / x86-64 (DEEPREC_SIMD_FN). The row ids
// are checked in one pass first; if one is refused, nothing is updated.
#include <algorithm>
#include <cmath>

#include "checks.h"
#include "common.h"
#include "row_adam/row_adam.h"

namespace deeprec {

// The scalar types this file's entry points dispatch on: its header's table.
using Floats = Float32And64;
static_assert(same_codes(Floats{}, kRowAdamCpuDtypes), "the dtype table and the dispatch differ");

namespace {

template <typename T>
struct AdamCoef {
  T step_size, inv_sqrt_bc2, b1, one_b1, b2, one_b2, eps, wd;
};

// One row; g == nullptr means a zero gradient row.
template <typename T>
DEEPREC_INLINE void adam_row_body(T* __restrict p, T* __restrict m, T* __restrict v,
                                  const T* __restrict g, int64_t H, AdamCoef<T> c) {
  for (int64_t x = 0; x < H; ++x) {
    T grad = (g != nullptr ? g[x] : T(0)) + c.wd * p[x];
    const T mx = c.b1 * m[x] + c.one_b1 * grad;
    const T vx = c.b2 * v[x] + c.one_b2 * grad * grad;
    m[x] = mx;
    v[x] = vx;
    p[x] -= c.step_size * mx / (std::sqrt(vx) * c.inv_sqrt_bc2 + c.eps);
  }
}
DEEPREC_SIMD_FN(adam_row)

template <typename T>
void row_adam(T* p, T* m, T* v, const T* g, const int64_t* ucol, int64_t U, int64_t N, int64_t H,
              AdamCoef<T> c, bool lazy, int num_threads) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(H, 1));
  if (lazy) {
    parallel_for(U, num_threads, grain, [&](int64_t b, int64_t e) {
      for (int64_t u = b; u < e; ++u) {
        const int64_t j = ucol[u];
        adam_row(p + j * H, m + j * H, v + j * H, g + u * H, H, c);
      }
    });
    return;
  }
  parallel_for(N, num_threads, grain, [&](int64_t b, int64_t e) {
    int64_t u = std::lower_bound(ucol, ucol + U, b) - ucol;
    for (int64_t j = b; j < e; ++j) {
      const T* gj = nullptr;
      if (u < U && ucol[u] == j) gj = g + (u++) * H;
      adam_row(p + j * H, m + j * H, v + j * H, gj, H, c);
    }
  });
}

}  // namespace

int row_adam_cpu(const RowAdamArgs& a, const CpuLaunch& on) {
  const ErrorSink sink = sink_of(on);
  for (int64_t u = 0; u < a.U; ++u) {
    if (grad_row(a.ucol, u, a.N, sink) < 0) return kBadIndex;
  }
  return dispatch_dtype(Floats{}, a.dtype, [&](auto t) {
    using T = typename decltype(t)::type;
    const AdamCoef<T> c{static_cast<T>(a.step_size), static_cast<T>(a.inv_sqrt_bc2),
                        static_cast<T>(a.b1), static_cast<T>(1.0 - a.b1), static_cast<T>(a.b2),
                        static_cast<T>(1.0 - a.b2), static_cast<T>(a.eps), static_cast<T>(a.wd)};
    row_adam<T>(static_cast<T*>(a.p), static_cast<T*>(a.m), static_cast<T*>(a.v),
                static_cast<const T*>(a.g), a.ucol, a.U, a.N, a.H, c, a.lazy, on.num_threads);
    return kOk;
  });
}

}  // namespace deeprec
