// Adam for an item-major parameter (N rows of H) whose gradient is row-sparse:
// only rows ucol[0..U) (sorted, unique) have gradient rows g (U x H); every other
// row's gradient is zero. Same update as torch.optim.Adam (L2 weight decay added
// to the gradient, bias-corrected moments):
//   g' = g + wd * p;  m = b1 m + (1 - b1) g';  v = b2 v + (1 - b2) g'^2
//   p -= step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps),  step_size = lr / (1 - b1^t)
// exact: every row is updated (untouched rows with g = 0), equal to dense Adam with
// the dense zero-filled gradient, which is never materialized. lazy: only the
// touched rows are updated (SparseAdam semantics). The row ids are checked (checks.h:
// inside [0, N), strictly increasing); on the CPU a refused id leaves the parameter
// untouched, on CUDA its row is skipped; either way it is reported through (err, err_tag).
#pragma once

#include <cstdint>

#include "common.h"

namespace deeprec {

// The shared arguments by name, in order (see masked_mse.h); then the device tail.
inline constexpr const char* kRowAdamArgs[] = {
    "p", "m", "v", "g", "ucol", "U", "N", "H", "step_size", "inv_sqrt_bc2", "b1", "b2", "eps",
    "wd", "lazy", "dtype"};
inline constexpr int kRowAdamCpuDtypes[] = {kFloat32, kFloat64};
inline constexpr int kRowAdamCudaDtypes[] = {kFloat32, kFloat64};

int row_adam_cpu(void* p, void* m, void* v, const void* g, const int64_t* ucol, int64_t U,
                 int64_t N, int64_t H, double step_size, double inv_sqrt_bc2, double b1,
                 double b2, double eps, double wd, bool lazy, int dtype, int64_t* err,
                 int64_t err_tag, int num_threads);

int row_adam_cuda(void* p, void* m, void* v, const void* g, const int64_t* ucol, int64_t U,
                  int64_t N, int64_t H, double step_size, double inv_sqrt_bc2, double b1,
                  double b2, double eps, double wd, bool lazy, int dtype, int64_t* err,
                  int64_t err_tag, int device, void* stream);

}  // namespace deeprec
