// Speculative verification: the emitted token must be distributed exactly as the target p,
// whatever the draft distribution q, for one draft token and for 2 and 3 sibling candidates
// drafted without replacement (chi-square over 200k trials on a small vocabulary).
#include "sampling/speculative.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "unit/sampling/chi_square.h"

namespace pipeinfer::sampling {
namespace {

constexpr int kVocab = 8;
constexpr int64_t kTrials = 200000;

// A distribution from dense weights (zeros are left out), sorted like Filter's output.
SparseDist FromWeights(const std::vector<double>& w) {
  double total = 0;
  for (double x : w) total += x;
  std::vector<int32_t> order;
  for (int i = 0; i < static_cast<int>(w.size()); ++i) {
    if (w[i] > 0) order.push_back(i);
  }
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return w[a] > w[b]; });
  SparseDist d;
  for (int i : order) {
    d.ids.push_back(i);
    d.probs.push_back(static_cast<float>(w[i] / total));
  }
  return d;
}

std::vector<double> RandomWeights(std::mt19937_64& gen, int zeros) {
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> w(kVocab);
  for (double& x : w) x = std::exp(1.5 * normal(gen));
  std::vector<int> idx(kVocab);
  for (int i = 0; i < kVocab; ++i) idx[i] = i;
  std::shuffle(idx.begin(), idx.end(), gen);
  for (int i = 0; i < zeros; ++i) w[idx[i]] = 0;
  return w;
}

struct Pair {
  std::string name;
  SparseDist p;
  SparseDist q;
};

std::vector<Pair> Pairs() {
  std::mt19937_64 gen(77);
  std::vector<Pair> out;
  for (int i = 0; i < 3; ++i) {
    out.push_back({"random" + std::to_string(i), FromWeights(RandomWeights(gen, 0)),
                   FromWeights(RandomWeights(gen, 0))});
  }
  const SparseDist same = FromWeights(RandomWeights(gen, 1));
  out.push_back({"q_equals_p", same, same});
  out.push_back(
      {"disjoint", FromWeights({3, 1, 2, 1, 0, 0, 0, 0}), FromWeights({0, 0, 0, 0, 1, 4, 2, 1})});
  // q puts no mass on some tokens that p likes (and p none on some q tokens).
  out.push_back({"q_misses_p_tokens", FromWeights({4, 3, 2, 1, 1, 0, 0, 0}),
                 FromWeights({1, 0, 0, 5, 2, 2, 1, 0})});
  out.push_back(
      {"q_superset", FromWeights({0, 0, 5, 3, 0, 1, 0, 0}), FromWeights({1, 1, 1, 1, 1, 1, 1, 1})});
  out.push_back(
      {"greedy_target", FromWeights({0, 0, 0, 1, 0, 0, 0, 0}), FromWeights(RandomWeights(gen, 0))});
  out.push_back(
      {"greedy_draft", FromWeights(RandomWeights(gen, 2)), FromWeights({0, 0, 0, 0, 0, 0, 1, 0})});
  out.push_back(
      {"sparse_both", FromWeights(RandomWeights(gen, 4)), FromWeights(RandomWeights(gen, 5))});
  return out;
}

double Overlap(const SparseDist& p, const SparseDist& q) {
  double s = 0;
  for (int i = 0; i < kVocab; ++i) s += std::min(p.Prob(i), q.Prob(i));
  return s;
}

TEST(AcceptDraftToken, OutputIsDistributedAsTarget) {
  for (const Pair& pr : Pairs()) {
    Rng draft_rng(1), verify_rng(2);
    std::map<int32_t, int64_t> counts;
    int64_t accepted = 0;
    for (int64_t t = 0; t < kTrials; ++t) {
      const int32_t x = Sample(pr.q, draft_rng);
      const AcceptResult r = AcceptDraftToken(pr.p, pr.q, x, verify_rng);
      if (r.accepted) {
        ++accepted;
        ASSERT_EQ(r.token, x);
      }
      ++counts[r.token];
    }
    const testing::ChiSquareResult chi = testing::ChiSquare(counts, pr.p, kTrials);
    EXPECT_TRUE(chi.ok) << pr.name << "\n" << chi.detail;
    // Acceptance rate is sum_x min(p(x), q(x)) (5 standard deviations).
    const double rate = std::clamp(Overlap(pr.p, pr.q), 0.0, 1.0);
    const double sd = std::sqrt(rate * (1 - rate) / kTrials);
    EXPECT_NEAR(static_cast<double>(accepted) / kTrials, rate, 5 * sd + 1e-6) << pr.name;
  }
}

TEST(AcceptDraftToken, EqualDistributionsAlwaysAccept) {
  const SparseDist d = FromWeights({1, 2, 3, 4, 5, 6, 7, 8});
  Rng draft(5), verify(6);
  for (int i = 0; i < 10000; ++i) {
    const int32_t x = Sample(d, draft);
    const AcceptResult r = AcceptDraftToken(d, d, x, verify);
    ASSERT_TRUE(r.accepted);
    ASSERT_EQ(r.token, x);
  }
}

TEST(AcceptDraftToken, GreedyTargetAcceptsOnlyTheArgmax) {
  const SparseDist p = FromWeights({0, 0, 1, 0});
  const SparseDist q = FromWeights({1, 1, 1, 1});
  Rng rng(3);
  for (int32_t x = 0; x < 4; ++x) {
    const AcceptResult r = AcceptDraftToken(p, q, x, rng);
    EXPECT_EQ(r.accepted, x == 2);
    EXPECT_EQ(r.token, 2);
  }
}

