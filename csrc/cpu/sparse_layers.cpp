// CPU kernels of the sparse input layer and the sparse output layer + loss
// (see sparse_layers.h). Rows (or column ranges) are split across the
// persistent thread pool; the inner loops run over the hidden width H on
// contiguous rows of W, h and dW. Those loops are compiled for AVX-512, AVX2
// and plain x86-64 (DEEPREC_SIMD_FN) and the active variant runs (common.h),
// so one build runs everywhere and uses the vector units where they exist.
#include <algorithm>
#include <cstring>
#include <vector>

#include "../common.h"
#include "../sparse_layers.h"

namespace deeprec {
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
               int64_t B, int64_t H, T s, int num_threads) {
  parallel_for(B, num_threads, std::max<int64_t>(1, 4096 / std::max<int64_t>(H, 1)),
               [&](int64_t b, int64_t e) {
                 for (int64_t i = b; i < e; ++i) {
                   T* o = out + i * H;
                   if (bias != nullptr) {
                     std::memcpy(o, bias, static_cast<size_t>(H) * sizeof(T));
                   } else {
                     std::memset(o, 0, static_cast<size_t>(H) * sizeof(T));
                   }
                   for (int64_t k = crow[i]; k < crow[i + 1]; ++k) {
                     axpy(o, s * val[k], W + static_cast<int64_t>(col[k]) * H, H);
                   }
                 }
               });
}

template <typename T, typename I>
void sddmm_residual(const int64_t* crow, const I* col, const T* val, const T* h, const T* W,
                    const T* bias, T* resid, T* loss, int64_t B, int64_t H, int64_t nnz,
                    int num_threads) {
  std::vector<double> row_sums(static_cast<size_t>(B), 0.0);
  parallel_for(B, num_threads, std::max<int64_t>(1, 8), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const T* hi = h + i * H;
      double sum = 0.0;
      for (int64_t k = crow[i]; k < crow[i + 1]; ++k) {
        const int64_t j = static_cast<int64_t>(col[k]);
        const T r = dot(hi, W + j * H, H) + bias[j] - val[k];
        resid[k] = r;
        sum += static_cast<double>(r) * static_cast<double>(r);
      }
      row_sums[i] = sum;
    }
  });
  if (loss != nullptr) {
    double total = 0.0;
    for (double s : row_sums) total += s;
    *loss = static_cast<T>(nnz > 0 ? total / static_cast<double>(nnz) : 0.0);
  }
}

// Every row of dW (and entry of db) is written exactly once: zero for columns the
// batch does not touch, the accumulated sum for those it does. Threads own
// disjoint row ranges [b, e); ucol is sorted, so each range maps to a run of it.
template <typename T>
T column_sum(const int64_t* perm, const int64_t* rows, const T* coef, const T* A, int64_t p0,
             int64_t p1, int64_t H, T s, T* g) {
  std::memset(g, 0, static_cast<size_t>(H) * sizeof(T));
  T bsum = T(0);
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t k = perm[p];
    const T c = s * coef[k];
    axpy(g, c, A + rows[k] * H, H);
    bsum += c;
  }
  return bsum;
}

template <typename T>
void col_accumulate(const int64_t* perm, const int64_t* ucol, const int64_t* uptr,
                    const int64_t* rows, const T* coef, const T* A, T* dW, T* db, int64_t U,
                    int64_t N, int64_t H, T s, bool compact, int num_threads) {
  if (compact) {  // only the touched rows, in ucol order
    parallel_for(U, num_threads, std::max<int64_t>(1, 4096 / std::max<int64_t>(H, 1)),
                 [&](int64_t b, int64_t e) {
                   for (int64_t u = b; u < e; ++u) {
                     const T bsum = column_sum(perm, rows, coef, A, uptr[u], uptr[u + 1], H, s, dW + u * H);
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
                     bsum = column_sum(perm, rows, coef, A, uptr[u], uptr[u + 1], H, s, g);
                     ++u;
                   } else {
                     std::memset(g, 0, static_cast<size_t>(H) * sizeof(T));
                   }
                   if (db != nullptr) db[j] = bsum;
                 }
               });
}

}  // namespace

int spmm_rows_cpu(const int64_t* crow, const void* col, const void* val, const void* W,
                  const void* bias, void* out, int64_t B, int64_t H, const void* scale, int dtype,
                  int index_dtype, int num_threads) {
  return dispatch(CpuFloats{}, dtype, index_dtype, [&](auto t, auto i) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    spmm_rows<T, I>(crow, static_cast<const I*>(col), static_cast<const T*>(val),
                    static_cast<const T*>(W), static_cast<const T*>(bias), static_cast<T*>(out),
                    B, H, scalar_or_one<T>(scale), num_threads);
    return kOk;
  });
}

int sddmm_residual_cpu(const int64_t* crow, const void* col, const void* val, const void* h,
                       const void* W, const void* bias, void* resid, void* loss, int64_t B,
                       int64_t H, int64_t nnz, int dtype, int index_dtype, int num_threads) {
  return dispatch(CpuFloats{}, dtype, index_dtype, [&](auto t, auto i) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    sddmm_residual<T, I>(crow, static_cast<const I*>(col), static_cast<const T*>(val),
                         static_cast<const T*>(h), static_cast<const T*>(W),
                         static_cast<const T*>(bias), static_cast<T*>(resid),
                         static_cast<T*>(loss), B, H, nnz, num_threads);
    return kOk;
  });
}

int col_accumulate_cpu(const int64_t* perm, const int64_t* ucol, const int64_t* uptr,
                       const int64_t* rows, const void* coef, const void* A, void* dW, void* db,
                       int64_t U, int64_t N, int64_t H, const void* scale, int dtype,
                       bool compact, int num_threads) {
  return dispatch_dtype(CpuFloats{}, dtype, [&](auto t) {
    using T = typename decltype(t)::type;
    col_accumulate<T>(perm, ucol, uptr, rows, static_cast<const T*>(coef),
                      static_cast<const T*>(A), static_cast<T*>(dW), static_cast<T*>(db), U, N, H,
                      scalar_or_one<T>(scale), compact, num_threads);
    return kOk;
  });
}

}  // namespace deeprec
