// CPU kernels for the fused masked MSE (see masked_mse.h for the contract).
//
// Rows are split across std::threads. Each gradient row is zeroed with one
// memset while it is hot in cache, then the stored entries are scattered.
// The loss is summed per row in double and the row sums are added in row
// order, which makes the result independent of the thread count. Each row's
// offsets and each column are checked before use (checks.h); a refused row or
// entry contributes nothing and is reported.
#include <algorithm>
#include <cstring>
#include <vector>

#include "bf16.h"
#include "checks.h"
#include "common.h"
#include "masked_mse/masked_mse.h"

namespace deeprec {

// The scalar types this file's entry points dispatch on: its header's table.
using Floats = Types<float, double, BFloat16>;
static_assert(same_codes(Floats{}, kMaskedMseCpuDtypes), "the dtype table and the dispatch differ");

namespace {

template <typename T, typename I>
void masked_mse_rows(const T* __restrict out, const int64_t* __restrict crow,
                     const I* __restrict col, const T* __restrict val, int64_t B,
                     int64_t N, int64_t nnz, T* __restrict grad, double coef,
                     double* __restrict row_sums, ErrorSink err, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const T* o = out + i * N;
    double sum = 0.0;
    if (grad == nullptr) {
      for_each_entry(crow, col, i, B, N, nnz, err, [&](int64_t k, int64_t j) {
        if (j < 0) return;
        const double d = double{to_float(o[j])} - double{to_float(val[k])};
        sum += d * d;
      });
    } else {
      // Zero the whole row first (one memset while the row sits in L1/L2), then
      // scatter: measured faster than filling each short gap between the few stored
      // columns separately (benchmarks/results/measurements.md).
      T* g = grad + i * N;
      zero_n(g, N);
      for_each_entry(crow, col, i, B, N, nnz, err, [&](int64_t k, int64_t j) {
        if (j < 0) return;
        const double d = double{to_float(o[j])} - double{to_float(val[k])};
        sum += d * d;
        g[j] = store_as<T>(static_cast<acc_t<T>>(coef * d));
      });
    }
    row_sums[i] = sum;
  }
}

template <typename T, typename I>
void masked_mse_impl(const void* out, const int64_t* crow, const void* col, const void* val,
                     int64_t B, int64_t N, int64_t nnz, void* loss, void* grad, double grad_scale,
                     ErrorSink err, int num_threads) {
  std::vector<double> row_sums(static_cast<size_t>(B), 0.0);
  const double coef = nnz > 0 ? 2.0 * grad_scale / static_cast<double>(nnz) : 0.0;
  // A thread is worth waking for ~32K gradient writes or ~4K gathers (workers poll
  // between jobs, so waking one is cheap; a sleeping one is not).
  const int64_t per_row = grad != nullptr ? N : std::max<int64_t>(1, nnz / std::max<int64_t>(B, 1));
  const int64_t grain = std::max<int64_t>(1, (grad != nullptr ? 32768 : 4096) / std::max<int64_t>(per_row, 1));
  parallel_for(B, num_threads, grain, [&](int64_t b, int64_t e) {
    masked_mse_rows<T, I>(
        static_cast<const T*>(out), crow, static_cast<const I*>(col),
        static_cast<const T*>(val), B, N, nnz, static_cast<T*>(grad), coef,
        row_sums.data(), err, b, e);
  });
  if (loss != nullptr) {
    double total = 0.0;
    for (double s : row_sums) total += s;
    *static_cast<acc_t<T>*>(loss) =
        static_cast<acc_t<T>>(nnz > 0 ? total / static_cast<double>(nnz) : 0.0);
  }
}

}  // namespace

int masked_mse_cpu(const MaskedMseArgs& a, const CpuLaunch& on) {
  return cpu_entry<Floats>(a, on, [&](auto t, auto i, ErrorSink sink) {
    using T = typename decltype(t)::type;
    masked_mse_impl<T, typename decltype(i)::type>(a.out, a.crow, a.col, a.val, a.B, a.N, a.nnz,
                                                   a.loss, a.grad,
                                                   scalar_or_one<acc_t<T>>(a.grad_scale), sink,
                                                   on.num_threads);
  });
}

}  // namespace deeprec
