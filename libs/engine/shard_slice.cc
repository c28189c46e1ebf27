// Tensor-parallel slices of a stage's layers, and the in-process all-reduce of CPU shards.
#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/layer_shard.h"
#include "engine/stage_model.h"
#include "kernels/interleave.h"

namespace pipeinfer::engine {

namespace {

// Columns per block: the type's block, or the grouped layout's (16 for F32/F16/BF16 groups).
int64_t BlockOf(const kernels::Matrix& m) {
  return m.interleave != 1 ? kernels::GroupBlockCols(m.type) : gguf::TypeInfo(m.type).block_size;
}

// Rows [r0, r0 + n) of m (multiples of m.interleave; checked by SliceFor).
kernels::Matrix RowView(const kernels::Matrix& m, int64_t r0, int64_t n) {
  kernels::Matrix v = m;
  v.data = m.data + r0 * m.row_bytes;
  v.rows = n;
  return v;
}

// Columns [c0, c0 + n) of m (c0 and n are multiples of BlockOf(m); checked by SliceFor).
kernels::Matrix ColumnView(const kernels::Matrix& m, int64_t c0, int64_t n) {
  const auto info = gguf::TypeInfo(m.type);
  kernels::Matrix v = m;
  v.data = m.data + c0 / info.block_size * info.type_size * m.interleave;
  v.cols = n;
  return v;
}

}  // namespace

absl::StatusOr<ShardSlice> SliceFor(const StageModel& model, int32_t index, int32_t count) {
  const auto& hp = model.hparams();
  if (count < 1 || index < 0 || index >= count) {
    return absl::InvalidArgumentError(absl::StrCat("shard ", index, " of ", count));
  }
  const int32_t n_head = static_cast<int32_t>(hp.n_head);
  const int32_t n_head_kv = static_cast<int32_t>(hp.n_head_kv);
  if (n_head_kv % count != 0) {
    return absl::InvalidArgumentError(absl::StrCat("cannot split ", n_head_kv, " KV heads (",
                                                   n_head, " query heads) over ", count,
                                                   " devices: the count must divide the KV heads"));
  }
  ShardSlice s;
  s.index = index;
  s.count = count;
  s.n_kv_heads = n_head_kv / count;
  s.kv_head0 = index * s.n_kv_heads;
  s.n_heads = n_head / count;  // n_head is a multiple of n_head_kv
  s.head0 = index * s.n_heads;
  if (static_cast<int64_t>(hp.n_ff) % count != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot split ", hp.n_ff, " FFN columns over ", count, " devices"));
  }
  s.n_ff = hp.n_ff / count;
  s.ff0 = index * s.n_ff;
  if (count == 1) return s;
  // W_o and W_down are cut along their columns: the cut must fall on a block boundary.
  const int64_t hd = hp.head_dim();
  for (int32_t l = 0; l < model.n_layers(); ++l) {
    const LayerWeights& w = model.layer(l);
    const int64_t bo = BlockOf(w.wo), bd = BlockOf(w.w_down);
    if ((s.n_heads * hd) % bo != 0 || s.n_ff % bd != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot split layer ", l, " over ", count, " devices: ", s.n_heads * hd,
          " attention-output columns per device must be a multiple of ", bo, " (",
          gguf::TypeInfo(w.wo.type).name, ") and ", s.n_ff, " FFN columns a multiple of ", bd, " (",
          gguf::TypeInfo(w.w_down.type).name, ")"));
    }
    // Matrices stored in groups of rows (kernels/interleave.h): row cuts must fall between
    // groups, and column cuts need every row in a group (no rows left in the file layout).
    const auto whole_groups = [](const kernels::Matrix& m, int64_t n) {
      return n % m.interleave == 0;
    };
    if (!whole_groups(w.wq, s.n_heads * hd) || !whole_groups(w.wk, s.n_kv_heads * hd) ||
        !whole_groups(w.wv, s.n_kv_heads * hd) || !whole_groups(w.w_gate, s.n_ff) ||
        !whole_groups(w.w_up, s.n_ff) || !whole_groups(w.wo, w.wo.rows) ||
        !whole_groups(w.w_down, w.w_down.rows)) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot split layer ", l, " over ", count,
                       " devices: its weights are stored in groups of ", kernels::kGroupRows,
                       " rows, and ", s.n_heads * hd, " query rows, ", s.n_kv_heads * hd,
                       " key/value rows, ", s.n_ff, " FFN rows per device or the ", w.wo.rows,
                       " output rows are not a multiple of it (use --weight-memory mmap)"));
    }
  }
  return s;
}

SlicedLayer SliceLayer(const gguf::LlamaHParams& hp, const LayerWeights& w, const ShardSlice& s) {
  const int64_t hd = hp.head_dim();
  SlicedLayer v;
  v.wq = RowView(w.wq, s.head0 * hd, s.n_heads * hd);
  v.wk = RowView(w.wk, s.kv_head0 * hd, s.n_kv_heads * hd);
  v.wv = RowView(w.wv, s.kv_head0 * hd, s.n_kv_heads * hd);
  v.wo = ColumnView(w.wo, s.head0 * hd, s.n_heads * hd);
  v.w_gate = RowView(w.w_gate, s.ff0, s.n_ff);
  v.w_up = RowView(w.w_up, s.ff0, s.n_ff);
  v.w_down = ColumnView(w.w_down, s.ff0, s.n_ff);
  return v;
}

namespace {

class HostAllReduce final : public AllReduce {
 public:
  absl::Status Sum(std::span<LayerShard* const> shards, int64_t n) override {
    if (shards.size() < 2) return absl::OkStatus();
    float* total = shards[0]->partial();
    for (size_t s = 1; s < shards.size(); ++s) {
      const float* p = shards[s]->partial();
      for (int64_t i = 0; i < n; ++i) total[i] += p[i];
    }
    for (size_t s = 1; s < shards.size(); ++s) {
      std::memcpy(shards[s]->partial(), total, n * sizeof(float));
    }
    return absl::OkStatus();
  }
};

}  // namespace

std::unique_ptr<AllReduce> MakeHostAllReduce() { return std::make_unique<HostAllReduce>(); }

}  // namespace pipeinfer::engine
