// One stage's compute: the layer-range forward pass of a llama model over a run of tokens, with
// the run's keys and values kept in the stage's paged KV cache. Several runs (of different
// sessions) can share one pass (Engine::Batch): every weight matrix is then read once for all of
// their rows.
//
// A run is a set of tokens of one session that go into one sequence of the KV cache (the canonical
// sequence or a partition). Tokens form a chain or a tree: each token's parent is an earlier token
// of the run or the end of the sequence's prefix, and a token attends exactly to its path (the
// prefix, its ancestors, itself). The first stage embeds token ids; later stages take the previous
// stage's hidden states; the last stage returns logits for the requested rows only.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/layer_shard.h"
#include "engine/stage_model.h"
#include "kernels/thread_pool.h"
#include "kv/kv_cache.h"

namespace pipeinfer::engine {

// Where a CPU stage reads its weights from (GPU stages upload them and ignore this).
enum class WeightMemory {
  // A copy in anonymous transparent-huge-page memory (common/huge_pages.h), in the layout the
  // kernels want (Q4_0/Q8_0/Q4_K/Q6_K in groups of 8 rows on the avx512-vnni path, F32/F16/BF16
  // on the avx512 path: kernels/interleave.h).
  kHugePages,
  // The file's memory mapping (4 KiB page-cache pages; no copy). Q4_0/Q8_0/Q4_K rows are then
  // read 8 side by side on the avx512-vnni path, Q6_K and float rows one at a time: decode is
  // slower than from the copy (same results).
  kMapped,
};

// The values of the --weight-memory flags: "hugepages" (kHugePages) and "mmap" (kMapped).
inline std::vector<std::string> WeightMemoryNames() { return {"hugepages", "mmap"}; }
// kMapped for "mmap", kHugePages otherwise (the flags accept only the names above).
inline WeightMemory WeightMemoryNamed(std::string_view name) {
  return name == "mmap" ? WeightMemory::kMapped : WeightMemory::kHugePages;
}

struct EngineOptions {
  int32_t threads = 1;
  kv::ElemType kv_type = kv::ElemType::kF16;  // llama.cpp's default
  int64_t kv_capacity_tokens = 4096;          // KV slots (all sessions, all partitions)
  uint64_t kv_capacity_bytes = 0;             // if > 0, overrides kv_capacity_tokens: a byte budget
  int32_t kv_block_tokens = 16;
  int32_t max_context = 0;  // positions must stay below this; 0 = the model's context length
  // Where the layers run (engine/devices.h): "cpu", "cuda:N", or a list of one kind
  // ("cuda:0,cuda:1", "cpu,cpu") that splits every layer over the devices (tensor parallelism).
  std::string devices = "cpu";
  // Where the kernel has transparent huge pages off, kHugePages still copies (into 4 KiB pages)
  // when the kernels want some matrix grouped, and falls back to kMapped otherwise.
  WeightMemory weight_memory = WeightMemory::kHugePages;
};

struct ForwardInput {
  uint64_t session = 0;
  uint32_t partition = kv::KvCache::kCanonical;
  std::span<const int32_t> tokens;   // first stage: token ids (one per run token)
  std::span<const float> hidden;     // later stages: [n_tokens][n_embd]
  int32_t n_tokens = 0;              // 0: taken from tokens (first stage) or hidden
  std::span<const int32_t> parents;  // empty: a chain continuing the sequence
  // Per token: the existing slot a root (parent -1) hangs off, -1 = the sequence's last slot;
  // empty = every root hangs off the last slot (kv::KvCache::Append).
  std::span<const int32_t> anchors;
  std::span<const int32_t> output_rows;  // last stage: ascending run-token indices to return
  std::function<bool()> cancelled;       // polled between layers; true stops the run
};

struct ForwardOutput {
  std::vector<int32_t> slots;      // KV slots written
  std::vector<int32_t> positions;  // position of each run token
  std::vector<float> hidden;       // [n_tokens][n_embd] (not on the last stage)
  std::vector<float> logits;       // [output_rows.size()][n_vocab] (last stage)
  bool stopped = false;            // cancelled between layers; outputs are empty
  int32_t layers_done = 0;
  // Not OK when the pass failed on its device (a GPU error): outputs are empty, and the KV slots
  // of the run hold nothing usable.
  absl::Status error;
};

// How one batched pass went: the rows computed in each layer (a run that is cancelled between
// layers leaves the batch, so the count can only shrink).
struct BatchStats {
  std::vector<int32_t> rows_per_layer;
};

class Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Create(std::unique_ptr<StageModel> model,
                                                        const EngineOptions& options);

