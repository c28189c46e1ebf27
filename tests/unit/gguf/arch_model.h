// Small random models of the llama family (llama, qwen2, qwen3) for tests: the weights as plain
// float arrays (so a test can compute with them independently of the engine) and a writer of the
// matching F32 GGUF file, with optional damage (dropped, extra or mis-shaped tensors).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gguf/writer.h"

namespace pipeinfer::testing {

struct ArchModelSpec {
  std::string arch = "qwen3";
  uint32_t n_vocab = 300;
  uint32_t n_embd = 64;
  uint32_t n_layer = 2;
  uint32_t n_ff = 96;
  uint32_t n_head = 4;
  uint32_t n_head_kv = 2;
  uint32_t head_dim = 0;  // 0: n_embd / n_head and no attention.key_length key
  uint32_t n_ctx = 256;
  float eps = 1e-6f;
  float rope_base = 1e6f;
  bool biases = false;            // attn_q/k/v.bias
  bool qk_norm = false;           // attn_q_norm / attn_k_norm
  bool tied = true;               // no output.weight
  float qk_gain = 1.0f;           // scale of Wq and Wk (large values make the q/k norm matter)
  std::vector<float> rope_freqs;  // written as rope_freqs.weight when not empty
  bool llama3_scaling = false;    // rope.scaling.* keys of Llama-3.1
  float scaling_factor = 8.0f, low_freq_factor = 1.0f, high_freq_factor = 4.0f;
  uint32_t orig_ctx = 32;
  uint64_t seed = 7;

