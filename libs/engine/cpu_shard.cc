// One layer slice on the CPU. With the whole layer (one shard) every step below is the engine's
// original forward pass, operation for operation, so the results are unchanged bit for bit.
#include "engine/cpu_shard.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/rope.h"
#include "engine/stage_model.h"

namespace pipeinfer::engine {

namespace {

class CpuShard final : public LayerShard {
 public:
  CpuShard(const StageModel& model, const ShardSlice& slice, kv::KvCache& kv,
           kernels::ThreadPool& pool)
      : model_(model), hp_(model.hparams()), slice_(slice), kv_(kv), pool_(pool) {
    layers_.reserve(model.n_layers());
    for (int32_t l = 0; l < model.n_layers(); ++l) {
      layers_.push_back(SliceLayer(hp_, model.layer(l), slice));
    }
    scratch_.resize(pool.size());
  }

  std::string Describe() const override { return "cpu"; }

  absl::Status Begin(const PassRows& rows, std::span<const float> x) override {
    SetRows(rows);
    x_.assign(x.begin(), x.end());
    // The rotation angles of each row (the same for every layer).
    const RopeConfig& rope = model_.rope();
    const int32_t half = rope.n_rot / 2;
    cos_.resize(static_cast<size_t>(rows.n) * half);
    sin_.resize(cos_.size());
    for (int32_t i = 0; i < rows.n; ++i) {
      RopeAngles(rope, rows.position[i], cos_.data() + i * half, sin_.data() + i * half);
    }
    return absl::OkStatus();
  }

  absl::Status AttentionPartial(int32_t l) override;
  absl::Status FfnPartial(int32_t l) override;

  absl::Status AddPartial() override {
    const int64_t n = static_cast<int64_t>(rows_.n) * hp_.n_embd;
    for (int64_t j = 0; j < n; ++j) x_[j] += partial_[j];
    return absl::OkStatus();
  }

  float* partial() override { return partial_.data(); }

  absl::Status Keep(std::span<const int32_t> keep, const PassRows& rows) override {
    const int64_t n_embd = hp_.n_embd;
    const int32_t half = model_.rope().n_rot / 2;
    for (size_t i = 0; i < keep.size(); ++i) {
      const int32_t r = keep[i];
      if (r == static_cast<int32_t>(i)) continue;
      std::memmove(x_.data() + i * n_embd, x_.data() + r * n_embd, n_embd * sizeof(float));
      std::memmove(cos_.data() + i * half, cos_.data() + r * half, half * sizeof(float));
      std::memmove(sin_.data() + i * half, sin_.data() + r * half, half * sizeof(float));
    }
    x_.resize(keep.size() * n_embd);
    SetRows(rows);
    return absl::OkStatus();
  }

  absl::Status ReadHidden(std::span<float> out) override {
    std::copy(x_.begin(), x_.begin() + out.size(), out.begin());
    return absl::OkStatus();
  }

  absl::Status Head(std::span<const int32_t> which, std::span<float> logits) override;

 private:
  // Takes the rows of a pass, with the byte offset of every visible key's layer-0 key row (a
  // layer adds layer_bytes_, the value row block_tokens rows more): computed once per pass, not
  // per layer and head.
  void SetRows(const PassRows& rows) {
    rows_ = rows;
    const kv::KvConfig& kc = kv_.config();
    key_offset_.resize(rows.vis_slots.size());
    for (size_t j = 0; j < rows.vis_slots.size(); ++j) {
      key_offset_[j] = kv::KeyOffset(kc, rows.vis_slots[j], 0);
    }
  }
  // h_ = RMSNorm(x_) row by row with `weight`; sizes h_ and partial_ for the pass's rows.
  void NormRows(const std::vector<float>& weight) {
    const int64_t n_embd = hp_.n_embd;
    h_.resize(rows_.n * n_embd);
    partial_.resize(rows_.n * n_embd);
    for (int32_t i = 0; i < rows_.n; ++i) {
      kernels::RmsNorm(x_.data() + i * n_embd, weight.data(), n_embd, hp_.rms_norm_eps,
                       h_.data() + i * n_embd);
    }
  }
  // Attention of the slice's heads for every row over its visible keys.
  void Attention(int32_t layer, const float* q, float* out);
  // Biases, per-head norms and RoPE of row i's q and k (the slice's heads).
  void PrepareQkv(const LayerWeights& w, int32_t i, float* q, float* k, float* v);