  // One run alone (a batch of one).
  absl::StatusOr<ForwardOutput> Forward(const ForwardInput& in);

  // Several runs in one forward pass (continuous batching). Each run keeps its own session,
  // partition, positions and attention (its path in its own sequence); every layer's matrices are
  // read once for the rows of all of them. A run's results are bit-identical to computing it
  // alone, because every kernel computes each row independently of the others.
  //
  // The runs must not read keys or values that another run of the same batch writes: at most one
  // run per session (a second one is refused by Add). A caller that applies KV operations between
  // Add calls must only touch other sessions.
  class Batch {
   public:
    explicit Batch(Engine& engine) : e_(engine) {}
    Batch(const Batch&) = delete;
    Batch& operator=(const Batch&) = delete;

    // Validates `in` and appends its tokens' KV slots now, as Forward would. On error nothing
    // changed and the run takes no part. The spans of `in` must stay valid until Run().
    absl::Status Add(const ForwardInput& in);
    int32_t runs() const { return static_cast<int32_t>(items_.size()); }
    int32_t tokens() const { return tokens_; }
    // Computes every added run; one output per Add that succeeded, in Add order. `cancelled` is
    // polled for each run before every layer: a cancelled run stops (stopped = true) and the
    // others go on without it.
    std::vector<ForwardOutput> Run(BatchStats* stats = nullptr);

   private:
    friend class Engine;
    struct Item {
      ForwardInput in;
      const kv::Sequence* seq = nullptr;
      std::vector<int32_t> slots, positions;
    };
    Engine& e_;
    std::vector<Item> items_;
    int32_t tokens_ = 0;
  };

  const StageModel& model() const { return *model_; }
  const EngineOptions& options() const { return options_; }
  kv::KvCache& kv() { return *kv_; }
  kernels::ThreadPool& pool() { return *pool_; }
  int32_t max_context() const { return max_context_; }
  // The shards the layers run on (one unless the stage is split over several devices).
  int32_t n_shards() const { return static_cast<int32_t>(shards_.size()); }
  const LayerShard& shard(int32_t i) const { return *shards_[i]; }
  // e.g. "cpu", "cuda:0 (NVIDIA H200)", "2 x cpu (tensor parallel)".
  std::string DeviceDescription() const;
  // Where the weights are read from, e.g. "weights: 836.4 MB copied into transparent huge pages
  // (...)"; empty on GPU stages.
  const std::string& WeightDescription() const { return weight_description_; }

 private:
  Engine() = default;
  // CPU stages: applies options_.weight_memory to the model.
  absl::Status PlaceWeights();
  // One pass over the rows of the batch's runs; fills the outputs of the runs that complete.
  absl::Status RunPass(Batch& batch, std::vector<ForwardOutput>& outs, BatchStats* stats);
  // The rows of a pass in the shards' terms: physical KV slots and the keys each row sees.
  PassRows Describe(const std::vector<const kv::Sequence*>& seqs, const std::vector<int32_t>& slots,
                    const std::vector<int32_t>& positions) const;

  std::unique_ptr<StageModel> model_;
  EngineOptions options_;
  std::unique_ptr<kernels::ThreadPool> pool_;
  std::unique_ptr<kv::KvCache> kv_;  // before the shards: they may use its store's memory
  std::vector<std::unique_ptr<LayerShard>> shards_;
  std::unique_ptr<AllReduce> all_reduce_;
  std::vector<LayerShard*> shard_ptrs_;
  int32_t max_context_ = 0;
  std::string weight_description_;
};

// Applies llama.cpp's "normal" RoPE (rotates consecutive pairs) to one head vector in place.
void ApplyRope(float* x, int32_t head_dim, int32_t position, float freq_base, float freq_scale);

}  // namespace pipeinfer::engine
