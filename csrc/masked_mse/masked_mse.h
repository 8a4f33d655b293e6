// Fused masked mean-squared error over CSR rating rows.
//
// O is a dense row-major (B x N) prediction matrix; the targets are CSR rows
// (crow: int64[B+1], col: int32|int64[nnz], val: scalar[nnz]) with columns
// strictly increasing inside each row. One pass computes
//   loss = sum_k (O[i, col[k]] - val[k])^2 / nnz          (if loss != nullptr)
//   G    = scale * 2 (O - R) / nnz at stored entries, 0 elsewhere
//                                                         (if grad != nullptr)
// nnz == 0 gives loss 0 and G == 0. The loss sum is accumulated in double on
// the CPU; on CUDA in double for float64 and in float for float32, float16 and
// bfloat16 (cuda_reduce.cuh, Acc<T>). Either way it is reduced in a fixed order, so it
// is deterministic (and, on the CPU, independent of the thread count).
// crow and col are checked as they are read (checks.h): a refused entry or row is
// skipped and reported through (err, err_tag).
#pragma once

#include <cstdint>

#include "common.h"

namespace deeprec {

// The arguments both entry points share, by name, in order (bindings.cpp binds them so;
// Python passes every one by name). CPU: then (err, err_tag, num_threads); CUDA: then
// (partials, counter, err, err_tag, device, stream).
inline constexpr const char* kMaskedMseArgs[] = {
    "out", "crow", "col", "val", "B", "N", "nnz", "dtype", "index_dtype", "loss", "grad",
    "grad_scale"};
// The scalar dtypes each entry point runs (deeprec._C.KERNEL_DTYPES).
inline constexpr int kMaskedMseCpuDtypes[] = {kFloat32, kFloat64};
inline constexpr int kMaskedMseCudaDtypes[] = {kFloat32, kFloat64, kFloat16, kBFloat16};

// CPU: float32 / float64. `grad_scale` points to one scalar of `dtype` multiplying G
// (the incoming gradient of the loss), or is nullptr for 1. Returns a Status (kBadIndex
// when the error word `err` records a refused index).
int masked_mse_cpu(const void* out, const int64_t* crow, const void* col, const void* val,
                   int64_t B, int64_t N, int64_t nnz, int dtype, int index_dtype,
                   void* loss, void* grad, const void* grad_scale, int64_t* err,
                   int64_t err_tag, int num_threads);

// CUDA: float32 / float64 / float16 / bfloat16, one launch on `stream` of
// device `device`. `grad_scale` is a device pointer to one scalar of `dtype`
// (or nullptr for 1). `partials` is a device workspace of at least
// kMaskedMseMaxBlocks doubles and `counter` a device uint32 that is zero on
// entry (the kernel leaves it zero); `err` is the device error word. Returns a
// Status; on kCudaError the cudaError_t is recorded for this thread (cuda_info.h,
// take_cuda_error, device/device.h).
constexpr int64_t kMaskedMseMaxBlocks = 2048;
int masked_mse_cuda(const void* out, const int64_t* crow, const void* col, const void* val,
                    int64_t B, int64_t N, int64_t nnz, int dtype, int index_dtype, void* loss,
                    void* grad, const void* grad_scale, void* partials, void* counter,
                    int64_t* err, int64_t err_tag, int device, void* stream);

}  // namespace deeprec