  const StageModel& model_;
  const gguf::LlamaHParams& hp_;
  ShardSlice slice_;
  kv::KvCache& kv_;
  kernels::ThreadPool& pool_;
  std::vector<SlicedLayer> layers_;
  PassRows rows_;
  std::vector<size_t> key_offset_;  // per entry of rows_.vis_slots (SetRows)
  std::vector<float> x_, h_, q_, k_, v_, attn_, partial_, gate_, up_, cos_, sin_;
  std::vector<std::vector<float>> scratch_;  // per thread: attention scores
};

void CpuShard::PrepareQkv(const LayerWeights& w, int32_t i, float* q, float* k, float* v) {
  const int32_t hd = static_cast<int32_t>(hp_.head_dim());
  const int32_t nq = slice_.n_heads * hd, nkv = slice_.n_kv_heads * hd;
  if (!w.bq.empty()) {
    const float* bq = w.bq.data() + slice_.head0 * hd;
    const float* bk = w.bk.data() + slice_.kv_head0 * hd;
    const float* bv = w.bv.data() + slice_.kv_head0 * hd;
    for (int32_t j = 0; j < nq; ++j) q[j] += bq[j];
    for (int32_t j = 0; j < nkv; ++j) k[j] += bk[j];
    for (int32_t j = 0; j < nkv; ++j) v[j] += bv[j];
  }
  float head[1024];  // head_dim <= 1024 (LlamaHParams::FromGguf)
  auto norm_heads = [&](float* x, int32_t n_heads, const std::vector<float>& weight) {
    for (int32_t hh = 0; hh < n_heads; ++hh) {
      std::copy(x + hh * hd, x + (hh + 1) * hd, head);
      kernels::RmsNorm(head, weight.data(), hd, hp_.rms_norm_eps, x + hh * hd);
    }
  };
  if (!w.q_norm.empty()) norm_heads(q, slice_.n_heads, w.q_norm);
  if (!w.k_norm.empty()) norm_heads(k, slice_.n_kv_heads, w.k_norm);
  const RopeConfig& rope = model_.rope();
  const int32_t half = rope.n_rot / 2;
  const float* c = cos_.data() + i * half;
  const float* s = sin_.data() + i * half;
  for (int32_t hh = 0; hh < slice_.n_heads; ++hh)
    RopeRotate(rope.style, rope.n_rot, c, s, q + hh * hd);
  for (int32_t hh = 0; hh < slice_.n_kv_heads; ++hh) {
    RopeRotate(rope.style, rope.n_rot, c, s, k + hh * hd);
  }
}

void CpuShard::Attention(int32_t layer, const float* q, float* out) {
  const int32_t hd = static_cast<int32_t>(hp_.head_dim());
  const int32_t n_gqa = static_cast<int32_t>(hp_.n_gqa());
  const int64_t stride = static_cast<int64_t>(slice_.n_heads) * hd;  // of q and out
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const kv::KvConfig& kc = kv_.config();
  const bool f16 = kc.type == kv::ElemType::kF16;
  const uint8_t* base = kv_.store().host_data();
  const size_t elem = kc.elem_bytes();
  const size_t value_off = static_cast<size_t>(kc.block_tokens) * kc.row_bytes();
  const size_t layer_off = static_cast<size_t>(layer) * 2 * value_off;
  // A task is one row and a group of the query heads that share a KV head: each key and value row
  // is read (and converted from F16) once for the whole group, in one kernel call per task
  // (AttentionScores / AttentionValues, bit for bit the per-head DotF32 / AxpyF32 computation).
  // Groups are split when there would be too few tasks for the threads.
  int32_t group = n_gqa;
  while (group % 2 == 0 &&
         static_cast<int64_t>(rows_.n) * slice_.n_kv_heads * (n_gqa / group) < 2 * pool_.size()) {
    group /= 2;
  }
  const int32_t groups_per_kv = n_gqa / group;
  const int64_t n_tasks = static_cast<int64_t>(rows_.n) * slice_.n_kv_heads * groups_per_kv;

  pool_.ParallelFor(n_tasks, 1, [&](int64_t begin, int64_t end, int thread) {
    std::vector<float>& scratch = scratch_[thread];
    for (int64_t task = begin; task < end; ++task) {
      const int32_t t = static_cast<int32_t>(task / (slice_.n_kv_heads * groups_per_kv));
      const int32_t rest = static_cast<int32_t>(task % (slice_.n_kv_heads * groups_per_kv));
      const int32_t g = rest / groups_per_kv;                         // local KV head
      const int32_t h0 = g * n_gqa + (rest % groups_per_kv) * group;  // first local query head
      const size_t layer_col = layer_off + static_cast<size_t>(slice_.kv_head0 + g) * hd * elem;
      const size_t* keys = key_offset_.data() + rows_.vis_offsets[t];
      const int32_t n_keys = rows_.vis_offsets[t + 1] - rows_.vis_offsets[t];
      scratch.resize(static_cast<size_t>(group) * n_keys + hd);
      float* row = scratch.data();          // one key or value row as floats
      float* scores = scratch.data() + hd;  // [group][n_keys]
      const float* qg = q + t * stride + static_cast<int64_t>(h0) * hd;
      kernels::AttentionScores(qg, hd, group, base + layer_col, keys, n_keys, f16, hd, scale, row,
                               scores, n_keys);
      float* og = out + t * stride + static_cast<int64_t>(h0) * hd;
      for (int32_t h = 0; h < group; ++h) {
        kernels::SoftmaxInPlace(scores + h * n_keys, n_keys);
        std::fill(og + h * hd, og + (h + 1) * hd, 0.0f);
      }
      kernels::AttentionValues(scores, n_keys, group, base + layer_col + value_off, keys, n_keys,
                               f16, hd, row, og, hd);
    }
  });
}

absl::Status CpuShard::AttentionPartial(int32_t l) {
  const int32_t n = rows_.n;
  const int64_t n_embd = hp_.n_embd;
  const int64_t hd = hp_.head_dim();
  const int64_t nq = slice_.n_heads * hd, nkv = slice_.n_kv_heads * hd;
  q_.resize(n * nq);
  k_.resize(n * nkv);
  v_.resize(n * nkv);
  attn_.resize(n * nq);
  const LayerWeights& w = model_.layer(l);
  const SlicedLayer& s = layers_[l];
  NormRows(w.attn_norm);
  kernels::MatMul(s.wq, h_.data(), n_embd, n, q_.data(), nq, pool_);
  kernels::MatMul(s.wk, h_.data(), n_embd, n, k_.data(), nkv, pool_);
  kernels::MatMul(s.wv, h_.data(), n_embd, n, v_.data(), nkv, pool_);
  const kv::KvConfig& kc = kv_.config();
  const bool f16 = kc.type == kv::ElemType::kF16;
  uint8_t* base = kv_.store().host_data();
  const size_t col = static_cast<size_t>(slice_.kv_head0) * hd * kc.elem_bytes();
  for (int32_t i = 0; i < n; ++i) {
    PrepareQkv(w, i, q_.data() + i * nq, k_.data() + i * nkv, v_.data() + i * nkv);
    uint8_t* krow = base + kv::KeyOffset(kc, rows_.kv_slot[i], l) + col;
    uint8_t* vrow = base + kv::ValueOffset(kc, rows_.kv_slot[i], l) + col;
    if (f16) {
      kernels::FloatToHalfN(k_.data() + i * nkv, reinterpret_cast<uint16_t*>(krow), nkv);
      kernels::FloatToHalfN(v_.data() + i * nkv, reinterpret_cast<uint16_t*>(vrow), nkv);
    } else {
      std::memcpy(krow, k_.data() + i * nkv, nkv * sizeof(float));
      std::memcpy(vrow, v_.data() + i * nkv, nkv * sizeof(float));
    }
  }
  Attention(l, q_.data(), attn_.data());
  kernels::MatMul(s.wo, attn_.data(), nq, n, partial_.data(), n_embd, pool_);
  return absl::OkStatus();
}

absl::Status CpuShard::FfnPartial(int32_t l) {
  const int32_t n = rows_.n;
  const int64_t n_embd = hp_.n_embd, n_ff = slice_.n_ff;
  gate_.resize(n * n_ff);
  up_.resize(n * n_ff);
  const LayerWeights& w = model_.layer(l);
  const SlicedLayer& s = layers_[l];
  NormRows(w.ffn_norm);
  kernels::MatMul(s.w_gate, h_.data(), n_embd, n, gate_.data(), n_ff, pool_);
  kernels::MatMul(s.w_up, h_.data(), n_embd, n, up_.data(), n_ff, pool_);
  kernels::SwiGlu(gate_.data(), up_.data(), gate_.data(), n * n_ff);
  kernels::MatMul(s.w_down, gate_.data(), n_ff, n, partial_.data(), n_embd, pool_);
  return absl::OkStatus();
}

absl::Status CpuShard::Head(std::span<const int32_t> which, std::span<float> logits) {
  const int64_t n_embd = hp_.n_embd;
  std::vector<float> normed(which.size() * n_embd);
  for (size_t i = 0; i < which.size(); ++i) {
    kernels::RmsNorm(x_.data() + static_cast<int64_t>(which[i]) * n_embd,
                     model_.output_norm().data(), n_embd, hp_.rms_norm_eps,
                     normed.data() + i * n_embd);
  }
  if (!which.empty()) {
    kernels::MatMul(model_.output(), normed.data(), n_embd, static_cast<int64_t>(which.size()),
                    logits.data(), hp_.n_vocab, pool_);
  }
  return absl::OkStatus();
}

}  // namespace

std::unique_ptr<LayerShard> MakeCpuShard(const StageModel& model, const ShardSlice& slice,
                                         kv::KvCache& kv, kernels::ThreadPool& pool) {
  return std::make_unique<CpuShard>(model, slice, kv, pool);
}

}  // namespace pipeinfer::engine