TEST(AcceptDraftToken, ImpossibleDraftFallsBackToTarget) {
  // A token q cannot produce (outside its support): verification draws from p.
  const SparseDist p = FromWeights({0, 1, 0});
  const SparseDist q = FromWeights({1, 0, 1});
  Rng rng(4);
  const AcceptResult r = AcceptDraftToken(p, q, 1, rng);
  EXPECT_FALSE(r.accepted);
  EXPECT_EQ(r.token, 1);
  EXPECT_EQ(AcceptDraftToken(SparseDist{}, q, 0, rng).token, -1);
}

TEST(DraftCandidates, DistinctAndFirstIsDistributedAsQ) {
  const SparseDist q = FromWeights({5, 0, 3, 1, 1});
  Rng rng(8);
  std::map<int32_t, int64_t> first;
  for (int64_t t = 0; t < kTrials; ++t) {
    const std::vector<int32_t> c = DraftCandidates(q, 3, rng);
    ASSERT_EQ(c.size(), 3u);
    ASSERT_EQ(std::set<int32_t>(c.begin(), c.end()).size(), 3u);
    for (int32_t x : c) ASSERT_GT(q.Prob(x), 0.0f);
    ++first[c[0]];
  }
  const testing::ChiSquareResult chi = testing::ChiSquare(first, q, kTrials);
  EXPECT_TRUE(chi.ok) << chi.detail;
  EXPECT_EQ(DraftCandidates(q, 10, rng).size(), 4u);  // support size
  EXPECT_TRUE(DraftCandidates(SparseDist{}, 2, rng).empty());
}

class MultiCandidate : public ::testing::TestWithParam<int> {};

TEST_P(MultiCandidate, OutputIsDistributedAsTarget) {
  const int k = GetParam();
  for (const Pair& pr : Pairs()) {
    Rng draft_rng(10 + k), verify_rng(20 + k);
    std::map<int32_t, int64_t> counts;
    int64_t accepted = 0;
    for (int64_t t = 0; t < kTrials; ++t) {
      const std::vector<int32_t> c = DraftCandidates(pr.q, k, draft_rng);
      const CandidatesResult r = AcceptDraftCandidates(pr.p, pr.q, c, verify_rng);
      if (r.accepted_index >= 0) {
        ++accepted;
        ASSERT_LT(r.accepted_index, static_cast<int32_t>(c.size()));
        ASSERT_EQ(r.token, c[r.accepted_index]);
      }
      ++counts[r.token];
    }
    const testing::ChiSquareResult chi = testing::ChiSquare(counts, pr.p, kTrials);
    EXPECT_TRUE(chi.ok) << pr.name << " k=" << k << "\n" << chi.detail;
    // More candidates never accept less often than one (a loose sanity bound).
    EXPECT_GE(static_cast<double>(accepted) / kTrials, Overlap(pr.p, pr.q) - 0.01) << pr.name;
  }
}

INSTANTIATE_TEST_SUITE_P(TwoAndThree, MultiCandidate, ::testing::Values(2, 3));

TEST(AcceptDraftCandidates, GreedyTargetFindsTheArgmaxAmongSiblings) {
  const SparseDist p = FromWeights({0, 0, 0, 1});
  const SparseDist q = FromWeights({4, 3, 2, 1});
  Rng rng(12);
  const std::vector<int32_t> with = {0, 3, 1};
  CandidatesResult r = AcceptDraftCandidates(p, q, with, rng);
  EXPECT_EQ(r.accepted_index, 1);
  EXPECT_EQ(r.token, 3);
  const std::vector<int32_t> without = {0, 1, 2};
  r = AcceptDraftCandidates(p, q, without, rng);
  EXPECT_EQ(r.accepted_index, -1);
  EXPECT_EQ(r.token, 3);
}

TEST(AcceptDraftCandidates, EmptyCandidatesSampleTheTarget) {
  const SparseDist p = FromWeights({1, 2, 3, 0, 4});
  const SparseDist q = FromWeights({1, 1, 1, 1, 1});
  Rng rng(13);
  std::map<int32_t, int64_t> counts;
  for (int64_t t = 0; t < kTrials; ++t) {
    const CandidatesResult r = AcceptDraftCandidates(p, q, {}, rng);
    ASSERT_EQ(r.accepted_index, -1);
    ++counts[r.token];
  }
  const testing::ChiSquareResult chi = testing::ChiSquare(counts, p, kTrials);
  EXPECT_TRUE(chi.ok) << chi.detail;
}

TEST(AcceptDraftCandidates, DuplicateCandidateStillLossless) {
  // A repeated sibling has q_i = 0 at its second try: verification then draws from p_i.
  const SparseDist p = FromWeights({1, 3, 2, 2});
  const SparseDist q = FromWeights({4, 1, 1, 1});
  Rng draft(14), verify(15);
  std::map<int32_t, int64_t> counts;
  for (int64_t t = 0; t < kTrials; ++t) {
    std::vector<int32_t> c = DraftCandidates(q, 1, draft);
    c.push_back(c[0]);
    ++counts[AcceptDraftCandidates(p, q, c, verify).token];
  }
  const testing::ChiSquareResult chi = testing::ChiSquare(counts, p, kTrials);
  EXPECT_TRUE(chi.ok) << chi.detail;
}

}  // namespace
}  // namespace pipeinfer::sampling
