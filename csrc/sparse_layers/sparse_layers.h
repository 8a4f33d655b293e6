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

namespace deeprec {

// The shared arguments of each entry point by name, in order (see masked_mse.h); then the
// device tail (sddmm_residual's CUDA twin takes partials and counter before it).
inline constexpr const char* kSpmmRowsArgs[] = {
    "crow", "col", "val", "W", "bias", "out", "B", "N", "H", "nnz", "scale", "dtype",
    "index_dtype"};
inline constexpr const char* kSddmmResidualArgs[] = {
    "crow", "col", "val", "h", "W", "bias", "resid", "loss", "B", "N", "H", "nnz", "dtype",
    "index_dtype"};
inline constexpr const char* kColAccumulateArgs[] = {
    "perm", "ucol", "uptr", "rows", "crow", "col", "coef", "A", "dW", "db", "U", "N", "B", "H",
    "nnz", "scale", "dtype", "index_dtype", "compact"};
// The scalar dtypes of every sparse-layer entry point (deeprec._C.KERNEL_DTYPES).
inline constexpr int kSparseLayersCpuDtypes[] = {kFloat32, kFloat64};
inline constexpr int kSparseLayersCudaDtypes[] = {kFloat32, kFloat64};

// `scale` (every function here) points to one scalar of dtype multiplying the terms, or
// is nullptr for 1: host memory on the CPU, device memory on CUDA. CPU entry points
// return kBadIndex when their error word records a refused index.

// out[i, :] = bias + sum_{k in row i} scale * val[k] * W[col[k], :]   (bias may be null)
// (input-layer forward with val = ratings; output-layer backward dh with val = residuals)
int spmm_rows_cpu(const int64_t* crow, const void* col, const void* val, const void* W,
                  const void* bias, void* out, int64_t B, int64_t N, int64_t H, int64_t nnz,
                  const void* scale, int dtype, int index_dtype, int64_t* err, int64_t err_tag,
                  int num_threads);

// resid[k] = h[row k] . W[col[k], :] + bias[col[k]] - val[k]; *loss = sum resid^2 / nnz
// (output layer + masked MSE forward). loss may be null.
int sddmm_residual_cpu(const int64_t* crow, const void* col, const void* val, const void* h,
                       const void* W, const void* bias, void* resid, void* loss, int64_t B,
                       int64_t N, int64_t H, int64_t nnz, int dtype, int index_dtype,
                       int64_t* err, int64_t err_tag, int num_threads);

// dW = 0 (N x H), then dW[ucol[u], :] = sum_{p in uptr[u]..uptr[u+1]} scale * coef[perm[p]] *
// A[rows[perm[p]], :], and db[ucol[u]] likewise summed over coef (db may be null, else all N
// entries are written). The column-grouped order makes it race-free and deterministic.
// compact: write only the U touched rows, dW (U x H) and db (U), row u for column ucol[u]
// (the values of a sparse gradient). The index is checked against the batch it groups
// (crow, col of B rows and nnz entries), A has B rows.
int col_accumulate_cpu(const int64_t* perm, const int64_t* ucol, const int64_t* uptr,
                       const int64_t* rows, const int64_t* crow, const void* col,
                       const void* coef, const void* A, void* dW, void* db, int64_t U,
                       int64_t N, int64_t B, int64_t H, int64_t nnz, const void* scale,
                       int dtype, int index_dtype, bool compact, int64_t* err, int64_t err_tag,
                       int num_threads);

// CUDA twins (float32 / float64) on `stream` of `device`. `scale` is a device pointer
// to one scalar of dtype multiplying the terms (nullptr for 1); `partials` (>=
// kSparseMaxBlocks doubles) and `counter` (uint32, zero on entry, left zero) serve the
// deterministic loss reduction of sddmm; `err` is the device error word.
constexpr int64_t kSparseMaxBlocks = 2048;
int spmm_rows_cuda(const int64_t* crow, const void* col, const void* val, const void* W,
                   const void* bias, void* out, int64_t B, int64_t N, int64_t H, int64_t nnz,
                   const void* scale, int dtype, int index_dtype, int64_t* err,
                   int64_t err_tag, int device, void* stream);
int sddmm_residual_cuda(const int64_t* crow, const void* col, const void* val, const void* h,
                        const void* W, const void* bias, void* resid, void* loss, int64_t B,
                        int64_t N, int64_t H, int64_t nnz, int dtype, int index_dtype,
                        void* partials, void* counter, int64_t* err, int64_t err_tag,
                        int device, void* stream);
int col_accumulate_cuda(const int64_t* perm, const int64_t* ucol, const int64_t* uptr,
                        const int64_t* rows, const int64_t* crow, const void* col,
                        const void* coef, const void* A, void* dW, void* db, int64_t U,
                        int64_t N, int64_t B, int64_t H, int64_t nnz, const void* scale,
                        int dtype, int index_dtype, bool compact, int64_t* err,
                        int64_t err_tag, int device, void* stream);

}  // namespace deeprec
