// The CPU implementation of LayerShard: the engine's kernels (libs/kernels) on the stage's thread
// pool, with the KV cache in host memory.
#pragma once

#include <memory>

#include "engine/layer_shard.h"
#include "kernels/thread_pool.h"
#include "kv/kv_cache.h"

namespace pipeinfer::engine {

// `kv` must keep its blocks in host memory; model, kv and pool outlive the shard.
std::unique_ptr<LayerShard> MakeCpuShard(const StageModel& model, const ShardSlice& slice,
                                         kv::KvCache& kv, kernels::ThreadPool& pool);

}  // namespace pipeinfer::engine
