// Shared helpers for deeprec's native kernels: status codes, dtype tags and a
// small parallel-for. Torch-free on purpose (see docs: the module must import
// beside any torch build), so everything here is plain C++17.
#pragma once

#include <cstring>
#include <cstddef>
#include <cstdint>
#include <functional>

namespace deeprec {

// Status codes returned by every native entry point; bindings.cpp turns a
// non-zero code into a Python exception. Kernels never throw.
enum Status : int {
  kOk = 0,
  kBadDtype = 1,
  kBadIndexDtype = 2,
  kCudaError = 3,
  kBadIndex = 4,  // a kernel refused an index; the error word says which (checks.h)
};

// Scalar dtype tags; Python reads them from deeprec._C.DTYPE_CODES.
enum Dtype : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };
// Index dtype tags.
enum IndexDtype : int { kInt32 = 0, kInt64 = 1 };

// ---------------------------------------------------------------- SIMD variants
// Hot CPU loops are compiled three times, for AVX-512 (F, VL, BW, DQ), AVX2 + FMA and baseline
// x86-64, and the variant runs that active_isa() names: by default the widest this CPU can
// run, or the one DEEPREC_ISA asks for (set_isa, from Python). One build runs on any x86-64
// CPU, uses its vector units, and every variant can be forced and tested on one machine.
// A loop is written once as an always_inline template `name##_body`; DEEPREC_SIMD_FN(name)
// makes the per-variant copies (the body is inlined into each, so it is compiled for that
// target) and `name(...)`, which calls the active one. Elsewhere (other architectures,
// clang, nvcc) there is one variant, baseline.
enum Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };
int active_isa();
int best_isa();
bool isa_supported(int isa);
// Makes `isa` the active variant; false (nothing changed) if this CPU or build cannot run it.
bool set_isa(int isa);

#define DEEPREC_INLINE inline __attribute__((always_inline))
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__) && \
    !defined(DEEPREC_NO_CLONES)
#define DEEPREC_X86_VARIANTS 1
#define DEEPREC_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#define DEEPREC_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define DEEPREC_SIMD_FN(name)                                                  \
  template <typename... A>                                                     \
  DEEPREC_TARGET_AVX512 auto name##_avx512(A... a) {                           \
    return name##_body(a...);                                                  \
  }                                                                            \
  template <typename... A>                                                     \
  DEEPREC_TARGET_AVX2 auto name##_avx2(A... a) {                               \
    return name##_body(a...);                                                  \
  }                                                                            \
  template <typename... A>                                                     \
  auto name##_baseline(A... a) {                                               \
    return name##_body(a...);                                                  \
  }                                                                            \
  template <typename... A>                                                     \
  inline auto name(A... a) {                                                   \
    switch (active_isa()) {                                                    \
      case kAvx512: return name##_avx512(a...);                                \
      case kAvx2: return name##_avx2(a...);                                    \
      default: return name##_baseline(a...);                                  \
    }                                                                          \
  }
#else
#define DEEPREC_SIMD_FN(name)  \
  template <typename... A>     \
  inline auto name(A... a) {   \
    return name##_body(a...);  \
  }
#endif

// ---------------------------------------------------------------- dtype/index dispatch
// The one way every kernel file (CPU and CUDA) turns run-time dtype codes into template
// arguments. f receives Tag<T> values (no T is constructed) and returns a Status.
template <typename T>
struct Tag {
  using type = T;
};
template <typename... Ts>
struct Types {};

// The dtype code of a scalar type; cuda_common.cuh adds __half and __nv_bfloat16.
template <typename T>
struct DtypeOf;
template <>
struct DtypeOf<float> {
  static constexpr int value = kFloat32;
};
template <>
struct DtypeOf<double> {
  static constexpr int value = kFloat64;
};
// The scalar types of the float32/float64 kernels (every CPU kernel, and the sparse and
// Adam kernels on CUDA); cuda_common.cuh adds the half-precision list of masked MSE.
using Float32And64 = Types<float, double>;

// Bytes per element of a scalar dtype code; 0 for an unknown code.
constexpr size_t dtype_size(int dtype) {
  switch (dtype) {
    case kFloat32: return 4;
    case kFloat64: return 8;
    case kFloat16:
    case kBFloat16: return 2;
    default: return 0;
  }
}

// True when the type list Ts... has exactly the dtype codes `codes`, in order: each
// kernel file checks its dispatch list against the table its header exports (through
// bindings.cpp as deeprec._C.KERNEL_DTYPES), so the two cannot drift.
template <typename... Ts, size_t N>
constexpr bool same_codes(Types<Ts...>, const int (&codes)[N]) {
  if (sizeof...(Ts) != N) return false;
  const int mine[] = {DtypeOf<Ts>::value..., 0};
  for (size_t k = 0; k < N; ++k) {
    if (mine[k] != codes[k]) return false;
  }
  return true;
}

// f(Tag<T>{}) for the T in Floats whose code is `dtype`; kBadDtype when none is.
template <typename... Ts, typename F>
int dispatch_dtype(Types<Ts...>, int dtype, F&& f) {
  int status = kBadDtype;
  (void)((dtype == DtypeOf<Ts>::value ? (status = f(Tag<Ts>{}), true) : false) || ...);
  return status;
}

// f(Tag<I>{}) with I = int32_t or int64_t as `index_dtype` says; kBadIndexDtype otherwise.
template <typename F>
int dispatch_index(int index_dtype, F&& f) {
  switch (index_dtype) {
    case kInt32: return f(Tag<int32_t>{});
    case kInt64: return f(Tag<int64_t>{});
    default: return kBadIndexDtype;
  }
}

// f(Tag<T>{}, Tag<I>{}): both dispatches at once.
template <typename Floats, typename F>
int dispatch(Floats floats, int dtype, int index_dtype, F&& f) {
  return dispatch_dtype(floats, dtype, [&](auto t) {
    return dispatch_index(index_dtype, [&](auto i) { return f(t, i); });
  });
}

// n elements of p set to 0 / copied from src. An empty tensor's data pointer may be null,
// and memset/memcpy with a null pointer is undefined even for zero bytes: n <= 0 touches
// nothing.
template <typename T>
DEEPREC_INLINE void zero_n(T* p, int64_t n) {
  if (n > 0) std::memset(p, 0, static_cast<size_t>(n) * sizeof(T));
}
template <typename T>
DEEPREC_INLINE void copy_n(T* dst, const T* src, int64_t n) {
  if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(T));
}

// A host scalar of type T that the caller may omit (nullptr means 1).
template <typename T>
T scalar_or_one(const void* p) {
  return p == nullptr ? T(1) : *static_cast<const T*>(p);
}

// Runs fn(begin, end) over [0, n) split into contiguous chunks (up to four per
// thread), claimed by the calling thread and a persistent pool of std::threads, at most
// num_threads - 1 of which take part in one call
// (csrc/parallel/cpu.cpp): starting a thread can cost more than many of our kernels
// take. fn must not depend on how [0, n) is cut.
// Callers size num_threads from torch.get_num_threads(), so no second OpenMP
// runtime competes with torch's. Below `grain` items per thread fewer threads are used.
void parallel_for(int64_t n, int num_threads, int64_t grain,
                  const std::function<void(int64_t, int64_t)>& fn);

// How many distinct threads ran chunks of one parallel_for over [0, n), each chunk busy for
// spin_us microseconds: what the tests read to hold the pool to num_threads threads.
int parallel_threads_used(int64_t n, int num_threads, int64_t grain, int64_t spin_us);

}  // namespace deeprec
