// CPU kernels of the sparse input layer and the sparse output layer + loss
// (see sparse_layers.h). Rows (or column ranges) are split across the
// persistent thread pool; the inner loops run over the hidden width H on
// contiguous rows of W, h and dW. Those loops are compiled for AVX-512, AVX2
// and plain x86-64 (DEEPREC_SIMD_FN) and the active variant runs (common.h),
// so one build runs everywhere and uses the vector units where they exist.
// Every index is checked before it is used (checks.h): a refused row, entry or column
// group contributes nothing, and the entry point returns kBadIndex.
#include <algorithm>
#include <cstring>
#include <vector>

#include "checks.h"
#include "common.h"
#include "sparse_layers/sparse_layers.h"

namespace deeprec {

// The scalar types this file's entry points dispatch on: its header's table.
using Floats = Float32And64;
static_assert(same_codes(Floats{}, kSparseLayersCpuDtypes), "the dtype table and the dispatch differ");

namespace {

// o[0:H] += v * w[0:H]
template <typename T>
DEEPREC_INLINE void axpy_body(T* __restrict o, T v, const T* __restrict w, int64_t H) {
  for (int64_t c = 0; c < H; ++c) o[c] += v * w[c];
}
DEEPREC_SIMD_FN(axpy)

// sum a[c] * b[c] over c, with 16 independent partial sums (a fixed order, so the
// result is deterministic) that the compiler can keep in vector registers.
template <typename T>
DEEPREC_INLINE T dot_body(const T* __restrict a, const T* __restrict b, int64_t n) {
  constexpr int L = 16;
  T part[L] = {};
  int64_t c = 0;
  for (; c + L <= n; c += L) {
    for (int l = 0; l < L; ++l) part[l] += a[c + l] * b[c + l];
  }
  T s = T(0);
  for (int l = 0; l < L; ++l) s += part[l];
  for (; c < n; ++c) s += a[c] * b[c];
  return s;
}
DEEPREC_SIMD_FN(dot)

template <typename T, typename I>
void spmm_rows(const int64_t* crow, const I* col, const T* val, const T* W, const T* bias, T* out,
               int64_t B, int64_t N, int64_t H, int64_t nnz, T s, ErrorSink err,
               int num_threads) {
  parallel_for(B, num_threads, std::max<int64_t>(1, 4096 / std::max<int64_t>(H, 1)),
               [&](int64_t b, int64_t e) {
                 for (int64_t i = b; i < e; ++i) {
                   T* o = out + i * H;
                   if (bias != nullptr) {
                     copy_n(o, bias, H);
                   } else {
                     zero_n(o, H);
                   }
                   for_each_entry(crow, col, i, B, N, nnz, err, [&](int64_t k, int64_t j) {
                     if (j >= 0) axpy(o, s * val[k], W + j * H, H);
                   });
                 }
               });
}

template <typename T, typename I>
void sddmm_residual(const int64_t* crow, const I* col, const T* val, const T* h, const T* W,
                    const T* bias, T* resid, T* loss, int64_t B, int64_t N, int64_t H,
                    int64_t nnz, ErrorSink err, int num_threads) {
  std::vector<double> row_sums(static_cast<size_t>(B), 0.0);
  parallel_for(B, num_threads, std::max<int64_t>(1, 8), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const T* hi = h + i * H;
      double sum = 0.0;
      for_each_entry(crow, col, i, B, N, nnz, err, [&](int64_t k, int64_t j) {
        if (j < 0) {
          resid[k] = T(0);  // k itself lies inside [0, nnz): its row's offsets passed
          return;
        }
        const T r = dot(hi, W + j * H, H) + (bias != nullptr ? bias[j] : T(0)) - val[k];
        resid[k] = r;
        sum += static_cast<double>(r) * static_cast<double>(r);
      });
      row_sums[i] = sum;
    }
  });
  if (failed(err)) {  // a refused batch: defined values, nothing of it applied
    zero_n(resid, nnz);
    if (loss != nullptr) *loss = T(0);
    return;
  }
  if (loss != nullptr) {
    double total = 0.0;
    for (double s : row_sums) total += s;
    *loss = static_cast<T>(nnz > 0 ? total / static_cast<double>(nnz) : 0.0);
  }
}

// Every row of dW (and entry of db) is written exactly once: zero for columns the
// batch does not touch, the accumulated sum for those it does. Threads own
// disjoint row ranges [b, e); ucol is sorted, so each range maps to a run of it.
// The batch's offsets and the column groups (uptr, ucol) are checked in one pass before
// any is used, and each entry (perm, rows, against crow and col) as it is read.
template <typename T, typename I>
struct ColumnSums {
  const int64_t *perm, *rows, *crow;
  const I* col;
  const T *coef, *A;
  int64_t B, H, nnz;
  T s;
  ErrorSink err;

