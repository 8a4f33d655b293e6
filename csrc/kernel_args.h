// One declaration of each kernel's arguments: a struct of named fields, from an X-macro list
// of (type, name) pairs. The same list gives the struct the entry points read (by name:
// `a.B`, never by position), the field types bindings.cpp builds the Python signature from,
// and the names Python passes (deeprec._C.KERNEL_ARGS): the order, the types and the names
// cannot disagree, because there is only one list.
//
//   #define DEEPREC_SPMM_ROWS_ARGS(X) X(const int64_t*, crow) X(int64_t, B) ...
//   DEEPREC_KERNEL_ARGS(SpmmRowsArgs, DEEPREC_SPMM_ROWS_ARGS)
//   int spmm_rows_cpu(const SpmmRowsArgs& a, const CpuLaunch& on);
//
// Every entry point takes its kernel's arguments and then its device's launch arguments
// (CpuLaunch or CudaLaunch, declared the same way below).
#pragma once

#include <cstdint>

#include "checks.h"
#include "common.h"

namespace deeprec {

template <typename... Ts>
struct FieldList {};

namespace detail {
// The expansion of DEEPREC_ARG_TYPE starts with a comma; a leading `void` absorbs it.
template <typename... Ts>
struct DropVoid;
template <typename... Ts>
struct DropVoid<void, Ts...> {
  using type = FieldList<Ts...>;
};
}  // namespace detail

#define DEEPREC_ARG_FIELD(type, name) type name;
#define DEEPREC_ARG_NAME(type, name) #name,
#define DEEPREC_ARG_TYPE(type, name) , type

// struct Struct { <fields>; using Fields = FieldList<types>; static names kNames[]; }
#define DEEPREC_KERNEL_ARGS(Struct, LIST)                                             \
  struct Struct {                                                                     \
    LIST(DEEPREC_ARG_FIELD)                                                           \
    using Fields = typename ::deeprec::detail::DropVoid<void LIST(DEEPREC_ARG_TYPE)>::type; \
    static constexpr const char* kNames[] = {LIST(DEEPREC_ARG_NAME)};                 \
  };

// ---------------------------------------------------------------- the devices' arguments
// CPU: the error word (host memory), the caller's tag for a refused index, and how many
// threads may run (torch's own setting).
#define DEEPREC_CPU_LAUNCH(X) X(int64_t*, err) X(int64_t, err_tag) X(int, num_threads)
DEEPREC_KERNEL_ARGS(CpuLaunch, DEEPREC_CPU_LAUNCH)

// CUDA: the reduction workspace of a kernel that sums a loss (`partials`: doubles, one per
// block; `counter`: a zeroed uint32 the kernel leaves zero; both null for a kernel that
// sums nothing), the error word (device memory) and tag, the device and torch's current
// stream on it.
#define DEEPREC_CUDA_LAUNCH(X)                                                           \
  X(void*, partials) X(void*, counter) X(int64_t*, err) X(int64_t, err_tag) X(int, device) \
  X(void*, stream)
DEEPREC_KERNEL_ARGS(CudaLaunch, DEEPREC_CUDA_LAUNCH)

// Where a launch reports a refused index.
template <typename Launch>
inline ErrorSink sink_of(const Launch& on) {
  return ErrorSink{on.err, on.err_tag};
}

#if !defined(__CUDACC__)
// The frame of a CPU entry point over a CSR batch: `body(t, i, sink)` for the scalar and
// index types `a.dtype` and `a.index_dtype` name (Tag<T>, Tag<I>, of the types in Floats)
// and the launch's error sink; kBadIndex when it refused an index.
template <typename Floats, typename Args, typename Body>
int cpu_entry(const Args& a, const CpuLaunch& on, Body&& body) {
  const ErrorSink sink = sink_of(on);
  return dispatch(Floats{}, a.dtype, a.index_dtype, [&](auto t, auto i) {
    body(t, i, sink);
    return failed(sink) ? kBadIndex : kOk;
  });
}
#endif

}  // namespace deeprec
