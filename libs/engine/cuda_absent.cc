// CreateCudaStage of builds without the CUDA backend (PIPEINFER_CUDA=OFF).
#include "absl/status/status.h"
#include "engine/devices.h"

namespace pipeinfer::engine {

absl::StatusOr<CudaStage> CreateCudaStage(const StageModel&, const kv::KvConfig&,
                                          std::span<const int>) {
  return absl::FailedPreconditionError(
      "no CUDA device: this build has no CUDA backend (rebuild with -DPIPEINFER_CUDA=ON; "
      "scripts/test.sh does so when nvcc is installed)");
}

}  // namespace pipeinfer::engine
