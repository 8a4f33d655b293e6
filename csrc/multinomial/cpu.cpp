// CPU epilogues of the chunked multinomial loss (see multinomial.h). Rows are split across
// the persistent thread pool; each row's chunk of logits is read (and, for the gradient,
// rewritten) while the GEMM that produced it has left it in cache. The loops over a row's
// chunk are compiled for AVX-512, AVX2 and plain x86-64 (DEEPREC_SIMD_FN) with 16
// independent lanes (a fixed order: the result does not depend on the thread count), and
// float's exp is a polynomial the compiler vectorises (std::exp does not).
// bfloat16 logits (a bf16 GEMM's output) are read as float and the gradient is rounded to
// bf16 once, where it is stored; every sum and the log-sum-exp stay float or double.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include <type_traits>
#include <utility>
#include <vector>

#include "bf16.h"
#include "checks.h"
#include "common.h"
#include "multinomial/multinomial.h"

namespace deeprec {

using Floats = Types<float, double, BFloat16>;
static_assert(same_codes(Floats{}, kMultinomialCpuDtypes), "the dtype table and the dispatch differ");

namespace {

// exp(x) for float: x = n ln2 + r with |r| <= ln2 / 2, exp(r) by Cephes' degree-6
// minimax polynomial (about 1 ulp), times 2^n built in the exponent bits. 0 below
// ln(FLT_MIN); inf above 88 (where exp exceeds 1.6e38); NaN stays NaN. No branches, so
// the lane loops below vectorise. The epilogues only ever take exp of logits minus their
// row's maximum or log-sum-exp (arguments <= 0 but for rounding).
DEEPREC_INLINE float exp_of(float x) {
  constexpr float kLo = -87.3365447504019f, kHi = 88.0f;
  const bool nan = !(x == x);
  const float xc = nan ? 0.0f : (x < kLo ? kLo : (x > kHi ? kHi : x));
  const float t = xc * 1.44269504088896341f + 12582912.0f;  // + 1.5 * 2^23 rounds to nearest
  const float n = t - 12582912.0f;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) * (1 << 23);  // n in [-126, 127]
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  float y = e * two_n;
  y = x < kLo ? 0.0f : y;
  y = x > kHi ? std::numeric_limits<float>::infinity() : y;
  return nan ? x : y;
}
DEEPREC_INLINE double exp_of(double x) { return std::exp(x); }

constexpr int kLanes = 16;

// The largest of z[0:n] (NaN ignored here; it reaches the sum through exp), in the compute
// type A (float for bf16 logits). The lanes are held as 16-byte vectors (GCC's vector
// extension): a plain array of lane maxima compiled to scalar maxss in every variant,
// 16-byte vectors are maxps in all three.
template <typename S, typename A = acc_t<S>>
DEEPREC_INLINE A row_max_body(const S* __restrict z, int64_t n) {
  typedef A Quad __attribute__((vector_size(16)));
  constexpr int kPer = 16 / sizeof(A), kGroups = kLanes / kPer;
  constexpr A kNegInf = -std::numeric_limits<A>::infinity();
  Quad part[kGroups];
  for (int g = 0; g < kGroups; ++g) {
    for (int l = 0; l < kPer; ++l) part[g][l] = kNegInf;
  }
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) {
    for (int g = 0; g < kGroups; ++g) {
      Quad v;
      if constexpr (std::is_same_v<S, A>) {
        std::memcpy(&v, z + c + g * kPer, sizeof v);
      } else {
        for (int l = 0; l < kPer; ++l) v[l] = to_float(z[c + g * kPer + l]);
      }
      part[g] = v > part[g] ? v : part[g];
    }
  }
  A m = kNegInf;
  for (int g = 0; g < kGroups; ++g) {
    for (int l = 0; l < kPer; ++l) m = part[g][l] > m ? part[g][l] : m;
  }
  for (; c < n; ++c) m = to_float(z[c]) > m ? to_float(z[c]) : m;
  return m;
}
DEEPREC_SIMD_FN(row_max)

// sum of exp(z[c] - shift) over c, in the compute type A.
template <typename S, typename A>
DEEPREC_INLINE A sum_exp_body(const S* __restrict z, int64_t n, A shift) {
  A part[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) {
    for (int l = 0; l < kLanes; ++l) part[l] += exp_of(to_float(z[c + l]) - shift);
  }
  A s = A(0);
  for (int l = 0; l < kLanes; ++l) s += part[l];
  for (; c < n; ++c) s += exp_of(to_float(z[c]) - shift);
  return s;
}
DEEPREC_SIMD_FN(sum_exp)

// z[c] = factor * exp(z[c] - shift), in place: computed in A, rounded once to the storage.
template <typename S, typename A>
DEEPREC_INLINE void scaled_exp_body(S* __restrict z, int64_t n, A shift, A factor) {
  for (int64_t c = 0; c < n; ++c) z[c] = store_as<S>(factor * exp_of(to_float(z[c]) - shift));
}
DEEPREC_SIMD_FN(scaled_exp)

