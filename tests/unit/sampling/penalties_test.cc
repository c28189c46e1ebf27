// Logit bias and the repetition / frequency / presence penalties of sampling::Filter and
// AdjustLogits, against a naive per-token implementation written from the definitions (OpenAI's
// logit_bias and penalties, llama.cpp's repetition penalty): for every vocabulary id, add its bias,
// count its occurrences in the last repeat_last_n tokens, and if it occurs c > 0 times divide a
// positive logit by the repetition penalty (multiply a non-positive one), then subtract
// c * frequency_penalty + presence_penalty. The distribution is then softmax(logit / T) over the
// whole vocabulary (no truncation), or the argmax (lowest id on ties) when greedy.
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "sampling/sampling.h"

namespace pipeinfer::sampling {
namespace {

std::vector<double> NaiveAdjusted(const std::vector<float>& raw, const SamplingParams& p,
                                  const std::vector<int32_t>& history) {
  const size_t n = raw.size();
  std::vector<double> out(n);
  size_t from = 0;
  if (p.repeat_last_n >= 0 && history.size() > static_cast<size_t>(p.repeat_last_n)) {
    from = history.size() - static_cast<size_t>(p.repeat_last_n);
  }
  for (size_t v = 0; v < n; ++v) {
    double l = raw[v];
    for (const auto& [id, b] : p.logit_bias) {
      if (id == static_cast<int32_t>(v)) l += b;
    }
    int c = 0;
    if (p.repeat_last_n != 0) {
      for (size_t i = from; i < history.size(); ++i) c += history[i] == static_cast<int32_t>(v);
    }
    if (c > 0) {
      l = l > 0 ? l / p.repetition_penalty : l * p.repetition_penalty;
      l -= c * p.frequency_penalty + p.presence_penalty;
    }
    out[v] = l;
  }
  return out;
}

struct Case {
  std::vector<float> logits;
  std::vector<int32_t> history;
  SamplingParams params;
};

Case RandomCase(std::mt19937& rng, bool greedy) {
  Case c;
  const int n_vocab = 50;
  std::normal_distribution<float> logit(0.0f, 2.0f);
  for (int i = 0; i < n_vocab; ++i) c.logits.push_back(logit(rng));
  std::uniform_int_distribution<int32_t> tok(0, n_vocab - 1);
  // A small alphabet so that tokens repeat.
  std::uniform_int_distribution<int32_t> hot(0, 7);
  const int len = std::uniform_int_distribution<int>(0, 40)(rng);
  for (int i = 0; i < len; ++i) c.history.push_back(i % 3 == 0 ? tok(rng) : hot(rng));
  std::uniform_real_distribution<float> pen(-2.0f, 2.0f);
  c.params.temperature = greedy ? 0.0f : std::uniform_real_distribution<float>(0.3f, 1.5f)(rng);
  c.params.top_k = 0;
  c.params.repetition_penalty = std::uniform_real_distribution<float>(0.8f, 1.6f)(rng);
  c.params.frequency_penalty = pen(rng);
  c.params.presence_penalty = pen(rng);
  c.params.repeat_last_n = std::uniform_int_distribution<int>(-1, 30)(rng);
  const int n_bias = std::uniform_int_distribution<int>(0, 4)(rng);
  for (int i = 0; i < n_bias; ++i) {
    c.params.logit_bias.emplace_back(tok(rng),
                                     std::uniform_real_distribution<float>(-100, 100)(rng));
  }
  return c;
}

TEST(Penalties, AdjustLogitsMatchesNaive) {
  std::mt19937 rng(7);
  for (int iter = 0; iter < 300; ++iter) {
    const Case c = RandomCase(rng, false);
    std::vector<float> got = c.logits;
    AdjustLogits(got, c.params, c.history);
    const std::vector<double> want = NaiveAdjusted(c.logits, c.params, c.history);
    for (size_t v = 0; v < got.size(); ++v) {
      ASSERT_NEAR(got[v], want[v], 1e-4 * (1 + std::abs(want[v])))
          << "iter " << iter << " id " << v;
    }
  }
}

TEST(Penalties, SampledDistributionMatchesNaiveSoftmax) {
  std::mt19937 rng(11);
  for (int iter = 0; iter < 300; ++iter) {
    const Case c = RandomCase(rng, false);
    const std::vector<double> adj = NaiveAdjusted(c.logits, c.params, c.history);
    const double m = *std::max_element(adj.begin(), adj.end());
    double z = 0;
    for (double l : adj) z += std::exp((l - m) / c.params.temperature);
    const SparseDist d = Filter(c.logits, c.params, c.history);
    double total = 0;
    for (size_t v = 0; v < adj.size(); ++v) {
      const double want = std::exp((adj[v] - m) / c.params.temperature) / z;
      ASSERT_NEAR(d.Prob(static_cast<int32_t>(v)), want, 1e-5) << "iter " << iter << " id " << v;
      total += d.Prob(static_cast<int32_t>(v));
    }
    EXPECT_NEAR(total, 1.0, 1e-4);
  }
}

TEST(Penalties, GreedyPicksNaiveArgmax) {
  std::mt19937 rng(13);
  for (int iter = 0; iter < 300; ++iter) {
    const Case c = RandomCase(rng, true);
    const std::vector<double> adj = NaiveAdjusted(c.logits, c.params, c.history);
    const auto want = static_cast<int32_t>(std::max_element(adj.begin(), adj.end()) - adj.begin());
    const SparseDist d = Filter(c.logits, c.params, c.history);
    ASSERT_EQ(d.size(), 1u);
    EXPECT_EQ(d.ids[0], want) << "iter " << iter;
  }
}

TEST(Penalties, BiasForcesAndBansTokens) {
  std::vector<float> logits = {5.0f, 1.0f, 0.5f, -3.0f};
  SamplingParams p;
  p.temperature = 0.0f;
  p.logit_bias = {{3, 100.0f}};
  EXPECT_EQ(Filter(logits, p, {}).ids[0], 3);
  p.logit_bias = {{0, -100.0f}};
  EXPECT_EQ(Filter(logits, p, {}).ids[0], 1);
  // Out-of-vocabulary ids are ignored.
  p.logit_bias = {{99, 100.0f}};
  EXPECT_EQ(Filter(logits, p, {}).ids[0], 0);
}

TEST(Penalties, FrequencyPenaltyGrowsWithCount) {
  // Token 0 leads by 1.5; seen twice with frequency_penalty 1 it drops by 2 and token 1 wins;
  // seen once it drops by 1 and still wins.
  std::vector<float> logits = {2.5f, 1.0f, 0.0f};
  SamplingParams p;
  p.temperature = 0.0f;
  p.frequency_penalty = 1.0f;
  EXPECT_EQ(Filter(logits, p, std::vector<int32_t>{0}).ids[0], 0);
  EXPECT_EQ(Filter(logits, p, std::vector<int32_t>{0, 0}).ids[0], 1);
  // Presence counts once whatever the count.
  p.frequency_penalty = 0.0f;
  p.presence_penalty = 1.0f;
  EXPECT_EQ(Filter(logits, p, std::vector<int32_t>{0, 0, 0}).ids[0], 0);
  // Outside the window: no effect.
  p.presence_penalty = 2.0f;
  p.repeat_last_n = 1;
  EXPECT_EQ(Filter(logits, p, std::vector<int32_t>{0, 2}).ids[0], 0);
  EXPECT_EQ(Filter(logits, p, std::vector<int32_t>{2, 0}).ids[0], 1);
}

TEST(Penalties, ValidateRanges) {
  SamplingParams p;
  EXPECT_TRUE(Validate(p).ok());
  p.frequency_penalty = 2.5f;
  EXPECT_FALSE(Validate(p).ok());
  p.frequency_penalty = 0.0f;
  p.presence_penalty = -2.01f;
  EXPECT_FALSE(Validate(p).ok());
  p.presence_penalty = NAN;
  EXPECT_FALSE(Validate(p).ok());
  p.presence_penalty = 0.0f;
  p.logit_bias = {{1, 100.5f}};
  EXPECT_FALSE(Validate(p).ok());
  p.logit_bias = {{1, -100.0f}};
  EXPECT_TRUE(Validate(p).ok());
}

TEST(Penalties, AdjustsLogitsOnlyWhenSomethingApplies) {
  SamplingParams p;
  EXPECT_FALSE(AdjustsLogits(p));
  p.frequency_penalty = 0.5f;
  EXPECT_TRUE(AdjustsLogits(p));
  p.repeat_last_n = 0;
  EXPECT_FALSE(AdjustsLogits(p));
  p.logit_bias = {{0, 1.0f}};
  EXPECT_TRUE(AdjustsLogits(p));
}

}  // namespace
}  // namespace pipeinfer::sampling
