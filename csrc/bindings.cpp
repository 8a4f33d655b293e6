// The one pybind11 module, deeprec._C. It passes raw addresses and sizes
// straight to the torch-free kernels and turns their status codes into Python
// exceptions. All argument validation happens in Python (deeprec/ops) before
// any address gets here; these wrappers only release the GIL and report.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.h"
#include "masked_mse.h"
#include "row_adam.h"
#include "sparse_layers.h"
#ifdef DEEPREC_WITH_CUDA
#include "cuda_info.h"
#endif

namespace py = pybind11;
using deeprec::Status;

namespace {

template <typename T>
T* as_ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

void check(int status, const char* op, int cuda_error = 0) {
  if (status == deeprec::kOk) return;
  std::string msg = std::string("deeprec._C.") + op + ": ";
  switch (status) {
    case deeprec::kBadDtype: msg += "unsupported scalar dtype code"; break;
    case deeprec::kBadIndexDtype: msg += "unsupported index dtype code"; break;
#ifdef DEEPREC_WITH_CUDA
    case deeprec::kCudaError:
      msg += std::string("CUDA error: ") + deeprec::cuda_error_string(cuda_error);
      break;
#endif
    default: msg += "native error " + std::to_string(status);
  }
  throw std::runtime_error(msg);
}

void masked_mse_cpu(std::uintptr_t out, std::uintptr_t crow, std::uintptr_t col,
                    std::uintptr_t val, int64_t B, int64_t N, int64_t nnz, int dtype,
                    int index_dtype, std::uintptr_t loss, std::uintptr_t grad, double grad_scale,
                    int num_threads) {
  int status;
  {
    py::gil_scoped_release release;
    status = deeprec::masked_mse_cpu(as_ptr<const void>(out), as_ptr<const int64_t>(crow),
                                     as_ptr<const void>(col), as_ptr<const void>(val), B, N, nnz,
                                     dtype, index_dtype, as_ptr<void>(loss), as_ptr<void>(grad),
                                     grad_scale, num_threads);
  }
  check(status, "masked_mse_cpu");
}

using Ptr = std::uintptr_t;

void spmm_rows_cpu(Ptr crow, Ptr col, Ptr val, Ptr W, Ptr bias, Ptr out, int64_t B, int64_t H,
                   double scale, int dtype, int index_dtype, int num_threads) {
  int status;
  {
    py::gil_scoped_release release;
    status = deeprec::spmm_rows_cpu(as_ptr<const int64_t>(crow), as_ptr<const void>(col),
                                    as_ptr<const void>(val), as_ptr<const void>(W),
                                    as_ptr<const void>(bias), as_ptr<void>(out), B, H, scale,
                                    dtype, index_dtype, num_threads);
  }
  check(status, "spmm_rows_cpu");
}

void sddmm_residual_cpu(Ptr crow, Ptr col, Ptr val, Ptr h, Ptr W, Ptr bias, Ptr resid, Ptr loss,
                        int64_t B, int64_t H, int64_t nnz, int dtype, int index_dtype,
                        int num_threads) {
  int status;
  {
    py::gil_scoped_release release;
    status = deeprec::sddmm_residual_cpu(
        as_ptr<const int64_t>(crow), as_ptr<const void>(col), as_ptr<const void>(val),
        as_ptr<const void>(h), as_ptr<const void>(W), as_ptr<const void>(bias), as_ptr<void>(resid),
        as_ptr<void>(loss), B, H, nnz, dtype, index_dtype, num_threads);
  }
  check(status, "sddmm_residual_cpu");
}

void col_accumulate_cpu(Ptr perm, Ptr ucol, Ptr uptr, Ptr rows, Ptr coef, Ptr A, Ptr dW, Ptr db,
                        int64_t U, int64_t N, int64_t H, double scale, int dtype, bool compact,
                        int num_threads) {
  int status;
  {
    py::gil_scoped_release release;
    status = deeprec::col_accumulate_cpu(
        as_ptr<const int64_t>(perm), as_ptr<const int64_t>(ucol), as_ptr<const int64_t>(uptr),
        as_ptr<const int64_t>(rows), as_ptr<const void>(coef), as_ptr<const void>(A),
        as_ptr<void>(dW), as_ptr<void>(db), U, N, H, scale, dtype, compact, num_threads);
  }
  check(status, "col_accumulate_cpu");
}

void row_adam_cpu(Ptr p, Ptr m, Ptr v, Ptr g, Ptr ucol, int64_t U, int64_t N, int64_t H,
                  double step_size, double inv_sqrt_bc2, double b1, double b2, double eps,
                  double wd, bool lazy, int dtype, int num_threads) {
  int status;
  {
    py::gil_scoped_release release;
    status = deeprec::row_adam_cpu(as_ptr<void>(p), as_ptr<void>(m), as_ptr<void>(v),
                                   as_ptr<const void>(g), as_ptr<const int64_t>(ucol), U, N, H,
                                   step_size, inv_sqrt_bc2, b1, b2, eps, wd, lazy, dtype,
                                   num_threads);
  }
  check(status, "row_adam_cpu");
}

#ifdef DEEPREC_WITH_CUDA
void row_adam_cuda(Ptr p, Ptr m, Ptr v, Ptr g, Ptr ucol, int64_t U, int64_t N, int64_t H,
                   double step_size, double inv_sqrt_bc2, double b1, double b2, double eps,
                   double wd, bool lazy, int dtype, int device, Ptr stream) {
  int cuda_error = 0, status;
  {
    py::gil_scoped_release release;
    status = deeprec::row_adam_cuda(as_ptr<void>(p), as_ptr<void>(m), as_ptr<void>(v),
                                    as_ptr<const void>(g), as_ptr<const int64_t>(ucol), U, N, H,
                                    step_size, inv_sqrt_bc2, b1, b2, eps, wd, lazy, dtype, device,
                                    as_ptr<void>(stream), &cuda_error);
  }
  check(status, "row_adam_cuda", cuda_error);
}

void spmm_rows_cuda(Ptr crow, Ptr col, Ptr val, Ptr W, Ptr bias, Ptr out, int64_t B, int64_t H,
                    Ptr scale, int dtype, int index_dtype, int device, Ptr stream) {
  int cuda_error = 0, status;
  {
    py::gil_scoped_release release;
    status = deeprec::spmm_rows_cuda(as_ptr<const int64_t>(crow), as_ptr<const void>(col),
                                     as_ptr<const void>(val), as_ptr<const void>(W),
                                     as_ptr<const void>(bias), as_ptr<void>(out), B, H,
                                     as_ptr<const void>(scale), dtype, index_dtype, device,
                                     as_ptr<void>(stream), &cuda_error);
  }
  check(status, "spmm_rows_cuda", cuda_error);
}

void sddmm_residual_cuda(Ptr crow, Ptr col, Ptr val, Ptr h, Ptr W, Ptr bias, Ptr resid, Ptr loss,
                         int64_t B, int64_t H, int64_t nnz, int dtype, int index_dtype,
                         Ptr partials, Ptr counter, int device, Ptr stream) {
  int cuda_error = 0, status;
  {
    py::gil_scoped_release release;
    status = deeprec::sddmm_residual_cuda(
        as_ptr<const int64_t>(crow), as_ptr<const void>(col), as_ptr<const void>(val),
        as_ptr<const void>(h), as_ptr<const void>(W), as_ptr<const void>(bias), as_ptr<void>(resid),
        as_ptr<void>(loss), B, H, nnz, dtype, index_dtype, as_ptr<void>(partials),
        as_ptr<void>(counter), device, as_ptr<void>(stream), &cuda_error);
  }
  check(status, "sddmm_residual_cuda", cuda_error);
}

void col_accumulate_cuda(Ptr perm, Ptr ucol, Ptr uptr, Ptr rows, Ptr coef, Ptr A, Ptr dW, Ptr db,
                         int64_t U, int64_t N, int64_t H, Ptr scale, int dtype, bool compact,
                         int device, Ptr stream) {
  int cuda_error = 0, status;
  {
    py::gil_scoped_release release;
    status = deeprec::col_accumulate_cuda(
        as_ptr<const int64_t>(perm), as_ptr<const int64_t>(ucol), as_ptr<const int64_t>(uptr),
        as_ptr<const int64_t>(rows), as_ptr<const void>(coef), as_ptr<const void>(A),
        as_ptr<void>(dW), as_ptr<void>(db), U, N, H, as_ptr<const void>(scale), dtype, compact,
        device, as_ptr<void>(stream), &cuda_error);
  }
  check(status, "col_accumulate_cuda", cuda_error);
}

void masked_mse_cuda(std::uintptr_t out, std::uintptr_t crow, std::uintptr_t col,
                     std::uintptr_t val, int64_t B, int64_t N, int64_t nnz, int dtype,
                     int index_dtype, std::uintptr_t loss, std::uintptr_t grad,
                     std::uintptr_t grad_scale, std::uintptr_t partials, std::uintptr_t counter,
                     int device, std::uintptr_t stream) {
  int cuda_error = 0, status;
  {
    py::gil_scoped_release release;
    status = deeprec::masked_mse_cuda(
        as_ptr<const void>(out), as_ptr<const int64_t>(crow), as_ptr<const void>(col),
        as_ptr<const void>(val), B, N, nnz, dtype, index_dtype, as_ptr<void>(loss),
        as_ptr<void>(grad), as_ptr<const void>(grad_scale), as_ptr<void>(partials),
        as_ptr<void>(counter), device, as_ptr<void>(stream), &cuda_error);
  }
  check(status, "masked_mse_cuda", cuda_error);
}

// "" when the kernels run on `device`, else the CUDA error text.
std::string cuda_kernel_problem(int device) {
  int cuda_error = 0;
  if (deeprec::masked_mse_cuda_image_ok(device, &cuda_error) == deeprec::kOk) return "";
  return deeprec::cuda_error_string(cuda_error);
}
#endif

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "deeprec native kernels (torch-free; called through deeprec.ops)";
  m.attr("DTYPE_CODES") = py::dict(py::arg("float32") = int(deeprec::kFloat32),
                                   py::arg("float64") = int(deeprec::kFloat64),
                                   py::arg("float16") = int(deeprec::kFloat16),
                                   py::arg("bfloat16") = int(deeprec::kBFloat16));
  m.attr("INDEX_CODES") =
      py::dict(py::arg("int32") = int(deeprec::kInt32), py::arg("int64") = int(deeprec::kInt64));
#ifdef DEEPREC_SANITIZED
  m.attr("SANITIZED") = true;
#else
  m.attr("SANITIZED") = false;
#endif
  m.def("masked_mse_cpu", &masked_mse_cpu,
        "Fused masked MSE over CSR rows on the CPU (loss and/or gradient).");
  m.def("spmm_rows_cpu", &spmm_rows_cpu, "out = bias + scale * CSR @ W (W item-major), CPU.");
  m.def("sddmm_residual_cpu", &sddmm_residual_cpu,
        "Residuals h.W[col] + b[col] - val at stored entries and their mean square, CPU.");
  m.def("col_accumulate_cpu", &col_accumulate_cpu,
        "dW[j] = sum over column j's entries of scale * coef * A[row], CPU.");
  m.def("row_adam_cpu", &row_adam_cpu, "Adam step with a row-sparse gradient (exact or lazy), CPU.");
#ifdef DEEPREC_WITH_CUDA
  m.attr("WITH_CUDA") = true;
  m.attr("CUDA_ARCHS") = DEEPREC_CUDA_ARCHS;
  m.attr("MASKED_MSE_MAX_BLOCKS") = deeprec::kMaskedMseMaxBlocks;
  m.def("masked_mse_cuda", &masked_mse_cuda,
        "Fused masked MSE over CSR rows on a CUDA stream (loss and/or gradient).");
  m.attr("SPARSE_MAX_BLOCKS") = deeprec::kSparseMaxBlocks;
  m.def("spmm_rows_cuda", &spmm_rows_cuda, "out = bias + scale * CSR @ W (W item-major), CUDA.");
  m.def("sddmm_residual_cuda", &sddmm_residual_cuda,
        "Residuals h.W[col] + b[col] - val at stored entries and their mean square, CUDA.");
  m.def("col_accumulate_cuda", &col_accumulate_cuda,
        "dW[j] = sum over column j's entries of scale * coef * A[row], CUDA.");
  m.def("row_adam_cuda", &row_adam_cuda,
        "Adam step with a row-sparse gradient (exact or lazy), CUDA.");
  m.def("cuda_kernel_problem", &cuda_kernel_problem,
        "Empty string if the CUDA kernels run on the device, else the reason.");
  m.def("cuda_runtime_version", &deeprec::cuda_runtime_version);
  m.def("cuda_driver_version", &deeprec::cuda_driver_version);
  m.def("cuda_device_count", &deeprec::cuda_device_count);
#else
  m.attr("WITH_CUDA") = false;
  m.attr("CUDA_ARCHS") = "";
#endif
}
