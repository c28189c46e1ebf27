// Sampling: Validate, Filter against a naive reference on random logits over many parameter
// combinations, greedy ties, repetition penalty, RNG determinism and sampled frequencies.
#include "sampling/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "unit/sampling/chi_square.h"

namespace pipeinfer::sampling {
namespace {

using ::testing::HasSubstr;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// ---------------------------------------------------------------------------------------------
// Naive reference: full-vocabulary masks, one quadratic pass per stage, written from the
// llama.cpp definitions independently of the library's sort-based implementation.
SparseDist ReferenceFilter(const std::vector<float>& logits, const SamplingParams& sp,
                           const std::vector<int32_t>& history) {
  const int n = static_cast<int>(logits.size());
  std::vector<double> l(logits.begin(), logits.end());
  std::vector<bool> alive(n);
  for (int i = 0; i < n; ++i) alive[i] = !std::isnan(l[i]) && l[i] != -kInf;

  if (sp.repeat_last_n != 0 && sp.repetition_penalty != 1.0f) {
    std::set<int32_t> window;
    const int start =
        sp.repeat_last_n < 0 ? 0 : std::max(0, static_cast<int>(history.size()) - sp.repeat_last_n);
    for (int i = start; i < static_cast<int>(history.size()); ++i) window.insert(history[i]);
    for (int32_t t : window) {
      if (t < 0 || t >= n || !alive[t]) continue;
      const float f = logits[t];
      l[t] = f <= 0 ? f * sp.repetition_penalty : f / sp.repetition_penalty;
    }
  }
  // Logits as the library stores them (float after the penalty).
  for (int i = 0; i < n; ++i) l[i] = static_cast<float>(l[i]);
  auto better = [&](int a, int b) { return l[a] > l[b] || (l[a] == l[b] && a < b); };

  SparseDist out;
  int best = -1;
  for (int i = 0; i < n; ++i) {
    if (alive[i] && (best < 0 || better(i, best))) best = i;
  }
  if (best < 0) return out;
  if (sp.temperature <= 0) {
    out.ids = {best};
    out.probs = {1.0f};
    return out;
  }
  if (sp.top_k > 0) {
    std::vector<bool> next = alive;
    for (int i = 0; i < n; ++i) {
      if (!alive[i]) continue;
      int rank = 0;
      for (int j = 0; j < n; ++j) rank += alive[j] && better(j, i);
      next[i] = rank < sp.top_k;
    }
    alive = next;
  }
  // Survivors in order, by repeated selection of the best remaining one.
  auto ordered = [&]() {
    std::vector<int> order;
    std::vector<bool> taken(n, false);
    for (;;) {
      int pick = -1;
      for (int i = 0; i < n; ++i) {
        if (alive[i] && !taken[i] && (pick < 0 || better(i, pick))) pick = i;
      }
      if (pick < 0) break;
      taken[pick] = true;
      order.push_back(pick);
    }
    return order;
  };
  if (sp.top_p < 1.0f) {
    std::vector<int> order = ordered();
    double z = 0;
    for (int i : order) z += std::exp(l[i] - l[best]);
    double cum = 0;
    bool reached = false;
    for (int i : order) {
      if (reached) {
        alive[i] = false;
        continue;
      }
      cum += std::exp(l[i] - l[best]);
      reached = cum >= static_cast<double>(sp.top_p) * z;
    }
  }
  if (sp.min_p > 0.0f) {
    for (int i = 0; i < n; ++i) {
      if (alive[i] && i != best && std::exp(l[i] - l[best]) < sp.min_p) alive[i] = false;
    }
  }
  std::vector<int> order = ordered();
  double z = 0;
  for (int i : order) z += std::exp((l[i] - l[best]) / sp.temperature);
  for (int i : order) {
    const float p = static_cast<float>(std::exp((l[i] - l[best]) / sp.temperature) / z);
    if (p > 0) {
      out.ids.push_back(i);
      out.probs.push_back(p);
    }
  }
  return out;
}

void ExpectSameDist(const SparseDist& got, const SparseDist& want, const std::string& what) {
  ASSERT_EQ(got.ids, want.ids) << what;
  ASSERT_EQ(got.probs.size(), want.probs.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got.probs[i], want.probs[i], 1e-6 + 1e-5 * want.probs[i]) << what << " at " << i;
  }
}

double Sum(const SparseDist& d) {
  double s = 0;
  for (float p : d.probs) s += p;
  return s;
}

// ---------------------------------------------------------------------------------------------
TEST(Validate, AcceptsDefaultsAndEdges) {
  EXPECT_TRUE(Validate(SamplingParams{}).ok());
  SamplingParams p;
  p.temperature = 2.0f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 1.0f;
  p.repetition_penalty = 10.0f;
  p.repeat_last_n = -1;
  EXPECT_TRUE(Validate(p).ok());
  p.temperature = 0.0f;
  p.min_p = 0.0f;
  p.top_p = 1e-6f;
  p.repetition_penalty = 1e-3f;
  p.repeat_last_n = 0;
  EXPECT_TRUE(Validate(p).ok());
}

TEST(Validate, RejectsEachFieldWithPreciseMessage) {
  struct Case {
    void (*mutate)(SamplingParams&);
    const char* message;
  };
  const Case cases[] = {
      {[](SamplingParams& p) { p.temperature = -0.5f; }, "temperature must be in [0, 2], got -0.5"},
      {[](SamplingParams& p) { p.temperature = 3.5f; }, "temperature must be in [0, 2], got 3.5"},
      {[](SamplingParams& p) { p.temperature = kNaN; }, "temperature must be in [0, 2], got nan"},
      {[](SamplingParams& p) { p.top_k = -1; }, "top_k must be >= 0, got -1"},
      {[](SamplingParams& p) { p.top_p = 0.0f; }, "top_p must be in (0, 1], got 0"},
      {[](SamplingParams& p) { p.top_p = 1.5f; }, "top_p must be in (0, 1], got 1.5"},
      {[](SamplingParams& p) { p.min_p = -0.25f; }, "min_p must be in [0, 1], got -0.25"},
      {[](SamplingParams& p) { p.min_p = 2.0f; }, "min_p must be in [0, 1], got 2"},
      {[](SamplingParams& p) { p.repetition_penalty = 0.0f; },
       "repetition_penalty must be in (0, 10], got 0"},
      {[](SamplingParams& p) { p.repetition_penalty = 12.0f; },
       "repetition_penalty must be in (0, 10], got 12"},
      {[](SamplingParams& p) { p.repeat_last_n = -2; }, "repeat_last_n must be >= -1, got -2"},
  };
  for (const Case& c : cases) {
    SamplingParams p;
    c.mutate(p);
    const absl::Status s = Validate(p);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_EQ(std::string(s.message()), c.message);
  }
}

// ---------------------------------------------------------------------------------------------
TEST(Filter, GreedyIsArgmaxWithTiesToLowestId) {
  SamplingParams p;  // temperature 0
  const std::vector<float> logits = {1.0f, 5.0f, 5.0f, 2.0f, 5.0f};
  SparseDist d = Filter(logits, p, {});
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d.ids[0], 1);
  EXPECT_EQ(d.probs[0], 1.0f);

