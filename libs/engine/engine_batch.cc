// The forward pass itself, over a batch of runs (Engine::Batch): validation and KV slots per run at
// Add time, then one layer loop over the rows of every run still in the batch.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/engine.h"
#include "kernels/kernels.h"

namespace pipeinfer::engine {

absl::Status Engine::Batch::Add(const ForwardInput& in) {
  const StageModel& model = *e_.model_;
  const auto& hp = model.hparams();
  const int64_t n_embd = hp.n_embd;
  int32_t n = in.n_tokens;
  if (n == 0) {
    n = model.is_first() ? static_cast<int32_t>(in.tokens.size())
                         : static_cast<int32_t>(in.hidden.size() / n_embd);
  }
  if (n <= 0) return absl::InvalidArgumentError("a run needs at least one token");
  if (model.is_first()) {
    if (static_cast<int32_t>(in.tokens.size()) != n) {
      return absl::InvalidArgumentError(
          absl::StrCat("first stage needs ", n, " token ids, got ", in.tokens.size()));
    }
    for (int32_t id : in.tokens) {
      if (id < 0 || id >= static_cast<int32_t>(hp.n_vocab)) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", id, " is outside the vocabulary of ", hp.n_vocab));
      }
    }
  } else if (static_cast<int64_t>(in.hidden.size()) != n * n_embd) {
    return absl::InvalidArgumentError(absl::StrCat("hidden input has ", in.hidden.size(),
                                                   " floats, expected ", n, " x ", n_embd));
  }
  if (!in.parents.empty() && static_cast<int32_t>(in.parents.size()) != n) {
    return absl::InvalidArgumentError("parents must have one entry per token");
  }
  if (!in.anchors.empty() && static_cast<int32_t>(in.anchors.size()) != n) {
    return absl::InvalidArgumentError("anchors must have one entry per token");
  }
  for (int32_t r : in.output_rows) {
    if (r < 0 || r >= n) return absl::InvalidArgumentError("output row outside the run");
  }
  for (const Item& it : items_) {
    if (it.in.session == in.session) {
      return absl::InvalidArgumentError(
          absl::StrCat("session ", in.session, " already has a run in this batch"));
    }
  }
  std::vector<int32_t> parents(in.parents.begin(), in.parents.end());
  if (parents.empty()) {
    parents.resize(n);
    for (int32_t i = 0; i < n; ++i) parents[i] = i - 1;
  }

  // Positions, checked against the context before anything is allocated.
  PI_ASSIGN_OR_RETURN(const kv::Sequence* before, e_.kv_->Get(in.session, in.partition));
  const int32_t root_pos = before->size() == 0 ? 0 : before->position.back() + 1;
  std::vector<int32_t> positions(n);
  for (int32_t i = 0; i < n; ++i) {
    if (parents[i] < -1 || parents[i] >= i) {
      return absl::InvalidArgumentError(
          absl::StrCat("token ", i, " has parent ", parents[i], " (must be -1 or earlier)"));
    }
    if (parents[i] >= 0) {
      positions[i] = positions[parents[i]] + 1;
    } else if (!in.anchors.empty() && in.anchors[i] >= 0) {
      if (in.anchors[i] >= before->size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("token ", i, " hangs off slot ", in.anchors[i], " of ", before->size()));
      }
      positions[i] = before->position[in.anchors[i]] + 1;
    } else {
      positions[i] = root_pos;
    }
    if (positions[i] >= e_.max_context_) {
      return absl::OutOfRangeError(
          absl::StrCat("position ", positions[i], " exceeds the context length ", e_.max_context_));
    }
  }
  PI_ASSIGN_OR_RETURN(std::vector<int32_t> slots,
                      e_.kv_->Append(in.session, in.partition, parents, in.anchors));
  Item item;
  item.in = in;
  item.in.n_tokens = n;
  item.seq = e_.kv_->Find(in.session, in.partition);
  item.slots = std::move(slots);
  item.positions = std::move(positions);
  items_.push_back(std::move(item));
  tokens_ += n;
  return absl::OkStatus();
}

