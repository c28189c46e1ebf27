#include "engine/synth.h"

#include <cmath>
#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "gguf/writer.h"
#include "kernels/kernels.h"

namespace pipeinfer::engine {
namespace {

std::vector<uint8_t> RandomTensor(gguf::TensorType type, uint64_t cols, uint64_t rows,
                                  std::mt19937_64& rng) {
  const auto& info = gguf::TypeInfo(type);
  const uint64_t n = cols * rows;
  const float sd = 1.0f / std::sqrt(static_cast<float>(cols));
  std::normal_distribution<float> normal(0.0f, sd);
  std::vector<uint8_t> out(n / info.block_size * info.type_size);
  if (type == gguf::TensorType::kF32) {
    for (uint64_t i = 0; i < n; ++i) {
      const float v = normal(rng);
      std::memcpy(out.data() + 4 * i, &v, 4);
    }
  } else if (type == gguf::TensorType::kF16 || type == gguf::TensorType::kBF16) {
    for (uint64_t i = 0; i < n; ++i) {
      const float v = normal(rng);
      uint16_t h;
      if (type == gguf::TensorType::kF16) {
        h = kernels::FloatToHalf(v);
      } else {
        uint32_t bits;
        std::memcpy(&bits, &v, 4);
        h = static_cast<uint16_t>(bits >> 16);
      }
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  } else {
    for (size_t i = 0; i + 8 <= out.size(); i += 8) {
      const uint64_t r = rng();
      std::memcpy(out.data() + i, &r, 8);
    }
    const uint16_t scale = kernels::FloatToHalf(sd / 8.0f);
    for (size_t b = 0; b < out.size(); b += info.type_size) {
      for (int off : gguf::HalfFieldOffsets(type)) std::memcpy(out.data() + b + off, &scale, 2);
    }
  }
  return out;
}

}  // namespace

absl::Status WriteSyntheticModel(const SynthSpec& s, const std::string& path) {
  if (s.n_vocab < 259) return absl::InvalidArgumentError("n_vocab must be at least 259");
  if (s.n_head == 0 || s.n_head_kv == 0 || s.n_embd % s.n_head != 0 ||
      s.n_head % s.n_head_kv != 0 || (s.n_embd / s.n_head) % 2 != 0) {
    return absl::InvalidArgumentError("inconsistent head counts for n_embd");
  }
  const auto& info = gguf::TypeInfo(s.type);
  if (s.n_embd % info.block_size != 0 || s.n_ff % info.block_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("n_embd and n_ff must be multiples of ", info.block_size, " for ", info.name));
  }
  gguf::GgufWriter w;
  w.SetString("general.architecture", "llama");
  w.SetString("general.name", s.name);
  w.SetString("general.description",
              absl::StrFormat("random weights (seed %d), %s", s.seed, info.name));
  w.SetUint32("llama.context_length", s.n_ctx);
  w.SetUint32("llama.embedding_length", s.n_embd);
  w.SetUint32("llama.block_count", s.n_layer);
  w.SetUint32("llama.feed_forward_length", s.n_ff);
  w.SetUint32("llama.rope.dimension_count", s.n_embd / s.n_head);
  w.SetUint32("llama.attention.head_count", s.n_head);
  w.SetUint32("llama.attention.head_count_kv", s.n_head_kv);
  w.SetFloat32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.SetFloat32("llama.rope.freq_base", 10000.0f);
  w.SetString("tokenizer.ggml.model", "llama");
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
  std::vector<int32_t> types = {2, 3, 3};
  for (int b = 0; b < 256; ++b) {
    tokens.push_back(absl::StrFormat("<0x%02X>", b));
    types.push_back(6);
  }
  while (tokens.size() < s.n_vocab) {
    tokens.push_back(absl::StrCat("\xE2\x96\x81t", tokens.size()));
    types.push_back(1);
  }
  w.SetStringArray("tokenizer.ggml.tokens", tokens);
  w.SetFloat32Array("tokenizer.ggml.scores", std::vector<float>(tokens.size(), 0.0f));
  w.SetInt32Array("tokenizer.ggml.token_type", types);
  w.SetUint32("tokenizer.ggml.bos_token_id", 1);
  w.SetUint32("tokenizer.ggml.eos_token_id", 2);
  w.SetUint32("tokenizer.ggml.unknown_token_id", 0);

  std::mt19937_64 rng(s.seed);
  const uint64_t e = s.n_embd, kv = s.n_embd / s.n_head * s.n_head_kv, ff = s.n_ff, v = s.n_vocab;
  auto norm = [&]() {
    std::vector<uint8_t> d(e * 4);
    for (uint64_t i = 0; i < e; ++i) {
      const float one = 1.0f;
      std::memcpy(d.data() + 4 * i, &one, 4);
    }
    return d;
  };
  // The embedding is looked up per token (never multiplied), so it may use any type too.
  PI_RETURN_IF_ERROR(
      w.AddTensor("token_embd.weight", s.type, {e, v}, RandomTensor(s.type, e, v, rng)));
  for (uint32_t l = 0; l < s.n_layer; ++l) {
    const std::string p = absl::StrCat("blk.", l, ".");
    PI_RETURN_IF_ERROR(w.AddTensor(p + "attn_norm.weight", gguf::TensorType::kF32, {e}, norm()));
    PI_RETURN_IF_ERROR(
        w.AddTensor(p + "attn_q.weight", s.type, {e, e}, RandomTensor(s.type, e, e, rng)));
    PI_RETURN_IF_ERROR(
        w.AddTensor(p + "attn_k.weight", s.type, {e, kv}, RandomTensor(s.type, e, kv, rng)));
    PI_RETURN_IF_ERROR(
        w.AddTensor(p + "attn_v.weight", s.type, {e, kv}, RandomTensor(s.type, e, kv, rng)));
    PI_RETURN_IF_ERROR(
        w.AddTensor(p + "attn_output.weight", s.type, {e, e}, RandomTensor(s.type, e, e, rng)));
    PI_RETURN_IF_ERROR(w.AddTensor(p + "ffn_norm.weight", gguf::TensorType::kF32, {e}, norm()));
    PI_RETURN_IF_ERROR(
        w.AddTensor(p + "ffn_gate.weight", s.type, {e, ff}, RandomTensor(s.type, e, ff, rng)));
    PI_RETURN_IF_ERROR(
        w.AddTensor(p + "ffn_up.weight", s.type, {e, ff}, RandomTensor(s.type, e, ff, rng)));
    PI_RETURN_IF_ERROR(
        w.AddTensor(p + "ffn_down.weight", s.type, {ff, e}, RandomTensor(s.type, ff, e, rng)));
  }
  PI_RETURN_IF_ERROR(w.AddTensor("output_norm.weight", gguf::TensorType::kF32, {e}, norm()));
  PI_RETURN_IF_ERROR(w.AddTensor("output.weight", s.type, {e, v}, RandomTensor(s.type, e, v, rng)));
  return w.WriteFile(path);
}

}  // namespace pipeinfer::engine
