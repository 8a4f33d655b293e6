// CUDA runtime queries behind deeprec.info and the ops' availability check (device.h).
#include <cuda_runtime.h>

#include "cuda_common.cuh"
#include "device/device.h"

namespace deeprec {

namespace {
thread_local int last_cuda_error = 0;

// Compiled for the same architectures as every kernel: if the driver finds an image of
// it for a device, it finds one of each.
__global__ void probe_kernel() {}
}  // namespace

int cuda_image_ok(int device) {
  cuda::DeviceGuard guard;
  cudaError_t err = guard.set(device);
  if (err == cudaSuccess) {
    cudaFuncAttributes attr;
    err = cudaFuncGetAttributes(&attr, probe_kernel);
  }
  return cuda::fail(err);
}

void record_cuda_error(int cuda_error) { last_cuda_error = cuda_error; }

int take_cuda_error() {
  const int e = last_cuda_error;
  last_cuda_error = 0;
  return e;
}

const char* cuda_error_string(int cuda_error) {
  return cudaGetErrorString(static_cast<cudaError_t>(cuda_error));
}

int cuda_runtime_version() {
  int v = 0;
  return cudaRuntimeGetVersion(&v) == cudaSuccess ? v : 0;
}

int cuda_driver_version() {
  int v = 0;
  return cudaDriverGetVersion(&v) == cudaSuccess ? v : 0;
}

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

}  // namespace deeprec
