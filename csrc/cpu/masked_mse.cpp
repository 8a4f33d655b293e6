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

#include "../checks.h"
#include "../common.h"
#include "../masked_mse.h"

namespace deeprec {
namespace {

template <typename scalar_t, typename index_t>
void masked_mse_rows(const scalar_t* __restrict out, const int64_t* __restrict crow,
                     const index_t* __restrict col, const scalar_t* __restrict val, int64_t B,
                     int64_t N, int64_t nnz, scalar_t* __restrict grad, double coef,
                     double* __restrict row_sums, ErrorSink err, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const scalar_t* o = out + i * N;
    double sum = 0.0;
    if (grad == nullptr) {
      for_each_entry(crow, col, i, B, N, nnz, err, [&](int64_t k, int64_t j) {
        if (j < 0) return;
        const double d = static_cast<double>(o[j]) - static_cast<double>(val[k]);
        sum += d * d;
      });
    } else {
      // Zero the whole row first (one memset, ~60 GB/s while the row sits in L1/L2),
      // then scatter: measured 3x faster than filling each short gap between the
      // ~1-2% stored columns separately.
      scalar_t* g = grad + i * N;
      std::memset(g, 0, static_cast<size_t>(N) * sizeof(scalar_t));
      for_each_entry(crow, col, i, B, N, nnz, err, [&](int64_t k, int64_t j) {
        if (j < 0) return;
        const double d = static_cast<double>(o[j]) - static_cast<double>(val[k]);
        sum += d * d;
        g[j] = static_cast<scalar_t>(coef * d);
      });
    }
    row_sums[i] = sum;
  }
}

template <typename scalar_t, typename index_t>
void masked_mse_impl(const void* out, const int64_t* crow, const void* col, const void* val,
                     int64_t B, int64_t N, int64_t nnz, void* loss, void* grad, double grad_scale,
                     ErrorSink err, int num_threads) {
  std::vector<double> row_sums(static_cast<size_t>(B), 0.0);
  const double coef = nnz > 0 ? 2.0 * grad_scale / static_cast<double>(nnz) : 0.0;
  // A thread is worth waking for ~32K gradient writes or ~4K gathers (workers poll
  // between jobs, so waking one costs ~1 us, not the 20-60 us of a sleeping one).
  const int64_t per_row = grad != nullptr ? N : std::max<int64_t>(1, nnz / std::max<int64_t>(B, 1));
  const int64_t grain = std::max<int64_t>(1, (grad != nullptr ? 32768 : 4096) / std::max<int64_t>(per_row, 1));
  parallel_for(B, num_threads, grain, [&](int64_t b, int64_t e) {
    masked_mse_rows<scalar_t, index_t>(
        static_cast<const scalar_t*>(out), crow, static_cast<const index_t*>(col),
        static_cast<const scalar_t*>(val), B, N, nnz, static_cast<scalar_t*>(grad), coef,
        row_sums.data(), err, b, e);
  });
  if (loss != nullptr) {
    double total = 0.0;
    for (double s : row_sums) total += s;
    *static_cast<scalar_t*>(loss) =
        static_cast<scalar_t>(nnz > 0 ? total / static_cast<double>(nnz) : 0.0);
  }
}

}  // namespace

int masked_mse_cpu(const void* out, const int64_t* crow, const void* col, const void* val,
                   int64_t B, int64_t N, int64_t nnz, int dtype, int index_dtype, void* loss,
                   void* grad, const void* grad_scale, int64_t* err, int64_t err_tag,
                   int num_threads) {
  const ErrorSink sink{err, err_tag};
  return dispatch(CpuFloats{}, dtype, index_dtype, [&](auto t, auto i) {
    using T = typename decltype(t)::type;
    masked_mse_impl<T, typename decltype(i)::type>(out, crow, col, val, B, N, nnz, loss, grad,
                                                   scalar_or_one<T>(grad_scale), sink,
                                                   num_threads);
    return failed(sink) ? kBadIndex : kOk;
  });
}

}  // namespace deeprec
