// Kernels of the fully sparse path: the input layer straight from a CSR batch
// and the output layer evaluated only at stored ratings.
//
// Shapes: a CSR batch of B rows over N columns (crow int64[B+1], col
// int32|int64[nnz], val T[nnz]); weights stored item-major, W (N x H), so each
// column j of the batch touches one contiguous row W[j, :]. Its column index
// groups the entries by column: perm (int64[nnz], entry ids sorted by column,
// rows ascending), ucol (int64[U], the distinct columns), uptr (int64[U+1]),
// and rows (int64[nnz], the row of each entry). Every index is checked as it is
// read (checks.h); a refused one is skipped and reported through (err, err_tag).
#pragma once

#include <cstdint>

#include "common.h"
#include "kernel_args.h"

namespace deeprec {

// Each kernel's arguments, declared once (kernel_args.h). `scale` (every kernel that has
// one) points to one scalar of `dtype` multiplying the terms, or is null for 1: host memory
// on the CPU, device memory on CUDA. A `bias` may be null (no bias).

// out[i, :] = bias + sum_{k in row i} scale * val[k] * W[col[k], :]
// (input-layer forward with val = ratings; output-layer backward dh with val = residuals)
#define DEEPREC_SPMM_ROWS_ARGS(X)                                                          \
  X(const int64_t*, crow) X(const void*, col) X(const void*, val) X(const void*, W)       \
  X(const void*, bias) X(void*, out) X(int64_t, B) X(int64_t, N) X(int64_t, H)            \
  X(int64_t, nnz) X(const void*, scale) X(int, dtype) X(int, index_dtype)
DEEPREC_KERNEL_ARGS(SpmmRowsArgs, DEEPREC_SPMM_ROWS_ARGS)

// resid[k] = h[row k] . W[col[k], :] + bias[col[k]] - val[k]; *loss = sum resid^2 / nnz
// (output layer + masked MSE forward), summed in double. loss may be null. A refused entry
// or row gets residual 0 (CPU: a refused batch gets every residual and the loss 0).
#define DEEPREC_SDDMM_RESIDUAL_ARGS(X)                                                     \
  X(const int64_t*, crow) X(const void*, col) X(const void*, val) X(const void*, h)       \
  X(const void*, W) X(const void*, bias) X(void*, resid) X(void*, loss) X(int64_t, B)     \
  X(int64_t, N) X(int64_t, H) X(int64_t, nnz) X(int, dtype) X(int, index_dtype)
DEEPREC_KERNEL_ARGS(SddmmResidualArgs, DEEPREC_SDDMM_RESIDUAL_ARGS)

// dW = 0 (N x H), then dW[ucol[u], :] = sum_{p in uptr[u]..uptr[u+1]} scale * coef[perm[p]] *
// A[rows[perm[p]], :], and db[ucol[u]] likewise summed over coef (db may be null, else all N
// entries are written). The column-grouped order makes it race-free and deterministic.
// compact: write only the U touched rows, dW (U x H) and db (U), row u for column ucol[u]
// (the values of a sparse gradient). The index is checked against the batch it groups
// (crow, col of B rows and nnz entries), A has B rows.
#define DEEPREC_COL_ACCUMULATE_ARGS(X)                                                     \
  X(const int64_t*, perm) X(const int64_t*, ucol) X(const int64_t*, uptr)                 \
  X(const int64_t*, rows) X(const int64_t*, crow) X(const void*, col) X(const void*, coef) \
  X(const void*, A) X(void*, dW) X(void*, db) X(int64_t, U) X(int64_t, N) X(int64_t, B)   \
  X(int64_t, H) X(int64_t, nnz) X(const void*, scale) X(int, dtype) X(int, index_dtype)   \
  X(bool, compact)
DEEPREC_KERNEL_ARGS(ColAccumulateArgs, DEEPREC_COL_ACCUMULATE_ARGS)

// The scalar dtypes of every sparse-layer entry point (deeprec._C.KERNEL_DTYPES).
inline constexpr int kSparseLayersCpuDtypes[] = {kFloat32, kFloat64};
inline constexpr int kSparseLayersCudaDtypes[] = {kFloat32, kFloat64};

// CPU entry points return kBadIndex when their error word records a refused index.
int spmm_rows_cpu(const SpmmRowsArgs& a, const CpuLaunch& on);
int sddmm_residual_cpu(const SddmmResidualArgs& a, const CpuLaunch& on);
int col_accumulate_cpu(const ColAccumulateArgs& a, const CpuLaunch& on);

// CUDA twins (float32 / float64) on `on.stream` of `on.device`; sddmm_residual's loss uses
// the workspace (>= kSparseMaxBlocks doubles in `on.partials`) for its deterministic
// reduction; `on.err` is the device error word.
constexpr int64_t kSparseMaxBlocks = 2048;
int spmm_rows_cuda(const SpmmRowsArgs& a, const CudaLaunch& on);
int sddmm_residual_cuda(const SddmmResidualArgs& a, const CudaLaunch& on);
int col_accumulate_cuda(const ColAccumulateArgs& a, const CudaLaunch& on);

}  // namespace deeprec
