// bfloat16 on the CPU, torch-free: a storage type (the top 16 bits of a float) and the
// conversions the kernels read and write it with. Arithmetic is never done in bf16: a
// kernel loads bf16, computes in float (acc_t), and rounds once when it stores.
// (CUDA uses __nv_bfloat16, cuda_common.cuh; the dtype code is the same.)
#pragma once

#include <cstdint>
#include <cstring>

#include "common.h"

namespace deeprec {

struct BFloat16 {
  uint16_t bits;
};
template <>
struct DtypeOf<BFloat16> {
  static constexpr int value = kBFloat16;
};

// Exact: a bf16 is a float with its low 16 mantissa bits zero.
DEEPREC_INLINE float to_float(BFloat16 x) {
  const uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
DEEPREC_INLINE float to_float(float x) { return x; }
DEEPREC_INLINE double to_float(double x) { return x; }

// Round to nearest, ties to even (what torch's .to(torch.bfloat16) does); a NaN stays a
// (quiet) NaN, never rounds to infinity.
DEEPREC_INLINE BFloat16 to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return BFloat16{static_cast<uint16_t>(nan ? ((u >> 16) | 0x40u) : rounded)};
}

// The type a kernel computes in for storage type S: float for bf16 and float, double for
// double; and the store from it.
template <typename S>
struct Acc {
  using type = S;
};
template <>
struct Acc<BFloat16> {
  using type = float;
};
template <typename S>
using acc_t = typename Acc<S>::type;

template <typename S>
DEEPREC_INLINE S store_as(acc_t<S> x) {
  if constexpr (sizeof(S) == 2) {
    return to_bf16(x);
  } else {
    return x;
  }
}

}  // namespace deeprec
