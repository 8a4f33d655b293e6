// Fused masked mean-squared error over CSR rating rows.
//
// O is a dense row-major (B x N) prediction matrix; the targets are CSR rows
// (crow: int64[B+1], col: int32|int64[nnz], val: scalar[nnz]) with columns
// strictly increasing inside each row. One pass computes
//   loss = sum_k (O[i, col[k]] - val[k])^2 / nnz          (if loss != nullptr)
//   G    = scale * 2 (O - R) / nnz at stored entries, 0 elsewhere
//                                                         (if grad != nullptr)
// nnz == 0 gives loss 0 and G == 0. The loss sum is accumulated in double on both
// devices and reduced in a fixed order, so it is deterministic (and, on the CPU,
// independent of the thread count).
// crow and col are checked as they are read (checks.h): a refused entry or row is
// skipped and reported through (err, err_tag).
#pragma once

#include <cstdint>

#include "common.h"
#include "kernel_args.h"

namespace deeprec {

// The arguments of both entry points, declared once (kernel_args.h): `out` the (B x N)
// predictions, the CSR batch (crow, col, val, nnz, index_dtype), the scalar `dtype`, and the
// outputs: `loss` (one scalar, or null), `grad` (B x N, or null) scaled by `grad_scale` (one
// scalar, or null for 1; host memory on the CPU, device memory on CUDA). `loss` and
// `grad_scale` are of the compute dtype: `dtype` for float32 and float64, float32 for the
// 16-bit dtypes (whose outputs and gradients are read and written in their own dtype).
#define DEEPREC_MASKED_MSE_ARGS(X)                                                     \
  X(const void*, out) X(const int64_t*, crow) X(const void*, col) X(const void*, val) \
  X(int64_t, B) X(int64_t, N) X(int64_t, nnz) X(int, dtype) X(int, index_dtype)      \
  X(void*, loss) X(void*, grad) X(const void*, grad_scale)
DEEPREC_KERNEL_ARGS(MaskedMseArgs, DEEPREC_MASKED_MSE_ARGS)
// The scalar dtypes each entry point runs (deeprec._C.KERNEL_DTYPES).
inline constexpr int kMaskedMseCpuDtypes[] = {kFloat32, kFloat64, kBFloat16};
inline constexpr int kMaskedMseCudaDtypes[] = {kFloat32, kFloat64, kFloat16, kBFloat16};

// CPU: float32 / float64 / bfloat16. Returns a Status (kBadIndex when the error word records a
// refused index).
int masked_mse_cpu(const MaskedMseArgs& a, const CpuLaunch& on);

// CUDA: float32 / float64 / float16 / bfloat16, one launch on `on.stream` of `on.device`.
// The loss needs the workspace (`on.partials`: at least kMaskedMseMaxBlocks doubles).
// Returns a Status; on kCudaError the cudaError_t is recorded for this thread
// (take_cuda_error, device/device.h).
constexpr int64_t kMaskedMseMaxBlocks = 2048;
int masked_mse_cuda(const MaskedMseArgs& a, const CudaLaunch& on);

}  // namespace deeprec
