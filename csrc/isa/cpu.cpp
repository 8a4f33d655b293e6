// Which SIMD variant of the CPU loops runs (see common.h, DEEPREC_SIMD_FN): the widest
// this CPU can run unless set_isa (DEEPREC_ISA, through deeprec._native) chose another.
#include <atomic>

#include "common.h"

namespace deeprec {
namespace {

int detect() {
#ifdef DEEPREC_X86_VARIANTS
  __builtin_cpu_init();
  // libgcc's checks include the OS's support for the wider registers (XGETBV).
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAvx2;
#endif
  return kBaseline;
}

const int kBest = detect();
std::atomic<int> g_active{kBest};

}  // namespace

int best_isa() { return kBest; }
int active_isa() { return g_active.load(std::memory_order_relaxed); }
bool isa_supported(int isa) { return isa >= kBaseline && isa <= kBest; }

bool set_isa(int isa) {
  if (!isa_supported(isa)) return false;
  g_active.store(isa, std::memory_order_relaxed);
  return true;
}

}  // namespace deeprec
