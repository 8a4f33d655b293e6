// Host-side helpers every CUDA entry point shares: the caller's device is restored on
// return (DeviceGuard), and every CUDA return code becomes a Status plus the raw
// cudaError_t for the message (fail / check_launch).
#pragma once

#include <cuda_runtime.h>

#include "../common.h"

namespace deeprec {
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

// kCudaError with the error recorded, or kOk.
inline int fail(cudaError_t err, int* cuda_error) {
  if (err == cudaSuccess) return kOk;
  *cuda_error = static_cast<int>(err);
  return kCudaError;
}

// After a launch: the launch's own error, if any.
inline int check_launch(int* cuda_error) { return fail(cudaGetLastError(), cuda_error); }

}  // namespace cuda
}  // namespace deeprec
