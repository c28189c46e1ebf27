// Devices, streams, device and pinned memory, asynchronous copies and the copy-bandwidth probe.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "cuda/cuda_internal.h"
#include "cuda/cuda_ops.h"

namespace pipeinfer::cuda {
namespace internal {

absl::Status CudaStatus(cudaError_t err, absl::string_view where, absl::string_view call) {
  if (err == cudaSuccess) return absl::OkStatus();
  const std::string msg = absl::StrCat(where, ": ", call, " failed: ", cudaGetErrorString(err),
                                       " (", cudaGetErrorName(err), ")");
  switch (err) {
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(msg);
    case cudaErrorInvalidValue:
    case cudaErrorInvalidDevice:
    case cudaErrorInvalidDevicePointer:
    case cudaErrorInvalidResourceHandle:
      return absl::InvalidArgumentError(msg);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
      return absl::FailedPreconditionError(msg);
    default:
      return absl::InternalError(msg);
  }
}

DeviceScope::~DeviceScope() {
  if (changed_) cudaSetDevice(previous_);  // best effort; nothing to report from a destructor
}

absl::Status DeviceScope::Enter(int device, absl::string_view where) {
  int current = -1;
  PI_CUDA_RETURN_IF_ERROR(where, cudaGetDevice(&current));
  if (current == device) return absl::OkStatus();
  PI_CUDA_RETURN_IF_ERROR(where, cudaSetDevice(device));
  previous_ = current;
  changed_ = true;
  return absl::OkStatus();
}

}  // namespace internal

using internal::DeviceScope;
using internal::Raw;
using internal::Require;

// --- Devices --------------------------------------------------------------------------------

absl::StatusOr<int> DeviceCount() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    // Clear the error this thread recorded, so that it does not surface in a later check.
    cudaGetLastError();
    return absl::FailedPreconditionError(
        absl::StrCat("no CUDA device: cudaGetDeviceCount failed: ", cudaGetErrorString(err), " (",
                     cudaGetErrorName(err), ")"));
  }
  if (n <= 0) {
    return absl::FailedPreconditionError("no CUDA device: the driver reports 0 devices");
  }
  return n;
}

namespace {

// OK when `ordinal` names a device; the DeviceCount error (mentioning "no CUDA device") otherwise.
absl::Status CheckOrdinal(int ordinal, absl::string_view where) {
  PI_ASSIGN_OR_RETURN(const int n, DeviceCount());
  if (ordinal < 0 || ordinal >= n) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": device ", ordinal, " does not exist (", n, " devices)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DeviceInfo> UseDevice(int ordinal) {
  PI_RETURN_IF_ERROR(CheckOrdinal(ordinal, "UseDevice"));
  PI_CUDA_RETURN_IF_ERROR("UseDevice", cudaSetDevice(ordinal));
  cudaDeviceProp prop{};
  PI_CUDA_RETURN_IF_ERROR("UseDevice", cudaGetDeviceProperties(&prop, ordinal));
  DeviceInfo info;
  info.ordinal = ordinal;
  info.name = prop.name;
  info.cc_major = prop.major;
  info.cc_minor = prop.minor;
  info.sm_count = prop.multiProcessorCount;
  size_t free_bytes = 0, total_bytes = 0;
  PI_CUDA_RETURN_IF_ERROR("UseDevice", cudaMemGetInfo(&free_bytes, &total_bytes));
  info.total_bytes = total_bytes;
  info.free_bytes = free_bytes;
  return info;
}

// --- Streams ----------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Stream>> Stream::Create(int device) {
  PI_RETURN_IF_ERROR(CheckOrdinal(device, "Stream::Create"));
  DeviceScope scope;
  PI_RETURN_IF_ERROR(scope.Enter(device, "Stream::Create"));
  cudaStream_t raw = nullptr;
  PI_CUDA_RETURN_IF_ERROR("Stream::Create", cudaStreamCreateWithFlags(&raw, cudaStreamNonBlocking));
  std::unique_ptr<Stream> s(new Stream());
  s->device_ = device;
  s->handle_ = raw;
  return s;
}

