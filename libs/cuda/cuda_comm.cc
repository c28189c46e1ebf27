// Sum all-reduce across the devices of one process: NCCL when built with PIPEINFER_NCCL, otherwise
// copies through the first device (gather into it, add, copy the sum back out).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(PIPEINFER_HAVE_NCCL)
#include <nccl.h>
#endif

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "cuda/cuda_internal.h"
#include "cuda/cuda_ops.h"

namespace pipeinfer::cuda {

using internal::DeviceScope;
using internal::Raw;
using internal::Require;

struct Communicator::State {
  std::vector<int> devices;
#if defined(PIPEINFER_HAVE_NCCL)
  std::vector<ncclComm_t> comms;  // one per device; empty for world 1
#else
  std::vector<cudaEvent_t> events;  // one per device (created on it); empty for world 1
  DeviceBuffer scratch;             // on devices[0]: one incoming buffer at a time
#endif

  ~State() {
#if defined(PIPEINFER_HAVE_NCCL)
    for (ncclComm_t c : comms) {
      if (c != nullptr) ncclCommDestroy(c);
    }
#else
    for (size_t i = 0; i < events.size(); ++i) {
      if (events[i] == nullptr) continue;
      DeviceScope scope;
      if (scope.Enter(devices[i], "Communicator::~Communicator").ok()) cudaEventDestroy(events[i]);
    }
#endif
  }
};

#if defined(PIPEINFER_HAVE_NCCL)
namespace {

absl::Status NcclStatus(ncclResult_t r, absl::string_view where, absl::string_view call) {
  if (r == ncclSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(where, ": ", call, " failed: ", ncclGetErrorString(r),
                                          " (code ", static_cast<int>(r), ")"));
}

}  // namespace
#endif

absl::StatusOr<std::unique_ptr<Communicator>> Communicator::Create(std::span<const int> devices) {
  constexpr const char* kWhere = "Communicator::Create";
  PI_RETURN_IF_ERROR(Require(!devices.empty(), kWhere, "no devices"));
  PI_ASSIGN_OR_RETURN(const int count, DeviceCount());
  std::vector<int> sorted(devices.begin(), devices.end());
  std::sort(sorted.begin(), sorted.end());
  PI_RETURN_IF_ERROR(Require(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end(),
                             kWhere, "a device is listed twice"));
  PI_RETURN_IF_ERROR(Require(sorted.front() >= 0 && sorted.back() < count, kWhere,
                             absl::StrCat("device ordinals must be in [0, ", count, ")")));

  auto st = std::make_unique<State>();
  st->devices.assign(devices.begin(), devices.end());
  const int n = static_cast<int>(devices.size());
  if (n >= 2) {
#if defined(PIPEINFER_HAVE_NCCL)
    st->comms.assign(n, nullptr);
    const ncclResult_t r = ncclCommInitAll(st->comms.data(), n, st->devices.data());
    if (r != ncclSuccess) {
      st->comms.clear();  // nothing was created
      return NcclStatus(r, kWhere, "ncclCommInitAll");
    }
#else
    st->events.assign(n, nullptr);
    for (int i = 0; i < n; ++i) {
      DeviceScope scope;
      PI_RETURN_IF_ERROR(scope.Enter(st->devices[i], kWhere));
      PI_CUDA_RETURN_IF_ERROR(kWhere,
                              cudaEventCreateWithFlags(&st->events[i], cudaEventDisableTiming));
    }
    PI_ASSIGN_OR_RETURN(st->scratch, DeviceBuffer::Allocate(st->devices[0], 0));
#endif
  }
  std::unique_ptr<Communicator> c(new Communicator());
  c->devices_ = st->devices;
  c->st_ = std::move(st);
  return c;
}

Communicator::~Communicator() = default;

const char* Communicator::backend() const {
#if defined(PIPEINFER_HAVE_NCCL)
  return "nccl";
#else
  return "copy";
#endif
}

absl::Status Communicator::AllReduceSum(std::span<float* const> d_bufs, int64_t n,
                                        std::span<Stream* const> streams) {
  constexpr const char* kWhere = "Communicator::AllReduceSum";
  const int w = world();
  PI_RETURN_IF_ERROR(
      Require(static_cast<int>(d_bufs.size()) == w && static_cast<int>(streams.size()) == w, kWhere,
              absl::StrCat("expected ", w, " buffers and streams, got ", d_bufs.size(), " and ",
                           streams.size())));
  PI_RETURN_IF_ERROR(Require(n >= 0, kWhere, "negative n"));
  for (int i = 0; i < w; ++i) {
    PI_RETURN_IF_ERROR(Require(streams[i] != nullptr && streams[i]->device() == devices_[i], kWhere,
                               absl::StrCat("stream ", i, " is not on device ", devices_[i])));
    PI_RETURN_IF_ERROR(Require(d_bufs[i] != nullptr || n == 0, kWhere, "null buffer"));
  }
  if (w == 1 || n == 0) return absl::OkStatus();  // the sum of one buffer is itself

#if defined(PIPEINFER_HAVE_NCCL)
  // One group, so that NCCL launches the per-device parts together from this thread.
  const ncclResult_t start = ncclGroupStart();
  if (start != ncclSuccess) return NcclStatus(start, kWhere, "ncclGroupStart");
  ncclResult_t first_error = ncclSuccess;
  for (int i = 0; i < w; ++i) {
    const ncclResult_t r = ncclAllReduce(d_bufs[i], d_bufs[i], static_cast<size_t>(n), ncclFloat,
                                         ncclSum, st_->comms[i], Raw(*streams[i]));
    if (r != ncclSuccess && first_error == ncclSuccess) first_error = r;
  }
  const ncclResult_t end = ncclGroupEnd();  // always close the group
  if (first_error != ncclSuccess) return NcclStatus(first_error, kWhere, "ncclAllReduce");
  return NcclStatus(end, kWhere, "ncclGroupEnd");
#else
  State& st = *st_;
  const size_t bytes = static_cast<size_t>(n) * sizeof(float);
  const int dev0 = devices_[0];
  Stream& s0 = *streams[0];
  if (st.scratch.bytes() < bytes) {
    // Earlier calls enqueued on s0 may still read the old scratch.
    PI_RETURN_IF_ERROR(s0.Synchronize());
    st.scratch = DeviceBuffer();
    PI_ASSIGN_OR_RETURN(st.scratch, DeviceBuffer::Allocate(dev0, bytes));
  }
  float* scratch = st.scratch.as<float>();
  // Gather: buffer i (once stream i has produced it) into the scratch, added to buffer 0 on s0.
  for (int i = 1; i < w; ++i) {
    DeviceScope scope_i;
    PI_RETURN_IF_ERROR(scope_i.Enter(devices_[i], kWhere));
    PI_CUDA_RETURN_IF_ERROR(kWhere, cudaEventRecord(st.events[i], Raw(*streams[i])));
    DeviceScope scope0;
    PI_RETURN_IF_ERROR(scope0.Enter(dev0, kWhere));
    PI_CUDA_RETURN_IF_ERROR(kWhere, cudaStreamWaitEvent(Raw(s0), st.events[i], 0));
    PI_CUDA_RETURN_IF_ERROR(
        kWhere, cudaMemcpyPeerAsync(scratch, dev0, d_bufs[i], devices_[i], bytes, Raw(s0)));
    PI_RETURN_IF_ERROR(AddInPlace(s0, d_bufs[0], scratch, n));
  }
  // Broadcast: every other stream waits for the sum, then copies it into its own buffer; s0 then
  // waits for those copies so that later work on s0 cannot overwrite buffer 0 under them.
  {
    DeviceScope scope0;
    PI_RETURN_IF_ERROR(scope0.Enter(dev0, kWhere));
    PI_CUDA_RETURN_IF_ERROR(kWhere, cudaEventRecord(st.events[0], Raw(s0)));
  }
  for (int i = 1; i < w; ++i) {
    DeviceScope scope_i;
    PI_RETURN_IF_ERROR(scope_i.Enter(devices_[i], kWhere));
    PI_CUDA_RETURN_IF_ERROR(kWhere, cudaStreamWaitEvent(Raw(*streams[i]), st.events[0], 0));
    PI_CUDA_RETURN_IF_ERROR(kWhere, cudaMemcpyPeerAsync(d_bufs[i], devices_[i], d_bufs[0], dev0,
                                                        bytes, Raw(*streams[i])));
    PI_CUDA_RETURN_IF_ERROR(kWhere, cudaEventRecord(st.events[i], Raw(*streams[i])));
    DeviceScope scope0;
    PI_RETURN_IF_ERROR(scope0.Enter(dev0, kWhere));
    PI_CUDA_RETURN_IF_ERROR(kWhere, cudaStreamWaitEvent(Raw(s0), st.events[i], 0));
  }
  return absl::OkStatus();
#endif
}

}  // namespace pipeinfer::cuda
