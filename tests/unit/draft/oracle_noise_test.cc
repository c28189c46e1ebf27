// The oracle draft's noise (oracle_noise.h, oracle_ranks.h): over many hashed sequences the
// target's top token lands at rank 1 with probability 1 - noise, and otherwise at ranks that follow
// the calibrated P(rank | rank >= 2); the same sequence always gets the same logits; the uniform
// model is the original --draft-noise bit for bit.
#include "draft_server/oracle_noise.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "draft_server/oracle_ranks.h"

namespace pipeinfer::draft_server {
namespace {

constexpr int32_t kVocab = 3072;

// Distinct logits in a random order (no ties, so every rank is well defined).
std::vector<float> RandomLogits(uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> l(kVocab);
  for (int32_t i = 0; i < kVocab; ++i) l[i] = 0.01f * static_cast<float>(i);
  std::shuffle(l.begin(), l.end(), rng);
  return l;
}

int32_t RankOf(const std::vector<float>& l, size_t token) {
  return 1 + static_cast<int32_t>(
                 std::count_if(l.begin(), l.end(), [&](float x) { return x > l[token]; }));
}

size_t Argmax(const std::vector<float>& l) {
  return static_cast<size_t>(std::max_element(l.begin(), l.end()) - l.begin());
}

std::vector<int32_t> Sequence(int i) { return {1, 450, i % 3000 + 3, i / 3000 + 7, i % 17 + 20}; }

// The bucket (index into DemoRankBuckets()) that holds rank r.
size_t BucketOf(int32_t r) {
  const auto buckets = DemoRankBuckets();
  for (size_t b = 0; b < buckets.size(); ++b) {
    if (r >= buckets[b].lo && r <= buckets[b].hi) return b;
  }
  return buckets.size() - 1;
}

TEST(OracleRanks, DemoHistogramIsADistributionWithTheCalibratedAgreement) {
  const auto buckets = DemoRankBuckets();
  double sum = 0;
  for (size_t b = 0; b < buckets.size(); ++b) {
    sum += buckets[b].p;
    EXPECT_LE(buckets[b].lo, buckets[b].hi);
    if (b > 0) {
      EXPECT_EQ(buckets[b].lo, buckets[b - 1].hi + 1);
    }
  }
  EXPECT_NEAR(sum, 1.0, 1e-4);
  EXPECT_EQ(buckets[0].lo, 1);
  EXPECT_EQ(buckets[0].hi, 1);
  EXPECT_NEAR(buckets[0].p, 0.716, 0.01);  // models/README.md: 71.6% teacher-forced agreement
  EXPECT_GT(DemoRankPositions(), 10000);
  EXPECT_GT(DemoWrongTemperature(), 1.0);
  EXPECT_TRUE(ParseRankModel("demo").ok());
  EXPECT_TRUE(ParseRankModel("uniform").ok());
  EXPECT_FALSE(ParseRankModel("zipf").ok());
}

TEST(OracleRanks, DrawWrongRankStaysInRange) {
  for (double u : {0.0, 0.5, 0.999999}) {
    for (double v : {0.0, 0.999999}) {
      const int32_t r = DrawWrongRank(DemoRankBuckets(), u, v, kVocab);
      EXPECT_GE(r, 2);
      EXPECT_LE(r, kVocab);
      EXPECT_LE(DrawWrongRank(DemoRankBuckets(), u, v, 5), 5);
    }
  }
}

TEST(OracleNoise, DemoPlacesTheTopTokenByTheCalibratedHistogram) {
  constexpr double kNoise = 0.4;
  constexpr int kSequences = 40000;
  const auto buckets = DemoRankBuckets();
  std::vector<int64_t> seen(buckets.size(), 0);
  int64_t right = 0;
  const std::vector<float> base = RandomLogits(7);
  const size_t top = Argmax(base);
  for (int i = 0; i < kSequences; ++i) {
    std::vector<float> l = base;
    const int32_t r = ApplyDraftNoise(l, SequenceHash(Sequence(i)), kNoise, RankModel::kDemo);
    ASSERT_EQ(r, RankOf(l, top)) << i;
    if (r == 1) {
      ++right;
      ASSERT_EQ(l, base);  // untouched
    } else {
      ++seen[BucketOf(r)];
    }
  }
  const double agreement = static_cast<double>(right) / kSequences;
  EXPECT_NEAR(agreement, 1.0 - kNoise, 0.015);
  // Chi-square of the wrong ranks' buckets against P(bucket | rank >= 2), with the sparse tail
  // buckets merged so that every expected count is at least 20.
  const int64_t wrong = kSequences - right;
  const double p_wrong = 1.0 - buckets[0].p;
  double chi2 = 0, exp_acc = 0;
  int64_t obs_acc = 0;
  int dof = -1;
  for (size_t b = 1; b < buckets.size(); ++b) {
    exp_acc += static_cast<double>(wrong) * buckets[b].p / p_wrong;
    obs_acc += seen[b];
    if (exp_acc >= 20 || b + 1 == buckets.size()) {
      chi2 += (obs_acc - exp_acc) * (obs_acc - exp_acc) / exp_acc;
      ++dof;
      exp_acc = 0;
      obs_acc = 0;
    }
  }
  ASSERT_GE(dof, 8);
  // The 99.9% quantile of chi-square is below dof + 4.5 sqrt(2 dof) for these dof.
  EXPECT_LT(chi2, dof + 4.5 * std::sqrt(2.0 * dof)) << "dof " << dof;
  // The calibrated head: rank 2 is about half of the errors.
  EXPECT_NEAR(static_cast<double>(seen[1]) / wrong, buckets[1].p / p_wrong, 0.02);
}

TEST(OracleNoise, DemoDemotesAndTempersWithoutReorderingTheRest) {
  const std::vector<float> base = RandomLogits(11);
  std::vector<size_t> order(base.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return base[a] > base[b]; });
  for (int i = 0; i < 2000; ++i) {
    std::vector<float> l = base;
    const int32_t r = ApplyDraftNoise(l, SequenceHash(Sequence(i)), 1.0, RankModel::kDemo);
    ASSERT_GE(r, 2);
    // The old ranks 2..r move up one place; everything below r keeps its rank.
    for (int32_t k = 1; k < r; ++k) ASSERT_EQ(RankOf(l, order[k]), k) << i;
    ASSERT_EQ(RankOf(l, order[0]), r);
    if (r < kVocab) {
      ASSERT_EQ(RankOf(l, order[r]), r + 1);
    }
    // Tempered: the top logit is the old top's divided by the temperature.
    EXPECT_NEAR(*std::max_element(l.begin(), l.end()),
                base[order[0]] / static_cast<float>(DemoWrongTemperature()), 1e-4);
  }
}

TEST(OracleNoise, SameSequenceSameLogits) {
  const std::vector<float> base = RandomLogits(3);
  for (RankModel m : {RankModel::kDemo, RankModel::kUniform}) {
    for (int i = 0; i < 200; ++i) {
      std::vector<float> a = base, b = base;
      ApplyDraftNoise(a, SequenceHash(Sequence(i)), 0.5, m);
      ApplyDraftNoise(b, SequenceHash(Sequence(i)), 0.5, m);
      ASSERT_EQ(a, b);
    }
  }
  std::vector<float> off = base;
  EXPECT_EQ(ApplyDraftNoise(off, SequenceHash(Sequence(1)), 0.0, RankModel::kDemo), 1);
  EXPECT_EQ(off, base);
}

// The original --draft-noise of draft_model.cc, kept here as the reference for the uniform model.
void OriginalNoise(std::vector<float>& logits, std::span<const int32_t> sequence, double noise) {
  uint64_t h = 0x9e3779b97f4a7c15ull;
  for (int32_t t : sequence) {
    h ^= static_cast<uint64_t>(t) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
  }
  if (static_cast<double>(h % 1000000) < noise * 1e6) {
    const auto top = std::max_element(logits.begin(), logits.end()) - logits.begin();
    const size_t other =
        ((h >> 20) % (logits.size() - 1) + 1 + static_cast<size_t>(top)) % logits.size();
    std::swap(logits[static_cast<size_t>(top)], logits[other]);
  }
}

TEST(OracleNoise, UniformIsTheOriginalNoise) {
  const std::vector<float> base = RandomLogits(5);
  int wrong = 0;
  for (int i = 0; i < 3000; ++i) {
    const std::vector<int32_t> seq = Sequence(i);
    std::vector<float> got = base, want = base;
    const int32_t r = ApplyDraftNoise(got, SequenceHash(seq), 0.3, RankModel::kUniform);
    OriginalNoise(want, seq, 0.3);
    ASSERT_EQ(got, want) << i;
    ASSERT_EQ(r, RankOf(got, Argmax(base)));
    wrong += r > 1;
  }
  EXPECT_NEAR(wrong / 3000.0, 0.3, 0.03);
}

}  // namespace
}  // namespace pipeinfer::draft_server
