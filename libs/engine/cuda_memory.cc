// CudaKvBudget (CUDA builds): how much KV cache the devices of a GPU stage can hold by default.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "cuda/cuda_ops.h"
#include "engine/devices.h"

namespace pipeinfer::engine {

absl::StatusOr<uint64_t> CudaKvBudget(std::span<const int> ordinals, uint64_t weight_bytes) {
  PI_ASSIGN_OR_RETURN(const int count, cuda::DeviceCount());
  if (ordinals.empty()) return absl::InvalidArgumentError("no device given");
  const uint64_t share = weight_bytes / ordinals.size();
  uint64_t per_device = UINT64_MAX;
  for (int o : ordinals) {
    if (o >= count) {
      return absl::FailedPreconditionError(
          absl::StrCat("no CUDA device cuda:", o, ": this machine has ", count));
    }
    PI_ASSIGN_OR_RETURN(const cuda::DeviceInfo info, cuda::UseDevice(o));
    const uint64_t reserve = info.total_bytes / 10 + (uint64_t{1} << 30);
    if (info.free_bytes <= share + reserve) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "cuda:", o, " (", info.name, ") has ", info.free_bytes >> 20,
          " MiB free: not enough for ", share >> 20, " MiB of weights plus ", reserve >> 20,
          " MiB of working memory and a KV cache (give --kv-memory, or split the stage over more "
          "devices)"));
    }
    per_device = std::min<uint64_t>(per_device, info.free_bytes - share - reserve);
  }
  return per_device * ordinals.size();
}

}  // namespace pipeinfer::engine
