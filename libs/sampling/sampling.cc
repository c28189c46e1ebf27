#include "sampling/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace pipeinfer::sampling {
namespace {

struct Candidate {
  int32_t id;
  float logit;
};

// Logit descending, then id ascending: a strict total order, so every selection is deterministic.
bool Better(const Candidate& a, const Candidate& b) {
  if (a.logit != b.logit) return a.logit > b.logit;
  return a.id < b.id;
}

absl::Status OutOfRange(const char* field, const char* range, double value) {
  return absl::InvalidArgumentError(absl::StrCat(field, " must be ", range, ", got ", value));
}

// The last `n` tokens of `tokens` (all of them for n < 0).
std::span<const int32_t> Window(std::span<const int32_t> tokens, int32_t n) {
  if (n < 0 || static_cast<size_t>(n) >= tokens.size()) return tokens;
  return tokens.subspan(tokens.size() - static_cast<size_t>(n));
}

}  // namespace

absl::Status Validate(const SamplingParams& p) {
  // Written as negated "inside" tests so that NaN fails every check.
  if (!(p.temperature >= 0.0f && p.temperature <= 2.0f)) {
    return OutOfRange("temperature", "in [0, 2]", p.temperature);
  }
  if (p.top_k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", p.top_k));
  }
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) return OutOfRange("top_p", "in (0, 1]", p.top_p);
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) return OutOfRange("min_p", "in [0, 1]", p.min_p);
  if (!(p.repetition_penalty > 0.0f && p.repetition_penalty <= 10.0f)) {
    return OutOfRange("repetition_penalty", "in (0, 10]", p.repetition_penalty);
  }
  if (!(p.frequency_penalty >= -2.0f && p.frequency_penalty <= 2.0f)) {
    return OutOfRange("frequency_penalty", "in [-2, 2]", p.frequency_penalty);
  }
  if (!(p.presence_penalty >= -2.0f && p.presence_penalty <= 2.0f)) {
    return OutOfRange("presence_penalty", "in [-2, 2]", p.presence_penalty);
  }
  for (const auto& [id, bias] : p.logit_bias) {
    if (id < 0) return absl::InvalidArgumentError(absl::StrCat("logit_bias: bad token id ", id));
    if (!(bias >= -100.0f && bias <= 100.0f)) {
      return absl::InvalidArgumentError(
          absl::StrCat("logit_bias values must be in [-100, 100], got ", bias, " for token ", id));
    }
  }
  if (p.repeat_last_n < -1) {
    return absl::InvalidArgumentError(
        absl::StrCat("repeat_last_n must be >= -1, got ", p.repeat_last_n));
  }
  return absl::OkStatus();
}

float SparseDist::Prob(int32_t id) const {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] == id) return probs[i];
  }
  return 0.0f;
}

bool AdjustsLogits(const SamplingParams& p) {
  const bool penalties =
      p.repetition_penalty != 1.0f || p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f;
  return !p.logit_bias.empty() || (penalties && p.repeat_last_n != 0);
}

void AdjustLogits(std::span<float> logits, const SamplingParams& params,
                  std::span<const int32_t> history) {
  const auto n_vocab = static_cast<int64_t>(logits.size());
  // 0. Logit bias.
  for (const auto& [id, bias] : params.logit_bias) {
    if (id >= 0 && id < n_vocab) logits[static_cast<size_t>(id)] += bias;
  }
  // 1. Penalties, once per distinct token of the window with its count.
  const bool penalties = params.repetition_penalty != 1.0f || params.frequency_penalty != 0.0f ||
                         params.presence_penalty != 0.0f;
  if (!penalties || params.repeat_last_n == 0) return;
  std::span<const int32_t> window = Window(history, params.repeat_last_n);
  std::vector<int32_t> seen(window.begin(), window.end());
  std::sort(seen.begin(), seen.end());
  for (size_t i = 0; i < seen.size();) {
    size_t j = i;
    while (j < seen.size() && seen[j] == seen[i]) ++j;
    const int32_t t = seen[i];
    const auto count = static_cast<float>(j - i);
    i = j;
    if (t < 0 || t >= n_vocab) continue;
    float& l = logits[static_cast<size_t>(t)];
    if (params.repetition_penalty != 1.0f) {
      l = l <= 0.0f ? l * params.repetition_penalty : l / params.repetition_penalty;
    }
    l -= count * params.frequency_penalty + params.presence_penalty;
  }
}

