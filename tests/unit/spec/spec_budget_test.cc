// The pipeline-wide speculation budget: the cost fit recovers a and b of passes that cost exactly
// a + b * tokens, speculation is allowed exactly while alpha * a > b * V * (1 - alpha) (with the
// margin), and the speculative tokens in flight stay under n_stages * a / b.
#include "spec/spec_budget.h"

#include <memory>

#include <gtest/gtest.h>

namespace pipeinfer::spec {
namespace {

std::unique_ptr<SpecBudget> Fitted(double a, double b, uint32_t stages = 8) {
  SpecBudgetOptions o;
  o.n_stages = stages;
  auto budget = std::make_unique<SpecBudget>(o);
  for (uint32_t t = 1; t <= 40; ++t) budget->ObservePass(t, static_cast<uint64_t>(a + b * t));
  return budget;
}

TEST(SpecBudget, UnlimitedUntilPassesAreMeasured) {
  SpecBudgetOptions o;
  o.n_stages = 8;
  SpecBudget budget(o);
  budget.AddVerified(100);
  budget.AddSpeculative(1000);
  EXPECT_TRUE(budget.Allows(4, 0, 0));
  // Passes of one size only: the fixed and the per-token cost cannot be separated.
  for (int i = 0; i < 100; ++i) budget.ObservePass(4, 12000);
  EXPECT_FALSE(budget.snapshot().have_model);
  EXPECT_TRUE(budget.Allows(4, 0, 0));
}

TEST(SpecBudget, FitsTheCostOfAPass) {
  auto owned = Fitted(10000, 500);
  SpecBudget& budget = *owned;
  const auto s = budget.snapshot();
  ASSERT_TRUE(s.have_model);
  EXPECT_NEAR(s.a_us, 10000, 2);
  EXPECT_NEAR(s.b_us, 500, 0.1);
  EXPECT_NEAR(s.cap, 8 * 20, 0.5);  // n_stages * a / b
}

TEST(SpecBudget, AWindowOfOneSizeKeepsTheLastSlope) {
  auto owned = Fitted(10000, 500);
  SpecBudget& budget = *owned;
  // A whole window of 4-token passes (a fixed micro-batch): b cannot be measured from them, so it
  // stays 500 (before, the model was lost). Then they cost 13000 us: a follows (13000 - 4 * 500).
  for (int i = 0; i < 600; ++i) budget.ObservePass(4, 12000);
  auto s = budget.snapshot();
  ASSERT_TRUE(s.have_model);
  EXPECT_NEAR(s.b_us, 500, 0.1);
  EXPECT_NEAR(s.a_us, 10000, 2);
  for (int i = 0; i < 600; ++i) budget.ObservePass(4, 13000);
  s = budget.snapshot();
  ASSERT_TRUE(s.have_model);
  EXPECT_NEAR(s.b_us, 500, 0.1);
  EXPECT_NEAR(s.a_us, 11000, 2);
}

TEST(SpecBudget, SpeculatesOnlyWhileItPays) {
  auto owned = Fitted(10000, 500);
  SpecBudget& budget = *owned;                    // a / b = 20 tokens
  budget.ObserveAcceptance(100, 40);              // alpha = 0.4: pays while V < 0.8 * 0.4/0.6 * 20
  const double threshold = 0.8 * 0.4 / 0.6 * 20;  // 10.67 verified tokens per pass
  budget.AddVerified(8 * 10);                     // 10 per pass: below
  EXPECT_TRUE(budget.snapshot().speculating);
  EXPECT_TRUE(budget.Allows(4, 0, 0));
  budget.AddVerified(8 * 1);  // 11 per pass: above
  EXPECT_GT(11, threshold);
  EXPECT_FALSE(budget.snapshot().speculating);
  EXPECT_FALSE(budget.Allows(1, 0, 0));
  budget.AddVerified(-8 * 10);  // the load goes away: speculation resumes
  EXPECT_TRUE(budget.Allows(4, 0, 0));

  // A poor draft: alpha = 0.02 pays only below 0.33 verified tokens per pass.
  auto owned_poor = Fitted(10000, 500);
  SpecBudget& poor = *owned_poor;
  poor.ObserveAcceptance(1000, 20);
  poor.AddVerified(1);  // one request on 8 stages: 0.125 per pass
  EXPECT_TRUE(poor.Allows(4, 0, 0));
  poor.AddVerified(7);  // eight requests: 1 per pass
  EXPECT_FALSE(poor.Allows(4, 0, 0));
}

TEST(SpecBudget, BoundsSpeculativeTokensInFlightAndSharesThemOut) {
  auto owned = Fitted(10000, 500);  // cap 160
  SpecBudget& budget = *owned;
  budget.ObserveAcceptance(10, 8);
  budget.AddSession(+2);
  // Request A has 76 speculative tokens in flight, request B 80: B is at its share (160 / 2).
  budget.AddSpeculative(76 + 80);
  EXPECT_TRUE(budget.Allows(4, 0, 76));   // A: 80 <= 80 and 160 <= 160
  EXPECT_FALSE(budget.Allows(5, 0, 76));  // A: over its share and over the cap
  EXPECT_FALSE(budget.Allows(4, 0, 80));  // B: over its share
  // Every request may have one micro-batch in flight while speculation pays, whatever the cap.
  EXPECT_TRUE(budget.Allows(500, 0, 0));
  // A third request shrinks the shares to 53.
  budget.AddSession(+1);
  budget.AddSpeculative(-156);
  budget.AddSpeculative(52 + 10);  // this request 52, another one 10
  EXPECT_TRUE(budget.Allows(1, 0, 52));
  EXPECT_FALSE(budget.Allows(2, 0, 52));
  // A pass cost that is all per-token (a = 0): the cap falls to min_tokens_per_pass per stage.
  auto owned_flat = Fitted(0, 800);
  SpecBudget& flat = *owned_flat;
  EXPECT_NEAR(flat.snapshot().cap, 8 * 4, 1e-9);
}

TEST(SpecBudget, ARequestAloneIsNeverLimited) {
  auto owned = Fitted(0, 800);  // all per-token cost: speculation never pays under load
  SpecBudget& budget = *owned;
  budget.ObserveAcceptance(1000, 100);
  budget.AddVerified(1);
  budget.AddSpeculative(40);
  EXPECT_TRUE(budget.Allows(4, 1, 40));   // everything in flight is its own
  EXPECT_FALSE(budget.Allows(4, 0, 0));   // another request would compete with it
  budget.AddVerified(1);                  // a second request's plain run
  EXPECT_FALSE(budget.Allows(4, 1, 40));  // now the first one competes
}

TEST(SpecBudget, AcceptanceIsTheRecentRatioWhateverComesFirst) {
  SpecBudgetOptions o;
  SpecBudget budget(o);
  // Drafting and verification arrive in separate calls; the first call says nothing special.
  budget.ObserveAcceptance(12, 0);
  for (int i = 0; i < 30; ++i) {
    budget.ObserveAcceptance(4, 0);
    budget.ObserveAcceptance(0, 1);
  }
  // 132 drafted, 30 accepted: about 0.23 (recent samples weigh a little more).
  EXPECT_NEAR(budget.snapshot().alpha, 30.0 / 132, 0.03);
  // It follows a change within a few dozen samples.
  for (int i = 0; i < 200; ++i) budget.ObserveAcceptance(4, 3);
  EXPECT_NEAR(budget.snapshot().alpha, 0.75, 0.02);
}

TEST(SpecBudget, DisabledWithScaleZero) {
  SpecBudgetOptions o;
  o.n_stages = 8;
  o.scale = 0;
  SpecBudget budget(o);
  for (uint32_t t = 1; t <= 40; ++t) budget.ObservePass(t, 10000 + 500 * t);
  budget.ObserveAcceptance(1000, 1);
  budget.AddVerified(1000);
  EXPECT_TRUE(budget.Allows(64, 0, 0));
}

}  // namespace
}  // namespace pipeinfer::spec
