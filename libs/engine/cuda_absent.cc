// CreateCudaStage of builds without the CUDA backend (PIPEINFER_CUDA=OFF).
#include "absl/status/status.h"
#include "engine/devices.h"

namespace pipeinfer::engine {

namespace {

absl::Status NoBackend() {
  return absl::FailedPreconditionError(
      "no CUDA device: this build has no CUDA backend (rebuild with -DPIPEINFER_CUDA=ON; "
      "scripts/test.sh does so when nvcc is installed)");
}

}  // namespace

absl::StatusOr<CudaStage> CreateCudaStage(const StageModel&, const kv::KvConfig&,
                                          std::span<const int>) {
  return NoBackend();
}

absl::StatusOr<uint64_t> CudaKvBudget(std::span<const int>, uint64_t) { return NoBackend(); }

}  // namespace pipeinfer::engine
