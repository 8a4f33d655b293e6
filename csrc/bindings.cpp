// The one pybind11 module, deeprec._C. Every kernel entry point is bound by one template
// (bind_kernel): addresses travel from Python as integers and are cast to the entry
// point's pointer types, the GIL is released around the call, and a non-zero Status
// becomes a Python exception naming the entry point. Python checks the metadata (dtypes,
// shapes, devices, lengths) before any address gets here; the kernels check every index
// value they read (checks.h), and a refused one raises deeprec._C.BadIndex (a ValueError)
// after the call, with the details in the caller's error word.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "checks.h"
#include "common.h"
#include "masked_mse.h"
#include "row_adam.h"
#include "sparse_layers.h"
#ifdef DEEPREC_WITH_CUDA
#include "cuda_info.h"
#endif

#ifndef DEEPREC_VERSION
#define DEEPREC_VERSION "0.0.0+unknown"
#endif

namespace py = pybind11;

namespace {

// The entry points' argument convention; bump when any signature changes, so Python
// refuses a module built from other sources (deeprec/_native.py, NATIVE_ABI).
constexpr int kAbi = 4;

// A kernel refused an index; Python reads the error word and says which.
struct BadIndex : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void check(int status, const char* name) {
  if (status == deeprec::kOk) return;
  std::string msg = std::string("deeprec._C.") + name + ": ";
  if (status == deeprec::kBadIndex) throw BadIndex(msg + "refused an index (see the error word)");
  switch (status) {
    case deeprec::kBadDtype: msg += "unsupported scalar dtype code"; break;
    case deeprec::kBadIndexDtype: msg += "unsupported index dtype code"; break;
#ifdef DEEPREC_WITH_CUDA
    case deeprec::kCudaError:
      msg += std::string("CUDA error: ") + deeprec::cuda_error_string(deeprec::take_cuda_error());
      break;
#endif
    default: msg += "native error " + std::to_string(status);
  }
  throw std::runtime_error(msg);
}

// How an argument of type T crosses from Python: pointers as integer addresses.
template <typename T>
using PyArg = std::conditional_t<std::is_pointer_v<T>, std::uintptr_t, T>;

template <typename T>
T to_native(PyArg<T> value) {
  if constexpr (std::is_pointer_v<T>) {
    return reinterpret_cast<T>(value);
  } else {
    return value;
  }
}

// Binds `int fn(Args...)` as `name(*args)`: casts, releases the GIL, checks the Status.
template <typename... Args>
void bind_kernel(py::module_& m, const char* name, int (*fn)(Args...), const char* doc) {
  m.def(
      name,
      [fn, name](PyArg<Args>... args) {
        int status;
        {
          py::gil_scoped_release release;
          status = fn(to_native<Args>(args)...);
        }
        check(status, name);
      },
      doc);
}

#ifdef DEEPREC_WITH_CUDA
// "" when the kernels run on `device`, else the CUDA error text.
std::string cuda_kernel_problem(int device) {
  if (deeprec::masked_mse_cuda_image_ok(device) == deeprec::kOk) return "";
  return deeprec::cuda_error_string(deeprec::take_cuda_error());
}
#endif

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "deeprec native kernels (torch-free; called through deeprec.ops)";
  m.attr("__version__") = DEEPREC_VERSION;
  m.attr("ISA_NAMES") = py::make_tuple("baseline", "avx2", "avx512");  // index = deeprec::Isa
  m.def("best_isa", &deeprec::best_isa, "the widest SIMD variant this CPU runs (ISA_NAMES index)");
  m.def("active_isa", &deeprec::active_isa, "the SIMD variant the CPU kernels use now");
  m.def("parallel_threads_used", &deeprec::parallel_threads_used, py::arg("n"),
        py::arg("num_threads"), py::arg("grain"), py::arg("spin_us"),
        "distinct threads that ran chunks of one parallel_for (a diagnostic for the tests)");
  m.def("set_isa", &deeprec::set_isa, py::arg("isa"),
        "use SIMD variant `isa` (ISA_NAMES index); False if this CPU cannot run it");
  m.attr("ABI") = kAbi;
  py::register_exception<BadIndex>(m, "BadIndex", PyExc_ValueError);
  m.attr("ERROR_WORDS") = deeprec::kErrorWords;
  // Check codes of the error word (checks.h), by name.
  m.attr("CHECKS") = py::dict(
      py::arg("crow_start") = int(deeprec::kCrowStart), py::arg("crow_order") = int(deeprec::kCrowOrder),
      py::arg("crow_end") = int(deeprec::kCrowEnd), py::arg("col_range") = int(deeprec::kColRange),
      py::arg("col_order") = int(deeprec::kColOrder), py::arg("uptr_order") = int(deeprec::kUptrOrder),
      py::arg("ucol_range") = int(deeprec::kUcolRange), py::arg("ucol_order") = int(deeprec::kUcolOrder),
      py::arg("perm_range") = int(deeprec::kPermRange), py::arg("perm_order") = int(deeprec::kPermOrder),
      py::arg("perm_column") = int(deeprec::kPermColumn), py::arg("rows_range") = int(deeprec::kRowsRange),
      py::arg("rows_match") = int(deeprec::kRowsMatch),
      py::arg("grad_row_range") = int(deeprec::kGradRowRange),
      py::arg("grad_row_order") = int(deeprec::kGradRowOrder));
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
  // Every entry point ends in (err, err_tag): the error word's address and the caller's
  // tag (checks.h); then CPU ones take num_threads, CUDA ones (device, stream).
  bind_kernel(m, "masked_mse_cpu", &deeprec::masked_mse_cpu,
              "Fused masked MSE over CSR rows on the CPU (loss and/or gradient).");
  bind_kernel(m, "spmm_rows_cpu", &deeprec::spmm_rows_cpu,
              "out = bias + scale * CSR @ W (W item-major), CPU.");
  bind_kernel(m, "sddmm_residual_cpu", &deeprec::sddmm_residual_cpu,
              "Residuals h.W[col] + b[col] - val at stored entries and their mean square, CPU.");
  bind_kernel(m, "col_accumulate_cpu", &deeprec::col_accumulate_cpu,
              "dW[j] = sum over column j's entries of scale * coef * A[row], CPU.");
  bind_kernel(m, "row_adam_cpu", &deeprec::row_adam_cpu,
              "Adam step with a row-sparse gradient (exact or lazy), CPU.");
#ifdef DEEPREC_WITH_CUDA
  m.attr("WITH_CUDA") = true;
  m.attr("CUDA_ARCHS") = DEEPREC_CUDA_ARCHS;
  m.attr("MASKED_MSE_MAX_BLOCKS") = deeprec::kMaskedMseMaxBlocks;
  m.attr("SPARSE_MAX_BLOCKS") = deeprec::kSparseMaxBlocks;
  bind_kernel(m, "masked_mse_cuda", &deeprec::masked_mse_cuda,
              "Fused masked MSE over CSR rows on a CUDA stream (loss and/or gradient).");
  bind_kernel(m, "spmm_rows_cuda", &deeprec::spmm_rows_cuda,
              "out = bias + scale * CSR @ W (W item-major), CUDA.");
  bind_kernel(m, "sddmm_residual_cuda", &deeprec::sddmm_residual_cuda,
              "Residuals h.W[col] + b[col] - val at stored entries and their mean square, CUDA.");
  bind_kernel(m, "col_accumulate_cuda", &deeprec::col_accumulate_cuda,
              "dW[j] = sum over column j's entries of scale * coef * A[row], CUDA.");
  bind_kernel(m, "row_adam_cuda", &deeprec::row_adam_cuda,
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
