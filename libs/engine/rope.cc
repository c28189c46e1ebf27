#include "engine/rope.h"

#include <cmath>
#include <numbers>

#include "absl/strings/str_cat.h"

namespace pipeinfer::engine {

std::vector<float> Llama3FreqFactors(float freq_base, int32_t n_rot, float factor,
                                     float low_freq_factor, float high_freq_factor,
                                     uint32_t orig_ctx) {
  const double long_wavelen = static_cast<double>(orig_ctx) / low_freq_factor;
  const double short_wavelen = static_cast<double>(orig_ctx) / high_freq_factor;
  std::vector<float> out(n_rot / 2);
  for (int32_t i = 0; i < n_rot / 2; ++i) {
    const double freq = std::pow(static_cast<double>(freq_base), -2.0 * i / n_rot);
    const double wavelen = 2.0 * std::numbers::pi / freq;
    double divisor;
    if (wavelen < short_wavelen) {
      divisor = 1.0;  // high frequency: unchanged
    } else if (wavelen > long_wavelen) {
      divisor = factor;  // low frequency: slowed down by the full factor
    } else {
      // In between: the new frequency blends freq / factor and freq, weighted by `smooth`.
      const double smooth =
          (orig_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
      divisor = 1.0 / ((1.0 - smooth) / factor + smooth);
    }
    out[i] = static_cast<float>(divisor);
  }
  return out;
}

absl::StatusOr<RopeConfig> RopeConfig::For(const gguf::LlamaHParams& hp,
                                           std::vector<float> rope_freqs) {
  RopeConfig r;
  r.style = hp.rope_style;
  r.n_rot = static_cast<int32_t>(hp.n_rot);
  r.freq_base = hp.rope_freq_base;
  r.freq_scale = hp.rope_freq_scale;
  if (!rope_freqs.empty()) {
    if (static_cast<int32_t>(rope_freqs.size()) != r.n_rot / 2) {
      return absl::InvalidArgumentError(absl::StrCat("rope_freqs.weight has ", rope_freqs.size(),
                                                     " values, expected ", r.n_rot / 2));
    }
    for (float v : rope_freqs) {
      if (!(v > 0) || !std::isfinite(v)) {
        return absl::InvalidArgumentError("rope_freqs.weight values must be positive and finite");
      }
    }
    r.freq_factors = std::move(rope_freqs);
  } else if (hp.rope_scaling == gguf::RopeScaling::kLlama3) {
    r.freq_factors =
        Llama3FreqFactors(hp.rope_freq_base, r.n_rot, hp.rope_scaling_factor,
                          hp.rope_low_freq_factor, hp.rope_high_freq_factor, hp.rope_orig_ctx);
  }
  return r;
}

void RopeAngles(const RopeConfig& rope, int32_t position, float* cos_out, float* sin_out) {
  // Like ggml: the base angle is built by repeated products in float.
  const float theta_scale = std::pow(rope.freq_base, -2.0f / static_cast<float>(rope.n_rot));
  float theta = static_cast<float>(position);
  const bool ff = !rope.freq_factors.empty();
  for (int32_t i = 0; i < rope.n_rot / 2; ++i) {
    const float angle = rope.freq_scale * (ff ? theta / rope.freq_factors[i] : theta);
    cos_out[i] = std::cos(angle);
    sin_out[i] = std::sin(angle);
    theta *= theta_scale;
  }
}

void RopeRotate(gguf::RopeStyle style, int32_t n_rot, const float* cos_v, const float* sin_v,
                float* x) {
  const int32_t half = n_rot / 2;
  // Pair i is (x[a], x[b]) with a = 2i, b = 2i + 1 (normal) or a = i, b = i + half (NeoX).
  const int32_t step = style == gguf::RopeStyle::kNeox ? 1 : 2;
  const int32_t gap = style == gguf::RopeStyle::kNeox ? half : 1;
  for (int32_t i = 0; i < half; ++i) {
    float* a = x + i * step;
    float* b = a + gap;
    const float x0 = *a, x1 = *b;
    *a = x0 * cos_v[i] - x1 * sin_v[i];
    *b = x0 * sin_v[i] + x1 * cos_v[i];
  }
}

}  // namespace pipeinfer::engine