  const std::vector<float> masked = {kNaN, -kInf, -3.0f, -3.0f};
  d = Filter(masked, p, {});
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d.ids[0], 2);

  // Negative temperature is greedy too (Filter does not validate).
  p.temperature = -1.0f;
  EXPECT_EQ(Filter(logits, p, {}).ids, std::vector<int32_t>{1});
}

TEST(Filter, SampledTiesOrderByLowestIdAndTopKKeepsLowestIds) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 2;
  const std::vector<float> logits = {0.0f, 3.0f, 3.0f, 3.0f};
  const SparseDist d = Filter(logits, p, {});
  EXPECT_EQ(d.ids, (std::vector<int32_t>{1, 2}));
  EXPECT_FLOAT_EQ(d.probs[0], 0.5f);
}

TEST(Filter, EmptyAndImpossible) {
  SamplingParams p;
  p.temperature = 1.0f;
  EXPECT_TRUE(Filter(std::vector<float>{}, p, {}).empty());
  const std::vector<float> none = {-kInf, kNaN};
  EXPECT_TRUE(Filter(none, p, {}).empty());
  p.temperature = 0.0f;
  EXPECT_TRUE(Filter(none, p, {}).empty());
  Rng rng(1);
  EXPECT_EQ(Sample(SparseDist{}, rng), -1);
}

