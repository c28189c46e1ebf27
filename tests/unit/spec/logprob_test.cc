// spec::RowLogprob (the log-probabilities the draft service reports) against a naive log-softmax
// written from the definition: log p(v) = l_v - log(sum_u exp(l_u)), computed in long double with
// a plain sum, and the alternatives as a full sort by (log-probability desc, id asc).
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "spec/controller_common.h"

namespace pipeinfer::spec {
namespace {

TEST(RowLogprob, MatchesNaiveLogSoftmax) {
  std::mt19937 rng(3);
  std::normal_distribution<float> logit(0.0f, 3.0f);
  for (int iter = 0; iter < 100; ++iter) {
    TargetRow row;
    row.kind = TargetRow::Kind::kFull;
    for (int i = 0; i < 200; ++i) row.logits.push_back(logit(rng));
    if (iter % 4 == 0) row.logits[5] = row.logits[6];  // a tie
    long double z = 0;
    for (float l : row.logits) z += std::exp(static_cast<long double>(l));
    const long double log_z = std::log(z);
    const int32_t token = static_cast<int32_t>(rng() % row.logits.size());
    const uint32_t k = iter % 21;
    absl::StatusOr<TokenLogprob> lp = RowLogprob(row, token, k);
    ASSERT_TRUE(lp.ok()) << lp.status();
    EXPECT_NEAR(lp->logprob, static_cast<double>(row.logits[token] - log_z), 1e-4);
    std::vector<int32_t> order(row.logits.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return row.logits[a] > row.logits[b]; });
    ASSERT_EQ(lp->top_ids.size(), k);
    ASSERT_EQ(lp->top_logprobs.size(), k);
    for (uint32_t i = 0; i < k; ++i) {
      EXPECT_EQ(lp->top_ids[i], order[i]) << i;
      EXPECT_NEAR(lp->top_logprobs[i], static_cast<double>(row.logits[order[i]] - log_z), 1e-4);
    }
  }
}

TEST(RowLogprob, NeedsAFullRow) {
  TargetRow row;
  row.kind = TargetRow::Kind::kArgmax;
  row.argmax = 1;
  EXPECT_FALSE(RowLogprob(row, 1, 0).ok());
  row.kind = TargetRow::Kind::kFull;
  row.logits = {0.0f, 0.0f};
  EXPECT_FALSE(RowLogprob(row, 2, 0).ok());
  absl::StatusOr<TokenLogprob> lp = RowLogprob(row, 1, 5);
  ASSERT_TRUE(lp.ok());
  EXPECT_NEAR(lp->logprob, std::log(0.5), 1e-6);
  EXPECT_EQ(lp->top_ids, (std::vector<int32_t>{0, 1}));  // at most n_vocab alternatives
}

}  // namespace
}  // namespace pipeinfer::spec
