#include "engine/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/huge_pages.h"
#include "common/status_macros.h"
#include "engine/cpu_shard.h"
#include "engine/devices.h"
#include "kernels/interleave.h"
#include "kernels/kernels.h"

namespace pipeinfer::engine {

void ApplyRope(float* x, int32_t head_dim, int32_t position, float freq_base, float freq_scale) {
  RopeConfig rope;
  rope.n_rot = head_dim;
  rope.freq_base = freq_base;
  rope.freq_scale = freq_scale;
  std::vector<float> c(head_dim / 2), s(head_dim / 2);
  RopeAngles(rope, position, c.data(), s.data());
  RopeRotate(gguf::RopeStyle::kNormal, head_dim, c.data(), s.data(), x);
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::unique_ptr<StageModel> model,
                                                       const EngineOptions& options) {
  if (options.threads < 1) return absl::InvalidArgumentError("threads must be >= 1");
  if ((options.kv_capacity_tokens < 1 && options.kv_capacity_bytes == 0) ||
      options.kv_block_tokens < 1) {
    return absl::InvalidArgumentError("KV capacity and block size must be positive");
  }
  std::unique_ptr<Engine> e(new Engine());
  const auto& hp = model->hparams();
  e->model_ = std::move(model);
  e->options_ = options;
  e->max_context_ =
      options.max_context > 0 ? options.max_context : static_cast<int32_t>(hp.n_ctx_train);
  kv::KvConfig kc;
  kc.n_layers = e->model_->n_layers();
  kc.n_embd_kv = static_cast<int32_t>(hp.n_embd_kv());
  kc.type = options.kv_type;
  kc.block_tokens = options.kv_block_tokens;
  kc.capacity_tokens = options.kv_capacity_bytes > 0
                           ? kv::KvConfig::TokensForBytes(kc, options.kv_capacity_bytes)
                           : options.kv_capacity_tokens;
  if (kc.capacity_tokens < kc.block_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV capacity of ", kc.capacity_tokens, " tokens is below one block of ", kc.block_tokens));
  }
  PI_ASSIGN_OR_RETURN(const DeviceList devices, ParseDevices(options.devices));
  e->pool_ = std::make_unique<kernels::ThreadPool>(options.threads);
  if (!devices.cuda) PI_RETURN_IF_ERROR(e->PlaceWeights());  // before any view of the weights
  std::vector<ShardSlice> slices;
  for (int32_t i = 0; i < devices.count(); ++i) {
    PI_ASSIGN_OR_RETURN(ShardSlice s, SliceFor(*e->model_, i, devices.count()));
    slices.push_back(s);
  }
  if (devices.cuda) {
    PI_ASSIGN_OR_RETURN(CudaStage stage, CreateCudaStage(*e->model_, kc, devices.ordinals));
    e->kv_ = std::make_unique<kv::KvCache>(kc, std::move(stage.kv_store));
    e->shards_ = std::move(stage.shards);
    e->all_reduce_ = std::move(stage.all_reduce);
  } else {
    e->kv_ = std::make_unique<kv::KvCache>(kc);
    for (const ShardSlice& s : slices) {
      e->shards_.push_back(MakeCpuShard(*e->model_, s, *e->kv_, *e->pool_));
    }
    e->all_reduce_ = MakeHostAllReduce();
  }
  for (auto& s : e->shards_) e->shard_ptrs_.push_back(s.get());
  return e;
}

absl::Status Engine::PlaceWeights() {
  const double mb = static_cast<double>(model_->weight_bytes()) / 1e6;
  if (options_.weight_memory == WeightMemory::kMapped) {
    weight_description_ = absl::StrFormat("weights: %.1f MB read from the file mapping", mb);
    return absl::OkStatus();
  }
  const std::string thp = TransparentHugePageMode();
  const bool no_thp = thp.empty() || thp == "never";
  // Without huge pages the copy is still made when the kernels want some matrix grouped
  // (kernels/interleave.h): that layout matters more than the page size.
  if (no_thp && !model_->WantsGroupedLayout()) {
    weight_description_ = absl::StrFormat(
        "weights: %.1f MB read from the file mapping (transparent huge pages are %s)", mb,
        thp.empty() ? "not available" : "off");
    return absl::OkStatus();
  }
  const auto t0 = std::chrono::steady_clock::now();
  PI_ASSIGN_OR_RETURN(const uint64_t bytes, model_->MoveWeightsToHugePages());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const HugePageBuffer& b = model_->weight_buffer();
  if (no_thp) {
    weight_description_ = absl::StrFormat(
        "weights: %.1f MB copied into anonymous memory in %.2f s (4 KiB pages: transparent huge "
        "pages are %s)",
        static_cast<double>(bytes) / 1e6, seconds, thp.empty() ? "not available" : "off");
  } else {
    weight_description_ = absl::StrFormat(
        "weights: %.1f MB copied into transparent huge pages in %.2f s (%s; %.1f MB backed by 2 "
        "MiB pages)",
        static_cast<double>(bytes) / 1e6, seconds, b.huge_pages() ? "advised" : "advice refused",
        static_cast<double>(b.HugeBackedBytes()) / 1e6);
  }
  if (model_->grouped_bytes() > 0) {
    absl::StrAppendFormat(&weight_description_,
                          "; %.1f MB stored in groups of %d rows for the %s kernels",
                          static_cast<double>(model_->grouped_bytes()) / 1e6, kernels::kGroupRows,
                          kernels::ActivePath());
  }
  return absl::OkStatus();
}

std::string Engine::DeviceDescription() const {
  if (shards_.size() == 1) return shards_[0]->Describe();
  return absl::StrCat(shards_.size(), " x ", shards_[0]->Describe(), " (tensor parallel)");
}

absl::StatusOr<ForwardOutput> Engine::Forward(const ForwardInput& in) {
  Batch batch(*this);
  PI_RETURN_IF_ERROR(batch.Add(in));
  ForwardOutput out = std::move(batch.Run().front());
  if (!out.error.ok()) return out.error;
  return out;
}

}  // namespace pipeinfer::engine