TEST(Filter, PositiveInfinityDominates) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  const std::vector<float> logits = {1.0f, kInf, 2.0f};
  const SparseDist d = Filter(logits, p, {});
  ASSERT_FALSE(d.empty());
  EXPECT_EQ(d.ids[0], 1);
  EXPECT_FLOAT_EQ(d.probs[0], 1.0f);
}

TEST(Filter, TruncationsOnKnownDistribution) {
  // Untempered probabilities 0.5, 0.3, 0.15, 0.05.
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f),
                                     std::log(0.05f)};
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  SparseDist d = Filter(logits, p, {});
  EXPECT_EQ(d.ids, (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_NEAR(d.probs[3], 0.05, 1e-6);

  p.top_k = 2;
  d = Filter(logits, p, {});
  EXPECT_EQ(d.ids, (std::vector<int32_t>{0, 1}));
  EXPECT_NEAR(d.probs[0], 0.625, 1e-6);

  p.top_k = 0;
  p.top_p = 0.75f;  // 0.5 < 0.75 <= 0.8
  EXPECT_EQ(Filter(logits, p, {}).ids, (std::vector<int32_t>{0, 1}));
  p.top_p = 0.85f;  // 0.8 < 0.85 <= 0.95
  EXPECT_EQ(Filter(logits, p, {}).ids, (std::vector<int32_t>{0, 1, 2}));
  p.top_p = 0.01f;  // at least one token
  EXPECT_EQ(Filter(logits, p, {}).ids, (std::vector<int32_t>{0}));

  p.top_p = 1.0f;
  p.min_p = 0.2f;  // keep p >= 0.1
  EXPECT_EQ(Filter(logits, p, {}).ids, (std::vector<int32_t>{0, 1, 2}));
  p.min_p = 0.7f;  // keep p >= 0.35
  EXPECT_EQ(Filter(logits, p, {}).ids, (std::vector<int32_t>{0}));

  // Temperature applies after truncation: survivors 0.5, 0.3, 0.15 at T = 0.5 go as p^2.
  p.min_p = 0.2f;
  p.temperature = 0.5f;
  d = Filter(logits, p, {});
  const double z = 0.25 + 0.09 + 0.0225;
  ASSERT_EQ(d.size(), 3u);
  EXPECT_NEAR(d.probs[0], 0.25 / z, 1e-6);
  EXPECT_NEAR(d.probs[1], 0.09 / z, 1e-6);
  EXPECT_NEAR(d.probs[2], 0.0225 / z, 1e-6);

  // Truncation sees the untempered distribution: a high temperature does not widen top-p.
  p.min_p = 0.0f;
  p.top_p = 0.75f;
  p.temperature = 2.0f;
  EXPECT_EQ(Filter(logits, p, {}).ids, (std::vector<int32_t>{0, 1}));
}

TEST(Filter, RepetitionPenalty) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  p.repetition_penalty = 2.0f;
  p.repeat_last_n = 64;
  const std::vector<float> logits = {2.0f, -2.0f, 0.5f, 1.0f, 0.0f};
  // Token 0 twice (penalized once), 1 negative (multiplied), 4 zero (stays 0), 99 out of range.
  const std::vector<int32_t> history = {0, 1, 0, 4, 99, -5};
  const SparseDist d = Filter(logits, p, history);
  const std::vector<double> penalized = {1.0, -4.0, 0.5, 1.0, 0.0};
  double z = 0;
  for (double l : penalized) z += std::exp(l);
  ASSERT_EQ(d.size(), 5u);
  EXPECT_EQ(d.ids, (std::vector<int32_t>{0, 3, 2, 4, 1}));  // 0 and 3 tie at 1.0: lower id first
  EXPECT_NEAR(d.Prob(0), std::exp(1.0) / z, 1e-6);
  EXPECT_NEAR(d.Prob(1), std::exp(-4.0) / z, 1e-6);
  EXPECT_NEAR(d.Prob(4), 1.0 / z, 1e-6);

  // Window: only the last token (0) is penalized.
  p.repeat_last_n = 1;
  const std::vector<int32_t> h2 = {1, 0};
  EXPECT_NEAR(
      Filter(logits, p, h2).Prob(1),
      std::exp(-2.0) / (std::exp(1.0) + std::exp(-2.0) + std::exp(0.5) + std::exp(1.0) + 1.0),
      1e-6);
  // Window 0 disables the penalty.
  p.repeat_last_n = 0;
  p.temperature = 0.0f;
  EXPECT_EQ(Filter(logits, p, h2).ids[0], 0);

  // Greedy sees the penalty: 3.0 / 2 = 1.5 < 2.0.
  p.repeat_last_n = 64;
  const std::vector<float> two = {3.0f, 2.0f};
  EXPECT_EQ(Filter(two, p, std::vector<int32_t>{0}).ids[0], 1);
  // A penalty below 1 boosts: a negative logit shrinks toward 0, a positive one grows.
  p.repetition_penalty = 0.5f;
  const std::vector<float> neg = {-1.0f, -0.6f};
  EXPECT_EQ(Filter(neg, p, std::vector<int32_t>{0}).ids[0], 0);  // -0.5 > -0.6
}

