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

// Runs fn(begin, end) over [0, n) split into contiguous chunks, one per
// thread, the first chunk on the calling thread. The other chunks run on a
// persistent pool of std::threads (csrc/cpu/parallel.cpp): starting a thread
// costs ~50 us on small VMs, more than many of our kernels take. Callers size
// num_threads from torch.get_num_threads(), so no second OpenMP runtime
// competes with torch's. Below `grain` items per thread fewer threads are used.
void parallel_for(int64_t n, int num_threads, int64_t grain,
                  const std::function<void(int64_t, int64_t)>& fn);

}  // namespace deeprec
