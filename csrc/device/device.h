// CUDA runtime facts for Python (error strings, versions, device count, whether the
// kernels run on a device), so
// deeprec.info and the ops can report precisely why CUDA is or is not usable.
#pragma once

namespace deeprec {

const char* cuda_error_string(int cuda_error);
int cuda_runtime_version();  // e.g. 13000
int cuda_driver_version();   // 0 when no driver is installed
int cuda_device_count();     // 0 when no usable device
// Whether this build holds code that runs on CUDA device `device`: every kernel is built
// for the same architectures, so one probe kernel answers for all; kCudaError, with the
// error recorded, otherwise.
int cuda_image_ok(int device);

// The cudaError_t behind the last kCudaError returned on this thread (entry points record
// it; the binding takes it for its message, which resets it to 0).
void record_cuda_error(int cuda_error);
int take_cuda_error();

}  // namespace deeprec