TEST(Filter, MatchesReferenceOnRandomLogits) {
  std::mt19937_64 gen(20240611);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  const int32_t top_ks[] = {0, 1, 5, 40, 1000};
  const float top_ps[] = {1.0f, 0.95f, 0.5f, 0.05f};
  const float min_ps[] = {0.0f, 0.05f, 0.3f};
  const float temps[] = {0.0f, 0.3f, 1.0f, 1.7f};
  const float penalties[] = {1.0f, 1.3f, 0.8f};
  const int32_t windows[] = {-1, 0, 3, 64};
  int combos = 0;
  for (int32_t k : top_ks) {
    for (float tp : top_ps) {
      for (float mp : min_ps) {
        for (float t : temps) {
          for (float rp : penalties) {
            for (int32_t w : windows) {
              SamplingParams sp;
              sp.top_k = k;
              sp.top_p = tp;
              sp.min_p = mp;
              sp.temperature = t;
              sp.repetition_penalty = rp;
              sp.repeat_last_n = w;
              ASSERT_TRUE(Validate(sp).ok());
              const int n = 50 + static_cast<int>(gen() % 200);
              std::vector<float> logits(n);
              // Half the cases use coarse values so that equal logits (ties) are common.
              const bool coarse = combos % 2 == 0;
              for (float& l : logits) {
                l = normal(gen);
                if (coarse) l = std::round(l);
              }
              if (combos % 7 == 0) logits[gen() % n] = -kInf;
              std::vector<int32_t> history(gen() % 80);
              for (int32_t& h : history) h = static_cast<int32_t>(gen() % (n + 5));
              const SparseDist got = Filter(logits, sp, history);
              const SparseDist want = ReferenceFilter(logits, sp, history);
              const std::string what = "k=" + std::to_string(k) + " top_p=" + std::to_string(tp) +
                                       " min_p=" + std::to_string(mp) + " t=" + std::to_string(t) +
                                       " rp=" + std::to_string(rp) + " w=" + std::to_string(w);
              ExpectSameDist(got, want, what);
              if (HasFailure()) return;
              EXPECT_NEAR(Sum(got), 1.0, 1e-5) << what;
              for (size_t i = 1; i < got.size(); ++i) {
                ASSERT_GE(got.probs[i - 1], got.probs[i]) << what;
              }
              ++combos;
            }
          }
        }
      }
    }
  }
  EXPECT_EQ(combos, 5 * 4 * 3 * 4 * 3 * 4);
}

// ---------------------------------------------------------------------------------------------
TEST(Rng, IsStandardMt19937_64) {
  // The C++ standard fixes the 10000th output of a default-seeded (5489) mt19937_64.
  Rng rng(5489);
  for (int i = 0; i < 9999; ++i) rng.NextU64();
  EXPECT_EQ(rng.NextU64(), 9981545732273789042ull);
}

TEST(Rng, UniformInHalfOpenUnitInterval) {
  Rng rng(7);
  double lo = 1, hi = 0, sum = 0;
  for (int i = 0; i < 100000; ++i) {
    const double u = rng.Uniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    lo = std::min(lo, u);
    hi = std::max(hi, u);
    sum += u;
  }
  EXPECT_LT(lo, 1e-3);
  EXPECT_GT(hi, 1 - 1e-3);
  EXPECT_NEAR(sum / 100000, 0.5, 0.01);
}

std::vector<float> RandomLogits(uint64_t seed, int n) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> logits(n);
  for (float& l : logits) l = normal(gen);
  return logits;
}