void Engine::Attention(const std::vector<const kv::Sequence*>& seqs, int32_t layer,
                       const std::vector<std::vector<int32_t>>& visible, const float* q, float* out,
                       int32_t n_rows) {
  const auto& hp = model_->hparams();
  const int32_t n_head = static_cast<int32_t>(hp.n_head);
  const int32_t hd = static_cast<int32_t>(hp.head_dim());
  const int32_t n_gqa = static_cast<int32_t>(hp.n_gqa());
  const int64_t n_q = hp.n_embd_q();  // row stride of q and out
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const bool f16 = options_.kv_type == kv::ElemType::kF16;
  const size_t elem = f16 ? 2 : 4;

  pool_->ParallelFor(
      static_cast<int64_t>(n_rows) * n_head, 1, [&](int64_t begin, int64_t end, int thread) {
        std::vector<float>& scores = scratch_[thread];
        for (int64_t task = begin; task < end; ++task) {
          const int32_t t = static_cast<int32_t>(task / n_head);
          const int32_t h = static_cast<int32_t>(task % n_head);
          const int32_t kvh = h / n_gqa;  // consecutive query heads share a KV head
          const kv::Sequence& seq = *seqs[t];
          const std::vector<int32_t>& keys = visible[t];
          const float* qv = q + t * n_q + h * hd;
          scores.resize(keys.size());
          for (size_t j = 0; j < keys.size(); ++j) {
            const uint8_t* krow = kv_->KeyRow(seq, layer, keys[j]) + kvh * hd * elem;
            scores[j] =
                scale * (f16 ? kernels::DotF32F16(qv, reinterpret_cast<const uint16_t*>(krow), hd)
                             : kernels::DotF32(qv, reinterpret_cast<const float*>(krow), hd));
          }
          kernels::SoftmaxInPlace(scores.data(), static_cast<int64_t>(scores.size()));
          float* o = out + t * n_q + h * hd;
          std::fill(o, o + hd, 0.0f);
          for (size_t j = 0; j < keys.size(); ++j) {
            const uint8_t* vrow = kv_->ValueRow(seq, layer, keys[j]) + kvh * hd * elem;
            if (f16) {
              kernels::AxpyF16(scores[j], reinterpret_cast<const uint16_t*>(vrow), o, hd);
            } else {
              kernels::AxpyF32(scores[j], reinterpret_cast<const float*>(vrow), o, hd);
            }
          }
        }
      });
}

namespace {

// One row's q, k and v between the projections and the KV cache: biases (qwen2, optional in
// llama), per-head RMSNorm of q and k (qwen3), then RoPE of q and k in the architecture's style.
void PrepareQkv(const gguf::LlamaHParams& hp, const RopeConfig& rope, const LayerWeights& w,
                int32_t pos, float* q, float* k, float* v) {
  const int32_t hd = static_cast<int32_t>(hp.head_dim());
  const int32_t n_q = static_cast<int32_t>(hp.n_embd_q());
  const int32_t n_kv = static_cast<int32_t>(hp.n_embd_kv());
  if (!w.bq.empty()) {
    for (int32_t j = 0; j < n_q; ++j) q[j] += w.bq[j];
    for (int32_t j = 0; j < n_kv; ++j) k[j] += w.bk[j];
    for (int32_t j = 0; j < n_kv; ++j) v[j] += w.bv[j];
  }
  float head[1024];  // head_dim <= 1024 (LlamaHParams::FromGguf)
  auto norm_heads = [&](float* x, int32_t n_heads, const std::vector<float>& weight) {
    for (int32_t hh = 0; hh < n_heads; ++hh) {
      std::copy(x + hh * hd, x + (hh + 1) * hd, head);
      kernels::RmsNorm(head, weight.data(), hd, hp.rms_norm_eps, x + hh * hd);
    }
  };
  if (!w.q_norm.empty()) norm_heads(q, static_cast<int32_t>(hp.n_head), w.q_norm);
  if (!w.k_norm.empty()) norm_heads(k, static_cast<int32_t>(hp.n_head_kv), w.k_norm);
  float cos_v[512], sin_v[512];
  RopeAngles(rope, pos, cos_v, sin_v);
  for (int32_t hh = 0; hh < static_cast<int32_t>(hp.n_head); ++hh) {
    RopeRotate(rope.style, rope.n_rot, cos_v, sin_v, q + hh * hd);
  }
  for (int32_t hh = 0; hh < static_cast<int32_t>(hp.n_head_kv); ++hh) {
    RopeRotate(rope.style, rope.n_rot, cos_v, sin_v, k + hh * hd);
  }
}

}  // namespace

