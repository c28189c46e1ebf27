// Where a stage's layers run: `--device cpu|cuda:N`, or `--devices` with a list of one kind that
// splits every layer over the devices (tensor parallelism inside the stage; layer_shard.h).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/layer_shard.h"
#include "kv/kv_cache.h"

namespace pipeinfer::engine {

struct DeviceList {
  bool cuda = false;
  std::vector<int> ordinals;  // CUDA device numbers; for the CPU one entry per shard (all 0)
  int count() const { return static_cast<int>(ordinals.size()); }
};

// Parses "cpu", "cuda", "cuda:N", or a comma-separated list of one kind ("cuda:0,cuda:1",
// "cpu,cpu"). INVALID_ARGUMENT names the bad entry.
absl::StatusOr<DeviceList> ParseDevices(const std::string& text);

// What a GPU stage is made of: its shards, the all-reduce between them, and the KV store in their
// memory (the engine hands it to its KvCache).
struct CudaStage {
  std::unique_ptr<kv::KvStore> kv_store;
  std::vector<std::unique_ptr<LayerShard>> shards;
  std::unique_ptr<AllReduce> all_reduce;
};

// Uploads the stage's weights to the devices and allocates the KV cache there (kv.n_blocks()
// blocks). FAILED_PRECONDITION "no CUDA device: ..." when the build has no CUDA backend or the
// machine has no such device. Defined in cuda_shard.cc (CUDA builds) or cuda_absent.cc.
absl::StatusOr<CudaStage> CreateCudaStage(const StageModel& model, const kv::KvConfig& kv,
                                          std::span<const int> ordinals);

// The default KV budget of a GPU stage (the CPU's is a quarter of host memory): on each device, its
// free memory minus its share of `weight_bytes` and a reserve for activations and cuBLAS (10 % of
// the device plus 1 GiB), times the number of devices (each holds 1/count of every KV row).
// FAILED_PRECONDITION as CreateCudaStage; RESOURCE_EXHAUSTED when the weights leave no room.
absl::StatusOr<uint64_t> CudaKvBudget(std::span<const int> ordinals, uint64_t weight_bytes);

}  // namespace pipeinfer::engine