SparseDist Filter(std::span<const float> raw_logits, const SamplingParams& params,
                  std::span<const int32_t> history) {
  SparseDist out;
  if (raw_logits.empty()) return out;
  // Steps 0-1 on a copy (+inf first becomes the largest finite float, as below).
  std::vector<float> adjusted;
  std::span<const float> logits = raw_logits;
  if (AdjustsLogits(params)) {
    adjusted.assign(raw_logits.begin(), raw_logits.end());
    for (float& l : adjusted) {
      if (l == std::numeric_limits<float>::infinity()) l = std::numeric_limits<float>::max();
    }
    AdjustLogits(adjusted, params, history);
    logits = adjusted;
  }
  const auto n_vocab = static_cast<int64_t>(logits.size());

  // Candidates: every possible token with its (finite) logit.
  std::vector<Candidate> cand;
  cand.reserve(logits.size());
  for (int64_t i = 0; i < n_vocab; ++i) {
    float l = logits[i];
    if (std::isnan(l) || l == -std::numeric_limits<float>::infinity()) continue;
    if (l == std::numeric_limits<float>::infinity()) l = std::numeric_limits<float>::max();
    cand.push_back({static_cast<int32_t>(i), l});
  }
  if (cand.empty()) return out;

  // 2. Greedy.
  if (params.temperature <= 0.0f) {
    const Candidate best = *std::min_element(cand.begin(), cand.end(), Better);
    out.ids.push_back(best.id);
    out.probs.push_back(1.0f);
    return out;
  }

  // 3. Top-k, leaving the survivors sorted best first.
  size_t keep = cand.size();
  if (params.top_k > 0 && static_cast<size_t>(params.top_k) < cand.size()) {
    keep = static_cast<size_t>(params.top_k);
    std::partial_sort(cand.begin(), cand.begin() + keep, cand.end(), Better);
    cand.resize(keep);
  } else {
    std::sort(cand.begin(), cand.end(), Better);
  }

  // Untempered relative weights exp(l_i - l_max); cand[0] holds the maximum.
  const double l_max = cand[0].logit;
  auto weight = [&](size_t i) { return std::exp(static_cast<double>(cand[i].logit) - l_max); };

  // 4. Top-p: the shortest prefix with cumulative probability >= top_p.
  if (params.top_p < 1.0f) {
    double total = 0.0;
    for (size_t i = 0; i < keep; ++i) total += weight(i);
    const double target = static_cast<double>(params.top_p) * total;
    double cum = 0.0;
    for (size_t i = 0; i < keep; ++i) {
      cum += weight(i);
      if (cum >= target) {
        keep = i + 1;
        break;
      }
    }
  }

  // 5. Min-p: p_i >= min_p * p_max, i.e. exp(l_i - l_max) >= min_p. The first token always stays.
  if (params.min_p > 0.0f) {
    size_t i = 1;
    while (i < keep && weight(i) >= static_cast<double>(params.min_p)) ++i;
    keep = i;
  }

  // 6. Temperature and softmax.
  const double inv_t = 1.0 / static_cast<double>(params.temperature);
  std::vector<double> w(keep);
  double total = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    w[i] = std::exp((static_cast<double>(cand[i].logit) - l_max) * inv_t);
    total += w[i];
  }
  out.ids.reserve(keep);
  out.probs.reserve(keep);
  for (size_t i = 0; i < keep; ++i) {
    const auto p = static_cast<float>(w[i] / total);
    if (p <= 0.0f) break;  // underflow; descending, so everything after is 0 too
    out.ids.push_back(cand[i].id);
    out.probs.push_back(p);
  }
  return out;
}

int32_t Sample(const SparseDist& dist, Rng& rng) {
  if (dist.empty()) return -1;
  const double u = rng.Uniform();
  double total = 0.0;
  for (float p : dist.probs) total += p;
  const double target = u * total;
  double cum = 0.0;
  for (size_t i = 0; i < dist.size(); ++i) {
    cum += dist.probs[i];
    if (cum > target) return dist.ids[i];
  }
  // Rounding: return the last token with positive probability.
  for (size_t i = dist.size(); i-- > 0;) {
    if (dist.probs[i] > 0.0f) return dist.ids[i];
  }
  return dist.ids.back();
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

SparseDist Sampler::Distribution(std::span<const float> logits) const {
  return Filter(logits, params_, History());
}

SparseDist Sampler::DistributionAfter(std::span<const float> logits,
                                      std::span<const int32_t> pending) const {
  if (pending.empty()) return Distribution(logits);
  std::vector<int32_t> combined(History().begin(), History().end());
  combined.insert(combined.end(), pending.begin(), pending.end());
  return Filter(logits, params_, combined);
}

void Sampler::AdjustAfter(std::span<float> logits, std::span<const int32_t> pending) const {
  if (pending.empty()) {
    AdjustLogits(logits, params_, History());
    return;
  }
  std::vector<int32_t> combined(History().begin(), History().end());
  combined.insert(combined.end(), pending.begin(), pending.end());
  AdjustLogits(logits, params_, combined);
}

int32_t Sampler::Next(std::span<const float> logits) { return Sample(Distribution(logits), rng_); }

void Sampler::Accept(int32_t token) {
  const int32_t n = params_.repeat_last_n;
  if (n == 0) return;
  history_.push_back(token);
  if (n > 0 && history_.size() >= 2 * static_cast<size_t>(n)) {
    history_.erase(history_.begin(), history_.end() - n);
  }
}

std::span<const int32_t> Sampler::History() const {
  return Window(history_, params_.repeat_last_n);
}

}  // namespace pipeinfer::sampling
