// The split prefill (spec::PrefillRunTokens over plan::BestPrefillRuns): the number of runs against
// hand-computed latencies of the pipelined prefill, when the service splits and when it must not,
// and the runs both controllers send for a prompt (sizes, positions, the one result row).
#include <cstdint>
#include <memory>
#include <numeric>
#include <span>
#include <vector>

#include <gtest/gtest.h>

#include "plan/costs.h"
#include "spec/controller.h"
#include "spec/controller_common.h"
#include "spec/spec_budget.h"
#include "unit/spec/spec_test_util.h"

namespace pipeinfer::spec {
namespace {

using testing::FittedBudget;
using testing::RecordingSink;

plan::Costs PassCosts(int stages, double a, double b) {
  plan::Costs c;
  c.stages = stages;
  c.pass_us = a;
  c.token_us = b;
  return c;
}

TEST(PrefillSplit, BestRunsMinimiseTheHandComputedLatency) {
  // 8 stages, passes of 10 ms + 0.5 ms per token, 100 prompt tokens. k runs of c = ceil(100 / k)
  // tokens take (8 + k - 1) passes of 10 + 0.5 c ms: 1 run 8 x 60 = 480 ms, 4 runs 11 x 22.5 =
  // 247.5 ms, 5 runs 12 x 20 = 240 ms, 6 runs (17 tokens) 13 x 18.5 = 240.5 ms, 7 runs 14 x 17.5 =
  // 245 ms.
  const plan::Costs c = PassCosts(8, 10000, 500);
  EXPECT_DOUBLE_EQ(c.PrefillLatency(100, 1, 0), 480000);
  EXPECT_DOUBLE_EQ(c.PrefillLatency(100, 5, 0), 240000);
  EXPECT_DOUBLE_EQ(c.PrefillLatency(100, 6, 0), 240500);
  EXPECT_EQ(plan::BestPrefillRuns(c, 100, 512), 5);
  // Runs of at most 16 tokens: at least 7 runs (245 ms); 8 runs of 13 take 15 x 16.5 = 247.5 ms.
  EXPECT_EQ(plan::BestPrefillRuns(c, 100, 16), 7);
  // One stage: nothing to overlap, every extra run only adds a fixed cost.
  EXPECT_EQ(plan::BestPrefillRuns(PassCosts(1, 10000, 500), 100, 512), 1);
  // No per-token cost: one run. A prompt of one token: one run.
  EXPECT_EQ(plan::BestPrefillRuns(PassCosts(8, 10000, 0), 100, 512), 1);
  EXPECT_EQ(plan::BestPrefillRuns(c, 1, 512), 1);
  // A fixed cost that is negligible: as many runs as tokens would be best, up to the cap of
  // kMaxPrefillRuns runs.
  EXPECT_EQ(plan::BestPrefillRuns(PassCosts(8, 0, 500), 40, 512), 40);
  // (640 tokens: 64 runs of 10 take 71 x 5 ms; 63 runs of 11, 70 x 5.5 ms.)
  EXPECT_EQ(plan::BestPrefillRuns(PassCosts(8, 0, 500), 640, 512), plan::kMaxPrefillRuns);
}

TEST(PrefillSplit, ASlowLinkPacesTheRunsByItsTransfers) {
  // 2 stages, passes of 10 ms + 0.5 ms per token, a link carrying a token in 2 ms, 20 tokens. One
  // run: 2 x 20 + 40 = 80 ms. 2 runs of 10: 2 x 15 + 20, then the second run one transfer (20 ms,
  // longer than a pass) behind: 70 ms.
  plan::Costs c = PassCosts(2, 10000, 500);
  c.wire_us_per_token = 2000;
  EXPECT_DOUBLE_EQ(c.PrefillLatency(20, 1, 0), 80000);
  EXPECT_DOUBLE_EQ(c.PrefillLatency(20, 2, 0), 70000);
}

ControllerOptions Options(const SpecBudget* costs) {
  ControllerOptions o;
  o.n_stages = 8;
  o.max_run_tokens = 512;
  o.costs = costs;
  o.stop.max_context = 4096;
  o.stop.max_new_tokens = 8;
  return o;
}

TEST(PrefillSplit, RunTokensOnlyForAMeasuredIdlePipeline) {
  const auto budget = FittedBudget(10000, 500, 8);
  ControllerOptions o = Options(budget.get());
  EXPECT_EQ(PrefillRunTokens(100, o), 20u);  // 5 runs of 20 (above)
  o.max_run_tokens = 16;
  EXPECT_EQ(PrefillRunTokens(100, o), 15u);  // 7 runs of at most 15
  o.max_run_tokens = 512;
  // No fit yet, no budget, splitting off: one run as large as the stages allow.
  SpecBudgetOptions bare;
  bare.n_stages = 8;
  SpecBudget unmeasured(bare);
  EXPECT_EQ(PrefillRunTokens(100, Options(&unmeasured)), 512u);
  EXPECT_EQ(PrefillRunTokens(100, Options(nullptr)), 512u);
  o.split_prefill = false;
  EXPECT_EQ(PrefillRunTokens(100, o), 512u);
  o.split_prefill = true;
  // Another request's runs in flight: extra passes would cost it their fixed cost; one run.
  budget->AddVerified(1);
  EXPECT_EQ(PrefillRunTokens(100, o), 512u);
  budget->AddVerified(-1);
  budget->AddSpeculative(4);
  EXPECT_EQ(PrefillRunTokens(100, o), 512u);
  budget->AddSpeculative(-4);
  EXPECT_EQ(PrefillRunTokens(100, o), 20u);
}

// Start() drafts nothing; a drafter is needed only for the controller to take a speculative mode.
class FlatDrafter : public Drafter {
 public:
  absl::StatusOr<std::span<const float>> NextLogits(std::span<const int32_t>) override {
    return std::span<const float>(logits_);
  }

