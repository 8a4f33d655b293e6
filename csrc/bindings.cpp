// The one pybind11 module, deeprec._C. Every kernel entry point is bound once, from one
// table (DEEPREC_KERNELS), by one template (bind_entry): each entry point takes its kernel's
// argument struct and its device's launch struct (kernel_args.h), and the Python function
// takes their fields, in declaration order, by the declared names (exported as
// KERNEL_ARGS; Python names every argument of every call). Addresses travel from Python as
// integers and are cast to the fields' pointer types, the GIL is released around the call,
// and a non-zero Status becomes a Python exception naming the entry point. Python checks the
// metadata (dtypes, shapes, devices, lengths) before any address gets here; the kernels
// check every index value they read (checks.h), and a refused one raises deeprec._C.BadIndex
// (a ValueError) after the call, with the details in the caller's error word.
#include <pybind11/pybind11.h>

#include <iterator>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "checks.h"
#include "common.h"
#include "kernel_args.h"
#include "masked_mse/masked_mse.h"
#include "multinomial/multinomial.h"
#include "row_adam/row_adam.h"
#include "sparse_layers/sparse_layers.h"
#ifdef DEEPREC_WITH_CUDA
#include "device/device.h"
#endif

#ifndef DEEPREC_VERSION
#define DEEPREC_VERSION "0.0.0+unknown"
#endif

namespace py = pybind11;