// Every offset and column of row i checked (the first chunk of a pass): false, reported,
// when one is refused. The columns' order is what lets each later chunk find its entries
// by binary search.
template <typename I>
bool row_checked(const int64_t* crow, const I* col, int64_t i, int64_t B, int64_t N,
                 int64_t nnz, ErrorSink err) {
  bool ok = true;
  int64_t k0 = 0, k1 = 0;
  if (!row_entries(crow, i, B, nnz, err, &k0, &k1)) return false;
  for_each_entry(crow, col, i, B, N, nnz, err, [&](int64_t, int64_t j) { ok = ok && j >= 0; });
  return ok;
}

int64_t row_grain(int64_t C) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(C, 1)); }

template <typename T, typename I>
void lse_chunk(const T* Z, const int64_t* crow, const I* col, double* run_max, double* run_sum,
               double* observed, int64_t B, int64_t N, int64_t n0, int64_t C, int64_t ldz,
               int64_t nnz, ErrorSink err, int num_threads) {
  parallel_for(B, num_threads, row_grain(C), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const T* z = Z + i * ldz;
      if (n0 == 0) {
        run_max[i] = -std::numeric_limits<double>::infinity();
        run_sum[i] = 0.0;
        observed[i] = 0.0;
        if (!row_checked(crow, col, i, B, N, nnz, err)) continue;
      }
      int64_t k0 = 0, k1 = 0, p0 = 0, p1 = 0;
      if (!row_entries(crow, i, B, nnz, err, &k0, &k1)) continue;
      const double m_old = run_max[i];
      const double m_chunk = static_cast<double>(row_max(z, C));
      const double m_new = m_chunk > m_old ? m_chunk : m_old;
      const double s = static_cast<double>(sum_exp(z, C, static_cast<acc_t<T>>(m_new)));
      run_sum[i] = (m_old == m_new ? run_sum[i] : run_sum[i] * std::exp(m_old - m_new)) + s;
      run_max[i] = m_new;
      chunk_entries(col, k0, k1, n0, C, &p0, &p1);
      double obs = 0.0;
      for (int64_t k = p0; k < p1; ++k) {
        const int64_t c = chunk_column(col, k, k0, n0, C, err);
        if (c >= 0) obs += static_cast<double>(to_float(z[c]));
      }
      observed[i] += obs;
    }
  });
}

template <typename T, typename I>
void softmax_grad_chunk(T* Z, const int64_t* crow, const I* col, const acc_t<T>* lse,
                        acc_t<T> scale,
                        int64_t B, int64_t N, int64_t n0, int64_t C, int64_t ldz, int64_t nnz,
                        ErrorSink err, int num_threads) {
  using A = acc_t<T>;
  parallel_for(B, num_threads, row_grain(C), [&](int64_t b, int64_t e) {
    // The rated items' logits, kept from before the row is overwritten: their gradient
    // factor * exp(z - lse) - scale is formed whole and rounded once (c_i softmax is near 1
    // where a row's items take all the mass; rounding it before the subtraction would
    // leave only the rounding error of a bf16 logit gradient).
    std::vector<std::pair<int64_t, A>> rated;  // (position in the chunk, logit)
    for (int64_t i = b; i < e; ++i) {
      T* z = Z + i * ldz;
      int64_t k0 = 0, k1 = 0, p0 = 0, p1 = 0;
      const bool ok = (n0 != 0 || row_checked(crow, col, i, B, N, nnz, err)) &&
                      row_entries(crow, i, B, nnz, err, &k0, &k1);
      if (!ok || k1 == k0) {  // a refused row, or one with no items: no gradient
        zero_n(z, C);
        continue;
      }
      const A factor = scale * static_cast<A>(k1 - k0);
      chunk_entries(col, k0, k1, n0, C, &p0, &p1);
      rated.clear();
      for (int64_t k = p0; k < p1; ++k) {
        const int64_t c = chunk_column(col, k, k0, n0, C, err);
        if (c >= 0) rated.emplace_back(c, to_float(z[c]));
      }
      scaled_exp(z, C, lse[i], factor);
      for (const auto& [c, logit] : rated) {
        z[c] = store_as<T>(factor * exp_of(logit - lse[i]) - scale);
      }
    }
  });
}

}  // namespace

int lse_chunk_cpu(const LseChunkArgs& a, const CpuLaunch& on) {
  return cpu_entry<Floats>(a, on, [&](auto t, auto i, ErrorSink sink) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    lse_chunk<T, I>(static_cast<const T*>(a.Z), a.crow, static_cast<const I*>(a.col),
                    a.run_max, a.run_sum, a.observed, a.B, a.N, a.n0, a.C, a.ldz, a.nnz, sink,
                    on.num_threads);
  });
}

int softmax_grad_chunk_cpu(const SoftmaxGradChunkArgs& a, const CpuLaunch& on) {
  return cpu_entry<Floats>(a, on, [&](auto t, auto i, ErrorSink sink) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    softmax_grad_chunk<T, I>(static_cast<T*>(a.Z), a.crow, static_cast<const I*>(a.col),
                             static_cast<const acc_t<T>*>(a.lse),
                             scalar_or_one<acc_t<T>>(a.scale), a.B, a.N,
                             a.n0, a.C, a.ldz, a.nnz, sink, on.num_threads);
  });
}

}  // namespace deeprec