 private:
  std::vector<float> logits_ = std::vector<float>(256, 0.0f);
};

void ExpectRunsCover(const std::vector<RunSpec>& runs, const std::vector<int32_t>& prompt,
                     const std::vector<size_t>& sizes) {
  ASSERT_EQ(runs.size(), sizes.size());
  uint32_t pos = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    const RunSpec& r = runs[i];
    EXPECT_FALSE(r.speculative);
    EXPECT_TRUE(r.verified);
    EXPECT_EQ(r.partition, 0u);
    ASSERT_EQ(r.tokens.size(), sizes[i]) << "run " << i;
    ASSERT_EQ(r.positions.size(), sizes[i]);
    for (size_t j = 0; j < sizes[i]; ++j, ++pos) {
      EXPECT_EQ(r.tokens[j], prompt[pos]);
      EXPECT_EQ(r.positions[j], pos);
    }
    // Only the last run returns a row: the prompt's last token's.
    if (i + 1 < runs.size()) {
      EXPECT_TRUE(r.result_rows.empty()) << "run " << i;
    } else {
      EXPECT_EQ(r.result_rows, std::vector<uint32_t>{static_cast<uint32_t>(sizes[i] - 1)});
    }
  }
  EXPECT_EQ(pos, prompt.size());
}

TEST(PrefillSplit, BothControllersSendTheSplitPrefill) {
  std::vector<int32_t> prompt(100);
  std::iota(prompt.begin(), prompt.end(), 7);
  const auto budget = FittedBudget(10000, 500, 8);
  for (bool tree : {false, true}) {
    SCOPED_TRACE(tree ? "dynamic tree" : "paper's controller");
    ControllerOptions o = Options(budget.get());
    o.spec.mode = Mode::kPipeInfer;
    o.spec.paper_tree = !tree;
    FlatDrafter drafter;
    RecordingSink sink;
    Controller c(o, &sink, &drafter);
    ASSERT_TRUE(c.Start(prompt).ok());
    ExpectRunsCover(sink.runs, prompt, {20, 20, 20, 20, 20});
    // Off: the whole prompt in one run.
    o.split_prefill = false;
    RecordingSink one;
    Controller d(o, &one, &drafter);
    ASSERT_TRUE(d.Start(prompt).ok());
    ExpectRunsCover(one.runs, prompt, {100});
  }
  // Plain mode (no drafter); a prompt that does not divide evenly: 7 runs of at most 15 tokens.
  ControllerOptions o = Options(budget.get());
  o.max_run_tokens = 16;
  RecordingSink sink;
  Controller c(o, &sink, nullptr);
  ASSERT_TRUE(c.Start(prompt).ok());
  ExpectRunsCover(sink.runs, prompt, {15, 15, 15, 15, 15, 15, 10});
}

}  // namespace
}  // namespace pipeinfer::spec
