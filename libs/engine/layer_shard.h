// The backend seam of the engine. Engine::Batch decides what a pass computes (validation, KV slots,
// positions, the keys each row may see, cancellation between layers, which rows leave the stage);
// a LayerShard computes it on one device: the CPU (cpu_shard.cc) or a CUDA GPU (cuda_shard.cc).
//
// Tensor parallelism inside a stage: a stage can run on several shards, each holding a slice of
// every layer (ShardSlice: a range of query heads with their KV heads, and a range of FFN
// columns). Every shard keeps the whole residual stream x of the pass; after the attention block
// and after the FFN block each shard has its share of the projection back to n_embd (its heads'
// part of W_o, its columns' part of W_down), the shards' shares are summed (AllReduce: in-process
// on the CPU, NCCL on GPUs) and every shard adds the sum to its x. With one shard there is no sum
// and the pass is exactly the unsplit forward.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gguf/llama.h"
#include "kernels/kernels.h"

namespace pipeinfer::engine {

class StageModel;
struct LayerWeights;

// The rows of one pass, as every shard sees them (host memory).
struct PassRows {
  int32_t n = 0;
  std::vector<int32_t> position;     // per row
  std::vector<int64_t> kv_slot;      // per row: the physical KV slot it writes
  std::vector<int32_t> vis_offsets;  // n + 1: row r sees vis_slots[vis_offsets[r], [r + 1])
  std::vector<int64_t> vis_slots;    // physical KV slots (the row's path, in path order)
  int32_t max_visible = 0;
};

// One shard's slice of each layer.
struct ShardSlice {
  int32_t index = 0, count = 1;
  int32_t head0 = 0, n_heads = 0;        // query heads
  int32_t kv_head0 = 0, n_kv_heads = 0;  // the KV heads those query heads read
  int64_t ff0 = 0, n_ff = 0;             // FFN columns
};

// Slice `index` of `count` for a model. INVALID_ARGUMENT when the model cannot be split that way
// (heads or KV heads not divisible by count, or a slice of W_o / W_down columns that does not
// start and end on a block of the weight's type).
absl::StatusOr<ShardSlice> SliceFor(const StageModel& model, int32_t index, int32_t count);

// Row and column views of one layer's matrices for a slice (no copies: the views keep the
// weights' row stride).
struct SlicedLayer {
  kernels::Matrix wq, wk, wv, wo, w_gate, w_up, w_down;
};
SlicedLayer SliceLayer(const gguf::LlamaHParams& hp, const LayerWeights& w, const ShardSlice& s);

class LayerShard {
 public:
  virtual ~LayerShard() = default;
  // "cpu" or "cuda:0 (NVIDIA H100 80GB HBM3)".
  virtual std::string Describe() const = 0;
  // A pass over `rows` starts from their input rows x ([rows.n][n_embd], host memory).
  virtual absl::Status Begin(const PassRows& rows, std::span<const float> x) = 0;
  // Attention block of `layer` (stage-local) for this shard's heads: writes the rows' keys and
  // values into the KV cache, then leaves the slice's share of W_o's output in partial().
  virtual absl::Status AttentionPartial(int32_t layer) = 0;
  // FFN block of `layer` for this shard's columns: W_down's share in partial().
  virtual absl::Status FfnPartial(int32_t layer) = 0;
  // x += partial() (after the shards' partials were summed).
  virtual absl::Status AddPartial() = 0;
  // [rows.n][n_embd] floats in this shard's memory (host or device).
  virtual float* partial() = 0;
  // Rows leave the pass: new row i is old row keep[i]; `rows` describes the rows that stay.
  virtual absl::Status Keep(std::span<const int32_t> keep, const PassRows& rows) = 0;
  // The residual stream of every row (host memory, [rows.n][n_embd]).
  virtual absl::Status ReadHidden(std::span<float> out) = 0;
  // Last stage, shard 0: final norm and output head for rows `which` (current row indices);
  // logits [which.size()][n_vocab].
  virtual absl::Status Head(std::span<const int32_t> which, std::span<float> logits) = 0;
};

// Sums the shards' partial() buffers (n floats each) so that every shard holds the total.
class AllReduce {
 public:
  virtual ~AllReduce() = default;
  virtual absl::Status Sum(std::span<LayerShard* const> shards, int64_t n) = 0;
};

// The in-process all-reduce of CPU shards: adds the buffers in shard order into shard 0's and
// copies the sum back to the others.
std::unique_ptr<AllReduce> MakeHostAllReduce();

}  // namespace pipeinfer::engine
