#include "engine/engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/kernels.h"

namespace pipeinfer::engine {

void ApplyRope(float* x, int32_t head_dim, int32_t position, float freq_base, float freq_scale) {
  // Same recurrence as ggml: theta_i = scale * pos * base^(-2i/d), built by repeated products.
  const float theta_scale = std::pow(freq_base, -2.0f / static_cast<float>(head_dim));
  float theta = freq_scale * static_cast<float>(position);
  for (int32_t i = 0; i < head_dim; i += 2) {
    const float c = std::cos(theta), s = std::sin(theta);
    const float x0 = x[i], x1 = x[i + 1];
    x[i] = x0 * c - x1 * s;
    x[i + 1] = x0 * s + x1 * c;
    theta *= theta_scale;
  }
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
  e->kv_ = std::make_unique<kv::KvCache>(kc);
  e->pool_ = std::make_unique<kernels::ThreadPool>(options.threads);
  e->scratch_.resize(options.threads);
  return e;
}

void Engine::Attention(const kv::Sequence& seq, int32_t layer,
                       const std::vector<std::vector<int32_t>>& visible, const float* q, float* out,
                       int32_t n_tokens) {
  const auto& hp = model_->hparams();
  const int32_t n_head = static_cast<int32_t>(hp.n_head);
  const int32_t hd = static_cast<int32_t>(hp.head_dim());
  const int32_t n_gqa = static_cast<int32_t>(hp.n_gqa());
  const int64_t n_embd = hp.n_embd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const bool f16 = options_.kv_type == kv::ElemType::kF16;
  const size_t elem = f16 ? 2 : 4;

  pool_->ParallelFor(
      static_cast<int64_t>(n_tokens) * n_head, 1, [&](int64_t begin, int64_t end, int thread) {
        std::vector<float>& scores = scratch_[thread];
        for (int64_t task = begin; task < end; ++task) {
          const int32_t t = static_cast<int32_t>(task / n_head);
          const int32_t h = static_cast<int32_t>(task % n_head);
          const int32_t kvh = h / n_gqa;  // consecutive query heads share a KV head
          const std::vector<int32_t>& keys = visible[t];
          const float* qv = q + t * n_embd + h * hd;
          scores.resize(keys.size());
          for (size_t j = 0; j < keys.size(); ++j) {
            const uint8_t* krow = kv_->KeyRow(seq, layer, keys[j]) + kvh * hd * elem;
            scores[j] =
                scale * (f16 ? kernels::DotF32F16(qv, reinterpret_cast<const uint16_t*>(krow), hd)
                             : kernels::DotF32(qv, reinterpret_cast<const float*>(krow), hd));
          }
          kernels::SoftmaxInPlace(scores.data(), static_cast<int64_t>(scores.size()));
          float* o = out + t * n_embd + h * hd;
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

absl::StatusOr<ForwardOutput> Engine::Forward(const ForwardInput& in) {
  const auto& hp = model_->hparams();
  const int64_t n_embd = hp.n_embd, n_kv = hp.n_embd_kv(), n_ff = hp.n_ff;
  const int32_t hd = static_cast<int32_t>(hp.head_dim());
  int32_t n = in.n_tokens;
  if (n == 0) {
    n = model_->is_first() ? static_cast<int32_t>(in.tokens.size())
                           : static_cast<int32_t>(in.hidden.size() / n_embd);
  }
  if (n <= 0) return absl::InvalidArgumentError("a run needs at least one token");
  if (model_->is_first()) {
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
  for (int32_t r : in.output_rows) {
    if (r < 0 || r >= n) return absl::InvalidArgumentError("output row outside the run");
  }
  std::vector<int32_t> parents(in.parents.begin(), in.parents.end());
  if (parents.empty()) {
    parents.resize(n);
    for (int32_t i = 0; i < n; ++i) parents[i] = i - 1;
  }

  // Positions, checked against the context before anything is allocated.
  PI_ASSIGN_OR_RETURN(const kv::Sequence* before, kv_->Get(in.session, in.partition));
  const int32_t root_pos = before->size() == 0 ? 0 : before->position.back() + 1;
  std::vector<int32_t> positions(n);
  for (int32_t i = 0; i < n; ++i) {
    if (parents[i] < -1 || parents[i] >= i) {
      return absl::InvalidArgumentError(
          absl::StrCat("token ", i, " has parent ", parents[i], " (must be -1 or earlier)"));
    }
    positions[i] = parents[i] < 0 ? root_pos : positions[parents[i]] + 1;
    if (positions[i] >= max_context_) {
      return absl::OutOfRangeError(
          absl::StrCat("position ", positions[i], " exceeds the context length ", max_context_));
    }
  }
  PI_ASSIGN_OR_RETURN(std::vector<int32_t> slots, kv_->Append(in.session, in.partition, parents));
  const kv::Sequence& seq = *kv_->Find(in.session, in.partition);

  ForwardOutput out;
  out.slots = slots;
  out.positions = positions;

  std::vector<float> x(n * n_embd), h(n * n_embd), q(n * n_embd), k(n * n_kv), v(n * n_kv),
      attn(n * n_embd), tmp(n * n_embd), gate(n * n_ff), up(n * n_ff);
  if (model_->is_first()) {
    for (int32_t i = 0; i < n; ++i) {
      kernels::DequantizeRow(model_->token_embd(), in.tokens[i], x.data() + i * n_embd);
    }
  } else {
    std::copy(in.hidden.begin(), in.hidden.end(), x.begin());
  }

  // Keys visible to each token (its path): the same for every layer and head.
  std::vector<std::vector<int32_t>> visible(n);
  for (int32_t t = 0; t < n; ++t) {
    const kv::Visibility vis = kv::KvCache::VisibilityOf(seq, slots[t]);
    visible[t].reserve(vis.linear_end + vis.extra.size());
    for (int32_t s = 0; s < vis.linear_end; ++s) visible[t].push_back(s);
    visible[t].insert(visible[t].end(), vis.extra.begin(), vis.extra.end());
  }

  const bool f16 = options_.kv_type == kv::ElemType::kF16;
  for (int32_t l = 0; l < model_->n_layers(); ++l) {
    if (in.cancelled && in.cancelled()) {
      out.stopped = true;
      out.layers_done = l;
      return out;
    }
    const LayerWeights& w = model_->layer(l);
    for (int32_t i = 0; i < n; ++i) {
      kernels::RmsNorm(x.data() + i * n_embd, w.attn_norm.data(), n_embd, hp.rms_norm_eps,
                       h.data() + i * n_embd);
    }
    kernels::MatMul(w.wq, h.data(), n_embd, n, q.data(), n_embd, *pool_);
    kernels::MatMul(w.wk, h.data(), n_embd, n, k.data(), n_kv, *pool_);
    kernels::MatMul(w.wv, h.data(), n_embd, n, v.data(), n_kv, *pool_);
    for (int32_t i = 0; i < n; ++i) {
      for (int32_t hh = 0; hh < static_cast<int32_t>(hp.n_head); ++hh) {
        ApplyRope(q.data() + i * n_embd + hh * hd, hd, positions[i], hp.rope_freq_base,
                  hp.rope_freq_scale);
      }
      for (int32_t hh = 0; hh < static_cast<int32_t>(hp.n_head_kv); ++hh) {
        ApplyRope(k.data() + i * n_kv + hh * hd, hd, positions[i], hp.rope_freq_base,
                  hp.rope_freq_scale);
      }
      uint8_t* krow = kv_->KeyRow(seq, l, slots[i]);
      uint8_t* vrow = kv_->ValueRow(seq, l, slots[i]);
      if (f16) {
        kernels::FloatToHalfN(k.data() + i * n_kv, reinterpret_cast<uint16_t*>(krow), n_kv);
        kernels::FloatToHalfN(v.data() + i * n_kv, reinterpret_cast<uint16_t*>(vrow), n_kv);
      } else {
        std::memcpy(krow, k.data() + i * n_kv, n_kv * sizeof(float));
        std::memcpy(vrow, v.data() + i * n_kv, n_kv * sizeof(float));
      }
    }
    Attention(seq, l, visible, q.data(), attn.data(), n);
    kernels::MatMul(w.wo, attn.data(), n_embd, n, tmp.data(), n_embd, *pool_);
    for (int64_t j = 0; j < n * n_embd; ++j) x[j] += tmp[j];

    for (int32_t i = 0; i < n; ++i) {
      kernels::RmsNorm(x.data() + i * n_embd, w.ffn_norm.data(), n_embd, hp.rms_norm_eps,
                       h.data() + i * n_embd);
    }
    kernels::MatMul(w.w_gate, h.data(), n_embd, n, gate.data(), n_ff, *pool_);
    kernels::MatMul(w.w_up, h.data(), n_embd, n, up.data(), n_ff, *pool_);
    kernels::SwiGlu(gate.data(), up.data(), gate.data(), n * n_ff);
    kernels::MatMul(w.w_down, gate.data(), n_ff, n, tmp.data(), n_embd, *pool_);
    for (int64_t j = 0; j < n * n_embd; ++j) x[j] += tmp[j];
  }
  out.layers_done = model_->n_layers();

  if (!model_->is_last()) {
    out.hidden = std::move(x);
    return out;
  }
  const int64_t n_rows = static_cast<int64_t>(in.output_rows.size());
  const int64_t n_vocab = hp.n_vocab;
  std::vector<float> normed(n_rows * n_embd);
  for (int64_t r = 0; r < n_rows; ++r) {
    kernels::RmsNorm(x.data() + in.output_rows[r] * n_embd, model_->output_norm().data(), n_embd,
                     hp.rms_norm_eps, normed.data() + r * n_embd);
  }
  out.logits.resize(n_rows * n_vocab);
  if (n_rows > 0) {
    kernels::MatMul(model_->output(), normed.data(), n_embd, n_rows, out.logits.data(), n_vocab,
                    *pool_);
  }
  return out;
}

}  // namespace pipeinfer::engine
