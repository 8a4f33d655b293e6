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

#ifdef DEEPREC_WITH_CUDA
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
  m.def("masked_mse_cpu", &masked_mse_cpu,
        "Fused masked MSE over CSR rows on the CPU (loss and/or gradient).");
#ifdef DEEPREC_WITH_CUDA
  m.attr("WITH_CUDA") = true;
  m.attr("CUDA_ARCHS") = DEEPREC_CUDA_ARCHS;
  m.attr("MASKED_MSE_MAX_BLOCKS") = deeprec::kMaskedMseMaxBlocks;
  m.def("masked_mse_cuda", &masked_mse_cuda,
        "Fused masked MSE over CSR rows on a CUDA stream (loss and/or gradient).");
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
