// Internal helpers of the CUDA library's host code (.cc files only): turning CUDA runtime and
// cuBLAS results into absl::Status, making a stream's device current for the length of a call,
// and small argument checks. Not part of the public interface (cuda_ops.h).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "cuda/cuda_ops.h"

namespace pipeinfer::cuda::internal {

// OK for cudaSuccess; otherwise a status naming `where` (our function), `call` (the CUDA function)
// and the runtime's description of the error.
absl::Status CudaStatus(cudaError_t err, absl::string_view where, absl::string_view call);

// Evaluates a CUDA runtime call and returns its error as a status from the enclosing function.
#define PI_CUDA_RETURN_IF_ERROR(where, call)                                        \
  do {                                                                              \
    const cudaError_t _pi_cuda_err = (call);                                        \
    if (_pi_cuda_err != cudaSuccess) {                                              \
      return ::pipeinfer::cuda::internal::CudaStatus(_pi_cuda_err, (where), #call); \
    }                                                                               \
  } while (0)

// Makes `device` current while the scope lives and restores the previous device afterwards
// (kernels launch on the current device, and a stream only accepts work from its own device).
class DeviceScope {
 public:
  DeviceScope() = default;
  ~DeviceScope();
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;
  absl::Status Enter(int device, absl::string_view where);

 private:
  int previous_ = -1;
  bool changed_ = false;
};

// Kernel launches report their errors through cudaGetLastError, which also returns an error that
// an earlier runtime call left recorded (and that was already turned into a status then). Called
// before a launch so that the launch's own error is the one checked afterwards; a sticky error (a
// crashed kernel) is not cleared by this and still fails the launch.
inline void ClearStaleError() { (void)cudaGetLastError(); }

inline cudaStream_t Raw(const Stream& s) { return static_cast<cudaStream_t>(s.handle()); }

// INVALID_ARGUMENT "`where`: `what`" unless `ok`.
inline absl::Status Require(bool ok, absl::string_view where, absl::string_view what) {
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", what));
}

inline bool FitsInt(int64_t v) {
  return v >= 0 && v <= static_cast<int64_t>(std::numeric_limits<int>::max());
}

}  // namespace pipeinfer::cuda::internal
