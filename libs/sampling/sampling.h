// Token sampling with llama.cpp's semantics (common/sampling.cpp of late 2023, default sampler
// queue), a deterministic per-request RNG, and a stateful per-request Sampler.
//
// Pipeline of Filter(), in this order (the same as llama.cpp's):
//   0. Logit bias (OpenAI's logit_bias): a fixed amount added to the raw logit of chosen ids.
//   1. Penalties on the biased logits (AdjustLogits): every distinct token that occurs in the last
//      `repeat_last_n` tokens of the history, c times, gets its logit divided by
//      `repetition_penalty` when the logit is > 0 and multiplied by it otherwise (the CTRL penalty
//      with llama.cpp's fix for negative logits; once per distinct token, whatever its count),
//      then `frequency_penalty * c + presence_penalty` subtracted (OpenAI's penalties, over the
//      same window as llama.cpp does).
//   2. Greedy (temperature <= 0): the argmax of the penalized logits, ties to the lowest id, with
//      probability 1. Steps 3-6 are skipped.
//   3. Top-k (top_k > 0): the k largest logits.
//   4. Top-p (top_p < 1): softmax over the survivors (no temperature yet); the shortest prefix,
//      in descending order, whose cumulative probability is >= top_p (at least one token).
//   5. Min-p (min_p > 0): the survivors whose probability is >= min_p times the largest one.
//   6. Temperature: softmax of logit / temperature over the survivors.
// Like llama.cpp, the truncations (3-5) see the untempered distribution; temperature only
// reshapes what survives. Ordering is by logit descending with ties to the lowest id everywhere
// (llama.cpp leaves ties to std::sort; this library makes them deterministic).
//
// Deliberate differences from llama.cpp: no penalize_nl switch
// (newline is penalized like any token), no tail-free/typical/mirostat samplers, and the history
// starts empty (llama.cpp's ring starts filled with token 0). To match llama.cpp's server, feed the
// prompt tokens to Sampler::Accept before generating (its penalty window covers the prompt tail).
//
// Logits: NaN and -inf mark impossible tokens (never returned); +inf is treated as the largest
// finite float.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace pipeinfer::sampling {

struct SamplingParams {
  float temperature = 0.0f;         // <= 0: greedy. Valid range [0, 2].
  int32_t top_k = 40;               // <= 0: off. Valid range >= 0.
  float top_p = 1.0f;               // 1: off. Valid range (0, 1].
  float min_p = 0.0f;               // 0: off. Valid range [0, 1].
  float repetition_penalty = 1.0f;  // 1: off. Valid range (0, 10].
  int32_t repeat_last_n = 64;       // penalty window; 0: off, -1: the whole history.
  float frequency_penalty = 0.0f;   // 0: off. Valid range [-2, 2].
  float presence_penalty = 0.0f;    // 0: off. Valid range [-2, 2].
  // (token id, bias) pairs, bias in [-100, 100]; ids outside the vocabulary are ignored.
  std::vector<std::pair<int32_t, float>> logit_bias;
  uint64_t seed = 0;  // seeds Rng; callers pick a random one when the client gives none
};

// InvalidArgument naming the first out-of-range field, e.g.
// "temperature must be in [0, 2], got 3.5". NaN is out of every range.
absl::Status Validate(const SamplingParams& params);

// True when AdjustLogits can change logits (a bias, or a penalty with a non-empty window).
bool AdjustsLogits(const SamplingParams& params);

// Steps 0-1 of Filter() on a whole row of logits, in place: logit bias, then the penalties over
// the last `repeat_last_n` tokens of `history`. Also used for the draft model's logits, so that
// drafts follow the same adjusted distribution as the target.
void AdjustLogits(std::span<float> logits, const SamplingParams& params,
                  std::span<const int32_t> history);

// A sparse distribution over token ids: parallel arrays sorted by probability descending (ties:
// lowest id first), probabilities > 0 summing to 1 (up to float rounding). Empty when no token is
// possible (empty logits, or every logit NaN / -inf).
struct SparseDist {
  std::vector<int32_t> ids;
  std::vector<float> probs;

  size_t size() const { return ids.size(); }
  bool empty() const { return ids.empty(); }
  // Probability of `id` (0 when absent). Linear scan.
  float Prob(int32_t id) const;
};

// The filtered target distribution for one position. `logits` has one entry per vocabulary token
// (n_vocab = logits.size()). `history` holds earlier tokens of the sequence, oldest first; only its
// last `repeat_last_n` entries (all of it for -1) are used, ids outside [0, n_vocab) are ignored.
// `params` is assumed valid (see Validate).
SparseDist Filter(std::span<const float> logits, const SamplingParams& params,
                  std::span<const int32_t> history);

// Deterministic per-request random numbers: std::mt19937_64 seeded with the 64-bit seed (its output
// sequence is fixed by the C++ standard, so results are identical across platforms and standard
// libraries). Uniform() uses the top 53 bits of one engine output: k * 2^-53, in [0, 1).
class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}

  uint64_t NextU64() { return engine_(); }
  double Uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }

 private:
  std::mt19937_64 engine_;
};

// Inverse-CDF sampling: draws exactly one Uniform() u and returns the first id (in the
// distribution's order) whose cumulative probability exceeds u times the total. -1 when `dist` is
// empty (no draw is made then).
int32_t Sample(const SparseDist& dist, Rng& rng);

// Per-request sampling state: parameters, the penalty history and the RNG.
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  const SamplingParams& params() const { return params_; }
  Rng& rng() { return rng_; }

  // Filter() with this sampler's params and history.
  SparseDist Distribution(std::span<const float> logits) const;
  // As if the tokens of `pending` (oldest first) had been accepted, without changing the state:
  // the target distribution at a position inside an unverified draft.
  SparseDist DistributionAfter(std::span<const float> logits,
                               std::span<const int32_t> pending) const;
  // AdjustLogits with this sampler's history followed by `pending` (see DistributionAfter).
  void AdjustAfter(std::span<float> logits, std::span<const int32_t> pending) const;
  // Distribution() then Sample(). Does not Accept the token: callers Accept what they keep.
  int32_t Next(std::span<const float> logits);
  // Appends a token to the history (prompt tokens too, to match llama.cpp).
  void Accept(int32_t token);
  // The penalty window: the last repeat_last_n accepted tokens (all for -1), oldest first.
  std::span<const int32_t> History() const;

 private:
  SamplingParams params_;
  Rng rng_;
  // Accepted tokens; when the window is bounded the buffer keeps between n and 2n of them and
  // drops the oldest n at once (amortized O(1) per token, contiguous window).
  std::vector<int32_t> history_;
};

}  // namespace pipeinfer::sampling