  uint32_t hd() const { return head_dim ? head_dim : n_embd / n_head; }
  uint32_t n_q() const { return hd() * n_head; }
  uint32_t n_kv() const { return hd() * n_head_kv; }
};

// Matrices are row-major [out][in] (GGUF shape [in, out]).
struct ArchModel {
  struct Layer {
    std::vector<float> attn_norm, wq, wk, wv, bq, bk, bv, q_norm, k_norm, wo, ffn_norm, gate, up,
        down;
  };
  ArchModelSpec spec;
  std::vector<float> token_embd, output_norm, output;  // output empty when tied
  std::vector<Layer> layers;
};

inline ArchModel MakeArchModel(const ArchModelSpec& s) {
  std::mt19937_64 rng(s.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto draw = [&](size_t n, float scale, float offset = 0.0f) {
    std::vector<float> v(n);
    for (float& x : v) x = offset + scale * normal(rng);
    return v;
  };
  const size_t e = s.n_embd, q = s.n_q(), kv = s.n_kv(), ff = s.n_ff;
  const float in_e = 1.0f / std::sqrt(static_cast<float>(e));
  ArchModel m;
  m.spec = s;
  m.token_embd = draw(s.n_vocab * e, 0.5f);
  for (uint32_t l = 0; l < s.n_layer; ++l) {
    ArchModel::Layer L;
    L.attn_norm = draw(e, 0.1f, 1.0f);
    L.wq = draw(q * e, s.qk_gain * in_e);
    L.wk = draw(kv * e, s.qk_gain * in_e);
    L.wv = draw(kv * e, in_e);
    if (s.biases) {
      L.bq = draw(q, 0.5f);
      L.bk = draw(kv, 0.5f);
      L.bv = draw(kv, 0.1f);
    }
    if (s.qk_norm) {
      L.q_norm = draw(s.hd(), 0.3f, 1.0f);
      L.k_norm = draw(s.hd(), 0.3f, 1.0f);
    }
    L.wo = draw(e * q, 1.0f / std::sqrt(static_cast<float>(q)));
    L.ffn_norm = draw(e, 0.1f, 1.0f);
    L.gate = draw(ff * e, in_e);
    L.up = draw(ff * e, in_e);
    L.down = draw(e * ff, 1.0f / std::sqrt(static_cast<float>(ff)));
    m.layers.push_back(std::move(L));
  }
  m.output_norm = draw(e, 1.0f);
  if (!s.tied) m.output = draw(s.n_vocab * e, 0.5f);
  return m;
}

// Damage for loader tests: tensors to leave out, extra tensors, and shapes to write instead of the
// right ones (all as zeros).
struct ArchModelTweaks {
  std::set<std::string> drop;
  std::vector<std::pair<std::string, std::vector<uint64_t>>> extra;
  std::map<std::string, std::vector<uint64_t>> reshape;
};

inline std::vector<uint8_t> F32Bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

inline absl::Status WriteArchModel(const ArchModel& m, const std::string& path,
                                   const ArchModelTweaks& tweaks = {}) {
  const ArchModelSpec& s = m.spec;
  const std::string a = s.arch;
  gguf::GgufWriter w;
  w.SetString("general.architecture", a);
  w.SetString("general.name", "test-" + a);
  w.SetUint32(a + ".context_length", s.n_ctx);
  w.SetUint32(a + ".embedding_length", s.n_embd);
  w.SetUint32(a + ".block_count", s.n_layer);
  w.SetUint32(a + ".feed_forward_length", s.n_ff);
  w.SetUint32(a + ".attention.head_count", s.n_head);
  w.SetUint32(a + ".attention.head_count_kv", s.n_head_kv);
  if (s.head_dim) {
    w.SetUint32(a + ".attention.key_length", s.head_dim);
    w.SetUint32(a + ".attention.value_length", s.head_dim);
  }
  w.SetFloat32(a + ".attention.layer_norm_rms_epsilon", s.eps);
  w.SetFloat32(a + ".rope.freq_base", s.rope_base);
  if (s.llama3_scaling) {
    w.SetString(a + ".rope.scaling.type", "llama3");
    w.SetFloat32(a + ".rope.scaling.factor", s.scaling_factor);
    w.SetFloat32(a + ".rope.scaling.low_freq_factor", s.low_freq_factor);
    w.SetFloat32(a + ".rope.scaling.high_freq_factor", s.high_freq_factor);
    w.SetUint32(a + ".rope.scaling.original_context_length", s.orig_ctx);
  }
  w.SetString("tokenizer.ggml.model", "gpt2");
  std::vector<std::string> tokens;
  for (uint32_t i = 0; i < s.n_vocab; ++i) tokens.push_back(absl::StrCat("t", i));
  w.SetStringArray("tokenizer.ggml.tokens", tokens);

  absl::Status status;
  auto add = [&](const std::string& name, std::vector<uint64_t> shape,
                 const std::vector<float>& data) {
    if (!status.ok() || tweaks.drop.count(name)) return;
    if (auto it = tweaks.reshape.find(name); it != tweaks.reshape.end()) {
      shape = it->second;
      uint64_t n = 1;
      for (uint64_t d : shape) n *= d;
      status =
          w.AddTensor(name, gguf::TensorType::kF32, shape, F32Bytes(std::vector<float>(n, 0.0f)));
      return;
    }
    status = w.AddTensor(name, gguf::TensorType::kF32, std::move(shape), F32Bytes(data));
  };
  const uint64_t e = s.n_embd, q = s.n_q(), kv = s.n_kv(), ff = s.n_ff, v = s.n_vocab;
  add("token_embd.weight", {e, v}, m.token_embd);
  if (!s.rope_freqs.empty()) add("rope_freqs.weight", {s.rope_freqs.size()}, s.rope_freqs);
  for (uint32_t l = 0; l < s.n_layer; ++l) {
    const ArchModel::Layer& L = m.layers[l];
    const std::string p = absl::StrCat("blk.", l, ".");
    add(p + "attn_norm.weight", {e}, L.attn_norm);
    add(p + "attn_q.weight", {e, q}, L.wq);
    add(p + "attn_k.weight", {e, kv}, L.wk);
    add(p + "attn_v.weight", {e, kv}, L.wv);
    if (s.biases) {
      add(p + "attn_q.bias", {q}, L.bq);
      add(p + "attn_k.bias", {kv}, L.bk);
      add(p + "attn_v.bias", {kv}, L.bv);
    }
    if (s.qk_norm) {
      add(p + "attn_q_norm.weight", {s.hd()}, L.q_norm);
      add(p + "attn_k_norm.weight", {s.hd()}, L.k_norm);
    }
    add(p + "attn_output.weight", {q, e}, L.wo);
    add(p + "ffn_norm.weight", {e}, L.ffn_norm);
    add(p + "ffn_gate.weight", {e, ff}, L.gate);
    add(p + "ffn_up.weight", {e, ff}, L.up);
    add(p + "ffn_down.weight", {ff, e}, L.down);
  }
  add("output_norm.weight", {e}, m.output_norm);
  if (!s.tied) add("output.weight", {e, v}, m.output);
  for (const auto& [name, shape] : tweaks.extra) {
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    if (status.ok()) {
      status =
          w.AddTensor(name, gguf::TensorType::kF32, shape, F32Bytes(std::vector<float>(n, 0.0f)));
    }
  }
  if (!status.ok()) return status;
  return w.WriteFile(path);
}

}  // namespace pipeinfer::testing