std::vector<ForwardOutput> Engine::Batch::Run(BatchStats* stats) {
  Engine& e = e_;
  const StageModel& model = *e.model_;
  const auto& hp = model.hparams();
  const int64_t n_embd = hp.n_embd, n_q = hp.n_embd_q(), n_kv = hp.n_embd_kv(), n_ff = hp.n_ff;
  const int32_t n_items = static_cast<int32_t>(items_.size());
  std::vector<ForwardOutput> outs(n_items);
  for (int32_t i = 0; i < n_items; ++i) {
    outs[i].slots = items_[i].slots;
    outs[i].positions = items_[i].positions;
  }
  if (n_items == 0) return outs;

  // The rows of the runs still in the batch, run after run. `active` holds item indices.
  std::vector<int32_t> active(n_items);
  for (int32_t i = 0; i < n_items; ++i) active[i] = i;
  std::vector<int32_t> row_item, row_slot, row_pos;
  std::vector<const kv::Sequence*> row_seq;
  std::vector<std::vector<int32_t>> visible;
  std::vector<float> x;
  for (int32_t i : active) {
    const Item& it = items_[i];
    for (int32_t t = 0; t < it.in.n_tokens; ++t) {
      row_item.push_back(i);
      row_slot.push_back(it.slots[t]);
      row_pos.push_back(it.positions[t]);
      row_seq.push_back(it.seq);
      // Keys visible to the token (its path): the same for every layer and head.
      const kv::Visibility vis = kv::KvCache::VisibilityOf(*it.seq, it.slots[t]);
      std::vector<int32_t>& v = visible.emplace_back();
      v.reserve(vis.linear_end + vis.extra.size());
      for (int32_t s = 0; s < vis.linear_end; ++s) v.push_back(s);
      v.insert(v.end(), vis.extra.begin(), vis.extra.end());
    }
    const size_t base = x.size();
    x.resize(base + static_cast<size_t>(it.in.n_tokens) * n_embd);
    if (model.is_first()) {
      for (int32_t t = 0; t < it.in.n_tokens; ++t) {
        kernels::DequantizeRow(model.token_embd(), it.in.tokens[t], x.data() + base + t * n_embd);
      }
    } else {
      std::copy(it.in.hidden.begin(), it.in.hidden.end(), x.begin() + base);
    }
  }

  // Drops the rows of the items for which `leave` is true (cancelled runs leave the batch).
  auto shrink = [&](const std::vector<bool>& leave) {
    size_t w = 0;
    for (size_t r = 0; r < row_item.size(); ++r) {
      if (leave[row_item[r]]) continue;
      if (w != r) {
        row_item[w] = row_item[r];
        row_slot[w] = row_slot[r];
        row_pos[w] = row_pos[r];
        row_seq[w] = row_seq[r];
        visible[w] = std::move(visible[r]);
        std::memmove(x.data() + w * n_embd, x.data() + r * n_embd, n_embd * sizeof(float));
      }
      ++w;
    }
    row_item.resize(w);
    row_slot.resize(w);
    row_pos.resize(w);
    row_seq.resize(w);
    visible.resize(w);
    x.resize(w * n_embd);
    std::erase_if(active, [&](int32_t i) { return leave[i]; });
  };

  const bool f16 = e.options_.kv_type == kv::ElemType::kF16;
  std::vector<float> h, q, k, v, attn, tmp, gate, up;
  for (int32_t l = 0; l < model.n_layers(); ++l) {
    std::vector<bool> leave(n_items, false);
    bool any = false;
    for (int32_t i : active) {
      const ForwardInput& in = items_[i].in;
      if (in.cancelled && in.cancelled()) {
        leave[i] = any = true;
        outs[i].stopped = true;
        outs[i].layers_done = l;
      }
    }
    if (any) shrink(leave);
    const int32_t n = static_cast<int32_t>(row_item.size());
    if (n == 0) break;
    if (stats) stats->rows_per_layer.push_back(n);
    h.resize(n * n_embd);
    q.resize(n * n_q);
    k.resize(n * n_kv);
    v.resize(n * n_kv);
    attn.resize(n * n_q);
    tmp.resize(n * n_embd);
    gate.resize(n * n_ff);
    up.resize(n * n_ff);

    const LayerWeights& w = model.layer(l);
    for (int32_t i = 0; i < n; ++i) {
      kernels::RmsNorm(x.data() + i * n_embd, w.attn_norm.data(), n_embd, hp.rms_norm_eps,
                       h.data() + i * n_embd);
    }
    kernels::MatMul(w.wq, h.data(), n_embd, n, q.data(), n_q, *e.pool_);
    kernels::MatMul(w.wk, h.data(), n_embd, n, k.data(), n_kv, *e.pool_);
    kernels::MatMul(w.wv, h.data(), n_embd, n, v.data(), n_kv, *e.pool_);
    for (int32_t i = 0; i < n; ++i) {
      PrepareQkv(hp, model.rope(), w, row_pos[i], q.data() + i * n_q, k.data() + i * n_kv,
                 v.data() + i * n_kv);
      uint8_t* krow = e.kv_->KeyRow(*row_seq[i], l, row_slot[i]);
      uint8_t* vrow = e.kv_->ValueRow(*row_seq[i], l, row_slot[i]);
      if (f16) {
        kernels::FloatToHalfN(k.data() + i * n_kv, reinterpret_cast<uint16_t*>(krow), n_kv);
        kernels::FloatToHalfN(v.data() + i * n_kv, reinterpret_cast<uint16_t*>(vrow), n_kv);
      } else {
        std::memcpy(krow, k.data() + i * n_kv, n_kv * sizeof(float));
        std::memcpy(vrow, v.data() + i * n_kv, n_kv * sizeof(float));
      }
    }
    e.Attention(row_seq, l, visible, q.data(), attn.data(), n);
    kernels::MatMul(w.wo, attn.data(), n_q, n, tmp.data(), n_embd, *e.pool_);
    for (int64_t j = 0; j < n * n_embd; ++j) x[j] += tmp[j];

    for (int32_t i = 0; i < n; ++i) {
      kernels::RmsNorm(x.data() + i * n_embd, w.ffn_norm.data(), n_embd, hp.rms_norm_eps,
                       h.data() + i * n_embd);
    }
    kernels::MatMul(w.w_gate, h.data(), n_embd, n, gate.data(), n_ff, *e.pool_);
    kernels::MatMul(w.w_up, h.data(), n_embd, n, up.data(), n_ff, *e.pool_);
    kernels::SwiGlu(gate.data(), up.data(), gate.data(), n * n_ff);
    kernels::MatMul(w.w_down, gate.data(), n_ff, n, tmp.data(), n_embd, *e.pool_);
    for (int64_t j = 0; j < n * n_embd; ++j) x[j] += tmp[j];
  }

  // Runs still in the batch completed every layer; hand each its rows.
  std::vector<int32_t> first_row(n_items, -1);
  for (size_t r = 0; r < row_item.size(); ++r) {
    if (first_row[row_item[r]] < 0) first_row[row_item[r]] = static_cast<int32_t>(r);
  }
  for (int32_t i : active) outs[i].layers_done = model.n_layers();
  if (!model.is_last()) {
    for (int32_t i : active) {
      const auto begin = x.begin() + static_cast<int64_t>(first_row[i]) * n_embd;
      outs[i].hidden.assign(begin, begin + static_cast<int64_t>(items_[i].in.n_tokens) * n_embd);
    }
    return outs;
  }
  // The output head once for the requested rows of every run.
  std::vector<float> normed;
  for (int32_t i : active) {
    for (int32_t r : items_[i].in.output_rows) {
      const size_t base = normed.size();
      normed.resize(base + n_embd);
      kernels::RmsNorm(x.data() + (static_cast<int64_t>(first_row[i]) + r) * n_embd,
                       model.output_norm().data(), n_embd, hp.rms_norm_eps, normed.data() + base);
    }
  }
  const int64_t n_out = static_cast<int64_t>(normed.size() / n_embd);
  const int64_t n_vocab = hp.n_vocab;
  std::vector<float> logits(n_out * n_vocab);
  if (n_out > 0) {
    kernels::MatMul(model.output(), normed.data(), n_embd, n_out, logits.data(), n_vocab, *e.pool_);
  }
  int64_t o = 0;
  for (int32_t i : active) {
    const int64_t rows = static_cast<int64_t>(items_[i].in.output_rows.size());
    outs[i].logits.assign(logits.begin() + o * n_vocab, logits.begin() + (o + rows) * n_vocab);
    o += rows;
  }
  return outs;
}

}  // namespace pipeinfer::engine
