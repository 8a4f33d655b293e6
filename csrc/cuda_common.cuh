// Host-side helpers every CUDA entry point shares: the caller's device is restored on
// return (DeviceGuard); every CUDA return code becomes a Status, the raw cudaError_t
// recorded for the binding's message (fail / check_launch); the CUDA scalar types for
// the dtype dispatch of common.h.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common.h"
#include "device/device.h"

namespace deeprec {

template <>
struct DtypeOf<__half> {
  static constexpr int value = kFloat16;
};
template <>
struct DtypeOf<__nv_bfloat16> {
  static constexpr int value = kBFloat16;
};
// float32, float64 and both half types (the masked-MSE kernel on CUDA).
using Float32To16 = Types<float, double, __half, __nv_bfloat16>;

namespace cuda {

// Makes `device` current for this scope and restores the caller's device on exit, so a
// kernel call never changes which GPU the rest of the caller's thread talks to.
class DeviceGuard {
 public:
  DeviceGuard() = default;
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  cudaError_t set(int device) {
    cudaError_t err = cudaGetDevice(&previous_);
    if (err != cudaSuccess) {
      previous_ = -1;
      return err;
    }
    if (previous_ == device) {
      previous_ = -1;  // nothing to restore
      return cudaSuccess;
    }
    return cudaSetDevice(device);
  }
  ~DeviceGuard() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }

 private:
  int previous_ = -1;
};

// kCudaError with the error recorded for this thread (take_cuda_error), or kOk.
inline int fail(cudaError_t err) {
  if (err == cudaSuccess) return kOk;
  record_cuda_error(static_cast<int>(err));
  return kCudaError;
}

// After a launch: the launch's own error, if any.
inline int check_launch() { return fail(cudaGetLastError()); }

}  // namespace cuda
}  // namespace deeprec