namespace {

// The entry points' argument convention; bump when any signature changes, so Python
// refuses a module built from other sources (deeprec/_native.py, NATIVE_ABI).
constexpr int kAbi = 7;

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

// The name of field k of (Args, Launch) taken together.
template <typename Args, typename Launch>
constexpr const char* field_name(size_t k) {
  constexpr size_t n_args = std::size(Args::kNames);
  return k < n_args ? Args::kNames[k] : Launch::kNames[k - n_args];
}

template <typename Args, typename Launch, typename... A, typename... L, size_t... K>
void bind_fields(py::module_& m, const char* name, int (*fn)(const Args&, const Launch&),
                 const char* doc, deeprec::FieldList<A...>, deeprec::FieldList<L...>,
                 std::index_sequence<K...>) {
  m.def(
      name,
      [fn, name](PyArg<A>... a, PyArg<L>... l) {
        const Args args{to_native<A>(a)...};
        const Launch on{to_native<L>(l)...};
        int status;
        {
          py::gil_scoped_release release;
          status = fn(args, on);
        }
        check(status, name);
      },
      doc, py::arg(field_name<Args, Launch>(K))...);
}

// Binds `int fn(const Args&, const Launch&)` as `name(<Args' fields>, <Launch's fields>)`
// and records those names, in order, in `kernel_args` (deeprec._C.KERNEL_ARGS).
template <typename Args, typename Launch>
void bind_entry(py::module_& m, py::dict& kernel_args, const char* name,
                int (*fn)(const Args&, const Launch&), const char* doc) {
  constexpr size_t n = std::size(Args::kNames) + std::size(Launch::kNames);
  bind_fields(m, name, fn, doc, typename Args::Fields{}, typename Launch::Fields{},
              std::make_index_sequence<n>{});
  py::tuple order(n);
  for (size_t k = 0; k < n; ++k) order[k] = py::str(field_name<Args, Launch>(k));
  kernel_args[name] = order;
}

// The scalar dtypes of a kernel family on one device, by name (deeprec._C.KERNEL_DTYPES).
template <size_t N>
py::tuple dtype_names(const int (&codes)[N]) {
  py::list out;
  for (int code : codes) {
    switch (code) {
      case deeprec::kFloat32: out.append("float32"); break;
      case deeprec::kFloat64: out.append("float64"); break;
      case deeprec::kFloat16: out.append("float16"); break;
      case deeprec::kBFloat16: out.append("bfloat16"); break;
      default: break;
    }
  }
  return py::tuple(out);
}

#ifdef DEEPREC_WITH_CUDA
// "" when the kernels run on `device`, else the CUDA error text.
std::string cuda_kernel_problem(int device) {
  if (deeprec::cuda_image_ok(device) == deeprec::kOk) return "";
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
  // The kernel table, once: each entry point's argument struct (its family header declares
  // it) and what it does. CPU entry points add CpuLaunch's fields, CUDA ones CudaLaunch's.
#define DEEPREC_KERNELS(X)                                                                    \
  X(masked_mse, MaskedMseArgs, "Fused masked MSE over CSR rows (loss and/or gradient)")       \
  X(spmm_rows, SpmmRowsArgs, "out = bias + scale * CSR @ W (W item-major)")                   \
  X(sddmm_residual, SddmmResidualArgs,                                                        \
    "Residuals h.W[col] + b[col] - val at stored entries and their mean square")              \
  X(col_accumulate, ColAccumulateArgs, "dW[j] = sum over column j's entries of scale * coef * A[row]") \
  X(row_adam, RowAdamArgs, "Adam step with a row-sparse gradient (exact or lazy)")             \
  X(lse_chunk, LseChunkArgs, "Online log-sum-exp of a chunk of logits and its rows' observed logits") \
  X(softmax_grad_chunk, SoftmaxGradChunkArgs,                                                 \
    "A chunk of logits turned in place into the multinomial loss's logit gradient")
  py::dict kernel_args;  // each entry point's argument names, in order
#define DEEPREC_BIND_CPU(name, args, doc) \
  bind_entry(m, kernel_args, #name "_cpu", &deeprec::name##_cpu, doc ", CPU.");
  DEEPREC_KERNELS(DEEPREC_BIND_CPU)
  py::dict kernel_dtypes;
  kernel_dtypes["masked_mse"] = py::dict(py::arg("cpu") = dtype_names(deeprec::kMaskedMseCpuDtypes),
                                         py::arg("cuda") = dtype_names(deeprec::kMaskedMseCudaDtypes));
  kernel_dtypes["sparse_layers"] =
      py::dict(py::arg("cpu") = dtype_names(deeprec::kSparseLayersCpuDtypes),
               py::arg("cuda") = dtype_names(deeprec::kSparseLayersCudaDtypes));
  kernel_dtypes["row_adam"] = py::dict(py::arg("cpu") = dtype_names(deeprec::kRowAdamCpuDtypes),
                                       py::arg("cuda") = dtype_names(deeprec::kRowAdamCudaDtypes));
  kernel_dtypes["multinomial"] =
      py::dict(py::arg("cpu") = dtype_names(deeprec::kMultinomialCpuDtypes),
               py::arg("cuda") = dtype_names(deeprec::kMultinomialCudaDtypes));
  m.attr("KERNEL_DTYPES") = kernel_dtypes;
#ifdef DEEPREC_WITH_CUDA
  m.attr("WITH_CUDA") = true;
  m.attr("CUDA_ARCHS") = DEEPREC_CUDA_ARCHS;
  // Kernels whose CUDA entry point takes a reduction workspace, and its size in blocks.
  m.attr("CUDA_WORKSPACE_BLOCKS") =
      py::dict(py::arg("masked_mse") = deeprec::kMaskedMseMaxBlocks,
               py::arg("sddmm_residual") = deeprec::kSparseMaxBlocks);
#define DEEPREC_BIND_CUDA(name, args, doc) \
  bind_entry(m, kernel_args, #name "_cuda", &deeprec::name##_cuda, doc ", CUDA.");
  DEEPREC_KERNELS(DEEPREC_BIND_CUDA)
  m.def("cuda_kernel_problem", &cuda_kernel_problem,
        "Empty string if the CUDA kernels run on the device, else the reason.");
  m.def("cuda_runtime_version", &deeprec::cuda_runtime_version);
  m.def("cuda_driver_version", &deeprec::cuda_driver_version);
  m.def("cuda_device_count", &deeprec::cuda_device_count);
#else
  m.attr("WITH_CUDA") = false;
  m.attr("CUDA_ARCHS") = "";
#endif
  m.attr("KERNEL_ARGS") = kernel_args;
}
