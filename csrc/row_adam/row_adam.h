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
#include "kernel_args.h"

namespace deeprec {

// The arguments of both entry points, declared once (kernel_args.h): the parameter `p` and
// its moments `m`, `v` (N x H), the gradient rows `g` (U x H) of rows `ucol`, the update's
// coefficients, `lazy`, and the scalar `dtype`.
#define DEEPREC_ROW_ADAM_ARGS(X)                                                           \
  X(void*, p) X(void*, m) X(void*, v) X(const void*, g) X(const int64_t*, ucol) X(int64_t, U) \
  X(int64_t, N) X(int64_t, H) X(double, step_size) X(double, inv_sqrt_bc2) X(double, b1)    \
  X(double, b2) X(double, eps) X(double, wd) X(bool, lazy) X(int, dtype)
DEEPREC_KERNEL_ARGS(RowAdamArgs, DEEPREC_ROW_ADAM_ARGS)
inline constexpr int kRowAdamCpuDtypes[] = {kFloat32, kFloat64};
inline constexpr int kRowAdamCudaDtypes[] = {kFloat32, kFloat64};

int row_adam_cpu(const RowAdamArgs& a, const CpuLaunch& on);
int row_adam_cuda(const RowAdamArgs& a, const CudaLaunch& on);

}  // namespace deeprec