  // g = sum over group [p0, p1) of column j of s * coef[k] * A[row k]; returns the sum of
  // s * coef[k] (the bias gradient).
  T operator()(int64_t p0, int64_t p1, int64_t j, T* g) const {
    zero_n(g, H);
    T bsum = T(0);
    for (int64_t p = p0; p < p1; ++p) {
      int64_t k = 0, r = 0;
      if (!group_entry(perm, rows, crow, col, p, p0, j, B, nnz, err, &k, &r)) continue;
      const T c = s * coef[k];
      axpy(g, c, A + r * H, H);
      bsum += c;
    }
    return bsum;
  }
};

template <typename T, typename I>
void col_accumulate(const int64_t* ucol, const int64_t* uptr, const ColumnSums<T, I>& sums,
                    T* dW, T* db, int64_t U, int64_t N, bool compact, int num_threads) {
  const int64_t H = sums.H;
  // A refused batch or index: every output written as zero (defined values, nothing applied
  // from it, wherever the caller reads the refusal later).
  const auto refused = [&] {
    const int64_t rows_out = compact ? U : N;
    zero_n(dW, rows_out * H);
    if (db != nullptr) zero_n(db, rows_out);
  };
  for (int64_t i = 0; i < sums.B; ++i) {  // the batch's offsets, which rows are checked against
    int64_t k0 = 0, k1 = 0;
    if (!row_entries(sums.crow, i, sums.B, sums.nnz, sums.err, &k0, &k1)) return refused();
  }
  for (int64_t u = 0; u < U; ++u) {
    int64_t p0 = 0, p1 = 0, j = 0;
    if (!column_group(ucol, uptr, u, U, N, sums.nnz, sums.err, &p0, &p1, &j)) return refused();
  }
  if (U == 0 && sums.nnz != 0) {  // no groups, yet entries to group
    report(sums.err, kUptrOrder, 0, uptr[0], sums.nnz);
    return refused();
  }
  if (compact) {  // only the touched rows, in ucol order
    parallel_for(U, num_threads, std::max<int64_t>(1, 4096 / std::max<int64_t>(H, 1)),
                 [&](int64_t b, int64_t e) {
                   for (int64_t u = b; u < e; ++u) {
                     const T bsum = sums(uptr[u], uptr[u + 1], ucol[u], dW + u * H);
                     if (db != nullptr) db[u] = bsum;
                   }
                 });
    return;
  }
  parallel_for(N, num_threads, std::max<int64_t>(1, 16384 / std::max<int64_t>(H, 1)),
               [&](int64_t b, int64_t e) {
                 int64_t u = std::lower_bound(ucol, ucol + U, b) - ucol;
                 for (int64_t j = b; j < e; ++j) {
                   T* g = dW + j * H;
                   T bsum = T(0);
                   if (u < U && ucol[u] == j) {
                     bsum = sums(uptr[u], uptr[u + 1], j, g);
                     ++u;
                   } else {
                     zero_n(g, H);
                   }
                   if (db != nullptr) db[j] = bsum;
                 }
               });
}

}  // namespace

int spmm_rows_cpu(const SpmmRowsArgs& a, const CpuLaunch& on) {
  return cpu_entry<Floats>(a, on, [&](auto t, auto i, ErrorSink sink) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    spmm_rows<T, I>(a.crow, static_cast<const I*>(a.col), static_cast<const T*>(a.val),
                    static_cast<const T*>(a.W), static_cast<const T*>(a.bias),
                    static_cast<T*>(a.out), a.B, a.N, a.H, a.nnz, scalar_or_one<T>(a.scale), sink,
                    on.num_threads);
  });
}

int sddmm_residual_cpu(const SddmmResidualArgs& a, const CpuLaunch& on) {
  return cpu_entry<Floats>(a, on, [&](auto t, auto i, ErrorSink sink) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    sddmm_residual<T, I>(a.crow, static_cast<const I*>(a.col), static_cast<const T*>(a.val),
                         static_cast<const T*>(a.h), static_cast<const T*>(a.W),
                         static_cast<const T*>(a.bias), static_cast<T*>(a.resid),
                         static_cast<T*>(a.loss), a.B, a.N, a.H, a.nnz, sink, on.num_threads);
  });
}

int col_accumulate_cpu(const ColAccumulateArgs& a, const CpuLaunch& on) {
  return cpu_entry<Floats>(a, on, [&](auto t, auto i, ErrorSink sink) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    const ColumnSums<T, I> sums{a.perm, a.rows, a.crow, static_cast<const I*>(a.col),
                                static_cast<const T*>(a.coef), static_cast<const T*>(a.A), a.B,
                                a.H, a.nnz, scalar_or_one<T>(a.scale), sink};
    col_accumulate<T, I>(a.ucol, a.uptr, sums, static_cast<T*>(a.dW), static_cast<T*>(a.db),
                         a.U, a.N, a.compact, on.num_threads);
  });
}

}  // namespace deeprec