TEST(Sampler, SameSeedSameTokensDifferentSeedDifferentTokens) {
  const std::vector<float> logits = RandomLogits(3, 500);
  SamplingParams sp;
  sp.temperature = 1.0f;
  sp.top_k = 0;
  sp.repetition_penalty = 1.1f;
  sp.seed = 42;
  auto run = [&](uint64_t seed) {
    SamplingParams s = sp;
    s.seed = seed;
    Sampler sampler(s);
    std::vector<int32_t> out;
    for (int i = 0; i < 200; ++i) {
      out.push_back(sampler.Next(logits));
      sampler.Accept(out.back());
    }
    return out;
  };
  const std::vector<int32_t> a = run(42);
  EXPECT_EQ(a, run(42));
  EXPECT_NE(a, run(43));
  std::set<int32_t> distinct(a.begin(), a.end());
  EXPECT_GT(distinct.size(), 10u);
}

TEST(Sampler, HistoryWindowAndDistributionAfter) {
  SamplingParams sp;
  sp.repeat_last_n = 3;
  Sampler s(sp);
  for (int32_t t = 1; t <= 10; ++t) {
    s.Accept(t);
    const size_t expect = std::min<size_t>(t, 3);
    ASSERT_EQ(s.History().size(), expect);
    EXPECT_EQ(s.History().back(), t);
  }
  EXPECT_EQ(std::vector<int32_t>(s.History().begin(), s.History().end()),
            (std::vector<int32_t>{8, 9, 10}));

  sp.repeat_last_n = -1;
  Sampler all(sp);
  for (int32_t t = 0; t < 300; ++t) all.Accept(t);
  EXPECT_EQ(all.History().size(), 300u);

  sp.repeat_last_n = 0;
  Sampler none(sp);
  none.Accept(1);
  EXPECT_TRUE(none.History().empty());

  // DistributionAfter == Filter over history + pending, and leaves the state alone.
  sp.repeat_last_n = 4;
  sp.repetition_penalty = 1.5f;
  sp.temperature = 0.8f;
  Sampler pen(sp);
  const std::vector<float> logits = RandomLogits(9, 30);
  pen.Accept(1);
  pen.Accept(2);
  pen.Accept(3);
  const std::vector<int32_t> pending = {4, 5};
  ExpectSameDist(pen.DistributionAfter(logits, pending),
                 Filter(logits, sp, std::vector<int32_t>{2, 3, 4, 5}), "after");
  EXPECT_EQ(pen.History().size(), 3u);
  ExpectSameDist(pen.Distribution(logits), Filter(logits, sp, std::vector<int32_t>{1, 2, 3}),
                 "now");
}

TEST(Sample, FrequenciesMatchFilteredDistribution) {
  struct Setup {
    float temperature;
    int32_t top_k;
    float top_p;
    float min_p;
  };
  const Setup setups[] = {{1.0f, 20, 1.0f, 0.0f}, {0.7f, 0, 0.9f, 0.0f}, {1.5f, 40, 0.95f, 0.05f}};
  uint64_t seed = 100;
  for (const Setup& s : setups) {
    SamplingParams sp;
    sp.temperature = s.temperature;
    sp.top_k = s.top_k;
    sp.top_p = s.top_p;
    sp.min_p = s.min_p;
    sp.seed = ++seed;
    const std::vector<float> logits = RandomLogits(seed, 200);
    const SparseDist dist = Filter(logits, sp, {});
    ASSERT_GT(dist.size(), 3u);
    Rng rng(sp.seed);
    constexpr int64_t kDraws = 200000;
    std::map<int32_t, int64_t> counts;
    for (int64_t i = 0; i < kDraws; ++i) ++counts[Sample(dist, rng)];
    const testing::ChiSquareResult r = testing::ChiSquare(counts, dist, kDraws);
    EXPECT_TRUE(r.ok) << r.detail;
  }
}

TEST(Sample, ExtremesOfTheUniform) {
  // u = 0 picks the first token; the last token is reachable. One draw per call.
  SparseDist d;
  d.ids = {7, 3, 9};
  d.probs = {0.5f, 0.3f, 0.2f};
  Rng a(11), b(11);
  for (int i = 0; i < 1000; ++i) {
    const double u = b.Uniform();
    const int32_t t = Sample(d, a);
    EXPECT_EQ(t, u < 0.5 ? 7 : (u < 0.8 ? 3 : 9));
  }
}

}  // namespace
}  // namespace pipeinfer::sampling