Stream::~Stream() {
  if (handle_ == nullptr) return;
  DeviceScope scope;
  if (scope.Enter(device_, "Stream::~Stream").ok()) {
    cudaStreamDestroy(static_cast<cudaStream_t>(handle_));
  }
}

absl::Status Stream::Synchronize() {
  PI_CUDA_RETURN_IF_ERROR("Stream::Synchronize",
                          cudaStreamSynchronize(static_cast<cudaStream_t>(handle_)));
  return absl::OkStatus();
}

// --- Device memory ----------------------------------------------------------------------------

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(int device, size_t bytes) {
  DeviceBuffer b;
  b.device_ = device;
  if (bytes == 0) return b;
  DeviceScope scope;
  PI_RETURN_IF_ERROR(scope.Enter(device, "DeviceBuffer::Allocate"));
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err != cudaSuccess) {
    cudaGetLastError();  // an allocation failure is not sticky; do not leave it recorded
    return internal::CudaStatus(
        err, absl::StrCat("DeviceBuffer::Allocate(", bytes, " bytes on device ", device, ")"),
        "cudaMalloc");
  }
  b.ptr_ = p;
  b.bytes_ = bytes;
  return b;
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ == nullptr) return;
  DeviceScope scope;
  if (scope.Enter(device_, "DeviceBuffer::~DeviceBuffer").ok()) cudaFree(ptr_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)),
      bytes_(std::exchange(o.bytes_, 0)),
      device_(o.device_) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    DeviceBuffer old(std::move(*this));  // frees the current memory when it goes out of scope
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
    device_ = o.device_;
  }
  return *this;
}

absl::Status DeviceBuffer::Reserve(size_t bytes) {
  if (bytes <= bytes_) return absl::OkStatus();
  const int device = device_;
  *this = DeviceBuffer();  // free first, so that old and new need not fit together
  device_ = device;
  PI_ASSIGN_OR_RETURN(*this, Allocate(device, bytes));
  return absl::OkStatus();
}

// --- Pinned host memory -----------------------------------------------------------------------

absl::StatusOr<PinnedBuffer> PinnedBuffer::Allocate(size_t bytes) {
  PinnedBuffer b;
  if (bytes == 0) return b;
  void* p = nullptr;
  const cudaError_t err = cudaHostAlloc(&p, bytes, cudaHostAllocPortable);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return internal::CudaStatus(err, absl::StrCat("PinnedBuffer::Allocate(", bytes, " bytes)"),
                                "cudaHostAlloc");
  }
  b.ptr_ = p;
  b.bytes_ = bytes;
  return b;
}

PinnedBuffer::~PinnedBuffer() {
  if (ptr_ != nullptr) cudaFreeHost(ptr_);
}

