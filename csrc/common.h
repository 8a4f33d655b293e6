// Shared helpers for deeprec's native kernels: status codes, dtype tags and a
// small parallel-for. Torch-free on purpose (see docs: the module must import
// beside any torch build), so everything here is plain C++17.
#pragma once

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
};

// Scalar dtype tags, mirrored in deeprec/_native.py.
enum Dtype : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };
// Index dtype tags.
enum IndexDtype : int { kInt32 = 0, kInt64 = 1 };

// Hot CPU loops are compiled for AVX-512, AVX2 and baseline x86-64 and the best one is
// picked when the module loads (GCC target_clones): one build runs on any x86-64 CPU and
// uses its vector units. Not for nvcc, clang or other architectures.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__) && \
    !defined(DEEPREC_NO_CLONES)
#define DEEPREC_SIMD __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DEEPREC_SIMD
#endif

// Calls f(T{}) with T the scalar type of a float32/float64 dtype tag; kBadDtype otherwise.
template <typename F>
int dispatch_float(int dtype, F&& f) {
  switch (dtype) {
    case kFloat32: f(float{}); return kOk;
    case kFloat64: f(double{}); return kOk;
    default: return kBadDtype;
  }
}

// Runs fn(begin, end) over [0, n) split into contiguous chunks, one per
// thread, the first chunk on the calling thread. The other chunks run on a
// persistent pool of std::threads (csrc/cpu/parallel.cpp): starting a thread
// costs ~50 us on small VMs, more than many of our kernels take. Callers size
// num_threads from torch.get_num_threads(), so no second OpenMP runtime
// competes with torch's. Below `grain` items per thread fewer threads are used.
void parallel_for(int64_t n, int num_threads, int64_t grain,
                  const std::function<void(int64_t, int64_t)>& fn);

}  // namespace deeprec
