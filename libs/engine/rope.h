// Rotary position embedding as llama.cpp computes it: pair i of a head turns by
//   theta_i = freq_scale * pos * base^(-2i/n_rot) / freq_factor_i,
// where the pairs are (2i, 2i+1) in "normal" style (llama) and (i, i + n_rot/2) in NeoX style
// (qwen2, qwen3). freq_factor_i is 1 unless the model has Llama-3.1 frequency factors (the
// `rope_freqs.weight` tensor, or the llama3 rope-scaling keys).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "gguf/llama.h"

namespace pipeinfer::engine {

struct RopeConfig {
  gguf::RopeStyle style = gguf::RopeStyle::kNormal;
  int32_t n_rot = 0;  // rotated dimensions of a head (= head_dim)
  float freq_base = 10000.0f;
  float freq_scale = 1.0f;
  std::vector<float> freq_factors;  // [n_rot / 2] divisors, or empty (all 1)

  // From the hyperparameters and the file's `rope_freqs.weight` values (empty when absent; they
  // take precedence over the llama3 scaling keys).
  static absl::StatusOr<RopeConfig> For(const gguf::LlamaHParams& hp,
                                        std::vector<float> rope_freqs);
};

// Llama-3.1's frequency divisors (what converters store as rope_freqs.weight): pairs whose
// wavelength exceeds orig_ctx / low_freq_factor are slowed by `factor`, those below
// orig_ctx / high_freq_factor are kept, and the ones in between are interpolated.
std::vector<float> Llama3FreqFactors(float freq_base, int32_t n_rot, float factor,
                                     float low_freq_factor, float high_freq_factor,
                                     uint32_t orig_ctx);

// cos and sin of every pair's angle at `position` (n_rot / 2 values each).
void RopeAngles(const RopeConfig& rope, int32_t position, float* cos_out, float* sin_out);

// Rotates one head vector in place with angles from RopeAngles.
void RopeRotate(gguf::RopeStyle style, int32_t n_rot, const float* cos_v, const float* sin_v,
                float* x);

}  // namespace pipeinfer::engine