PinnedBuffer::PinnedBuffer(PinnedBuffer&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& o) noexcept {
  if (this != &o) {
    PinnedBuffer old(std::move(*this));
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

absl::Status PinnedBuffer::Reserve(size_t bytes) {
  if (bytes <= bytes_) return absl::OkStatus();
  *this = PinnedBuffer();
  PI_ASSIGN_OR_RETURN(*this, Allocate(bytes));
  return absl::OkStatus();
}

// --- Copies -----------------------------------------------------------------------------------

namespace {

absl::Status Copy(Stream& s, void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                  absl::string_view where) {
  if (bytes == 0) return absl::OkStatus();
  PI_RETURN_IF_ERROR(Require(dst != nullptr && src != nullptr, where, "null pointer"));
  DeviceScope scope;
  PI_RETURN_IF_ERROR(scope.Enter(s.device(), where));
  PI_CUDA_RETURN_IF_ERROR(where, cudaMemcpyAsync(dst, src, bytes, kind, Raw(s)));
  return absl::OkStatus();
}

}  // namespace

absl::Status CopyToDevice(Stream& s, void* d_dst, const void* src, size_t bytes) {
  return Copy(s, d_dst, src, bytes, cudaMemcpyHostToDevice, "CopyToDevice");
}

absl::Status CopyToHost(Stream& s, void* dst, const void* d_src, size_t bytes) {
  return Copy(s, dst, d_src, bytes, cudaMemcpyDeviceToHost, "CopyToHost");
}

absl::Status CopyOnDevice(Stream& s, void* d_dst, const void* d_src, size_t bytes) {
  return Copy(s, d_dst, d_src, bytes, cudaMemcpyDeviceToDevice, "CopyOnDevice");
}

absl::Status Memset(Stream& s, void* d_dst, int value, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  PI_RETURN_IF_ERROR(Require(d_dst != nullptr, "Memset", "null pointer"));
  DeviceScope scope;
  PI_RETURN_IF_ERROR(scope.Enter(s.device(), "Memset"));
  PI_CUDA_RETURN_IF_ERROR("Memset", cudaMemsetAsync(d_dst, value, bytes, Raw(s)));
  return absl::OkStatus();
}

absl::StatusOr<DeviceBuffer> UploadFloats(Stream& s, std::span<const float> values) {
  PI_ASSIGN_OR_RETURN(DeviceBuffer b, DeviceBuffer::Allocate(s.device(), values.size_bytes()));
  PI_RETURN_IF_ERROR(CopyToDevice(s, b.get(), values.data(), values.size_bytes()));
  // The caller's memory is pageable and may go away when we return: wait for the copy.
  PI_RETURN_IF_ERROR(s.Synchronize());
  return b;
}

// --- Measurement ------------------------------------------------------------------------------

namespace {

// Two timing events, destroyed on every path out of MeasureCopyBandwidth.
struct EventPair {
  cudaEvent_t start = nullptr, stop = nullptr;
  ~EventPair() {
    if (start != nullptr) cudaEventDestroy(start);
    if (stop != nullptr) cudaEventDestroy(stop);
  }
};

}  // namespace

absl::StatusOr<double> MeasureCopyBandwidth(int device, size_t bytes, int reps) {
  constexpr const char* kWhere = "MeasureCopyBandwidth";
  PI_RETURN_IF_ERROR(Require(bytes > 0 && reps >= 1, kWhere, "bytes and reps must be positive"));
  PI_ASSIGN_OR_RETURN(std::unique_ptr<Stream> s, Stream::Create(device));
  PI_ASSIGN_OR_RETURN(DeviceBuffer src, DeviceBuffer::Allocate(device, bytes));
  PI_ASSIGN_OR_RETURN(DeviceBuffer dst, DeviceBuffer::Allocate(device, bytes));
  DeviceScope scope;
  PI_RETURN_IF_ERROR(scope.Enter(device, kWhere));
  EventPair ev;
  PI_CUDA_RETURN_IF_ERROR(kWhere, cudaEventCreate(&ev.start));
  PI_CUDA_RETURN_IF_ERROR(kWhere, cudaEventCreate(&ev.stop));
  PI_RETURN_IF_ERROR(Memset(*s, src.get(), 1, bytes));
  // One untimed copy first (first-touch costs), then the best of `reps` timed ones.
  PI_RETURN_IF_ERROR(CopyOnDevice(*s, dst.get(), src.get(), bytes));
  PI_RETURN_IF_ERROR(s->Synchronize());
  float best_ms = -1.0f;
  for (int i = 0; i < reps; ++i) {
    PI_CUDA_RETURN_IF_ERROR(kWhere, cudaEventRecord(ev.start, Raw(*s)));
    PI_RETURN_IF_ERROR(CopyOnDevice(*s, dst.get(), src.get(), bytes));
    PI_CUDA_RETURN_IF_ERROR(kWhere, cudaEventRecord(ev.stop, Raw(*s)));
    PI_CUDA_RETURN_IF_ERROR(kWhere, cudaEventSynchronize(ev.stop));
    float ms = 0.0f;
    PI_CUDA_RETURN_IF_ERROR(kWhere, cudaEventElapsedTime(&ms, ev.start, ev.stop));
    if (ms > 0.0f && (best_ms < 0.0f || ms < best_ms)) best_ms = ms;
  }
  if (best_ms <= 0.0f) {
    return absl::InternalError(absl::StrCat(kWhere, ": a copy of ", bytes,
                                            " bytes was too fast to time; use a larger size"));
  }
  return 2.0 * static_cast<double>(bytes) / (static_cast<double>(best_ms) * 1e-3);
}

}  // namespace pipeinfer::cuda
