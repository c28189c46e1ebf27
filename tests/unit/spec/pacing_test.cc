// Pipeinfer's dynamic tree, run timing: runs are paced to stage 0 (a run is built when the runs
// before it leave stage 0 about free, by the stage cost fit: Controller::WakeAt says when to come
// back), nothing is paced without a fit or in the no_continuous ablation, and a correction is fed
// as the lead of a run that already carries guesses after it. Beside other requests a derived
// in-flight limit is shared.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "spec/controller.h"
#include "spec/spec_budget.h"
#include "unit/spec/spec_test_util.h"

namespace pipeinfer::spec {
namespace {

using testing::FittedBudget;
using testing::RecordingSink;

using Clock = std::chrono::steady_clock;
using std::chrono::microseconds;

constexpr int32_t kVocab = 16;

// A confident draft: after token t it guesses (t + 1) % kVocab.
class NextTokenDrafter : public Drafter {
 public:
  absl::StatusOr<std::span<const float>> NextLogits(std::span<const int32_t> seq) override {
    std::fill(logits_.begin(), logits_.end(), 0.0f);
    logits_[static_cast<size_t>((seq.back() + 1) % kVocab)] = 8.0f;
    return std::span<const float>(logits_);
  }

 private:
  std::vector<float> logits_ = std::vector<float>(kVocab, 0.0f);
};

ControllerOptions PipeInfer(const SpecBudget* costs) {
  ControllerOptions o;
  o.spec.mode = Mode::kPipeInfer;
  o.n_stages = 8;
  o.costs = costs;
  o.split_prefill = false;
  o.stop.max_context = 4096;
  o.stop.max_new_tokens = 64;
  return o;
}

double MicrosBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::micro>(b - a).count();
}

TEST(Pacing, RunsFollowStageZero) {
  // Passes of 20 ms + 1 ms per token. The prefill of 10 tokens keeps stage 0 busy 30 ms; a run is
  // built once at most 0.2 of a full run's pass (0.2 x 26 ms) of stage-0 work is left before it.
  const auto budget = FittedBudget(20000, 1000, 8);
  NextTokenDrafter drafter;
  RecordingSink sink;
  Controller c(PipeInfer(budget.get()), &sink, &drafter);
  ASSERT_TRUE(c.Start(std::vector<int32_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}).ok());
  ASSERT_EQ(sink.runs.size(), 1u);
  absl::StatusOr<int> launched = c.Speculate(nullptr);
  ASSERT_TRUE(launched.ok());
  EXPECT_EQ(*launched, 0);
  ASSERT_TRUE(c.WakeAt().has_value());
  EXPECT_NEAR(MicrosBetween(sink.sent_at[0], *c.WakeAt()), 30000 - 0.2 * 26000, 500.0);
  // At the wake-up: one run, and the next one is due when stage 0 is through it too.
  std::this_thread::sleep_until(*c.WakeAt());
  launched = c.Speculate(nullptr);
  ASSERT_TRUE(launched.ok());
  EXPECT_EQ(*launched, 1);
  ASSERT_EQ(sink.runs.size(), 2u);
  const RunSpec& run = sink.runs[1];
  EXPECT_TRUE(run.speculative);
  ASSERT_TRUE(c.WakeAt().has_value());
  // Stage 0 takes the second run when the prefill is through (30 ms after it was sent; the run
  // was sent before that), for 20 ms + 1 ms per token.
  const double free_us = 30000 + 20000 + 1000.0 * static_cast<double>(run.tokens.size());
  EXPECT_NEAR(MicrosBetween(sink.sent_at[0], *c.WakeAt()), free_us - 0.2 * 26000, 500.0);
}

TEST(Pacing, NoFitOrNoContinuousMeansNoPacing) {
  // Without a cost fit, runs go out at once (paced, the same start launches none: above), as far
  // as the tree's timing weights find nodes worth sending.
  {
    NextTokenDrafter drafter;
    RecordingSink sink;
    Controller c(PipeInfer(nullptr), &sink, &drafter);
    ASSERT_TRUE(c.Start(std::vector<int32_t>{1, 2, 3}).ok());
    absl::StatusOr<int> launched = c.Speculate(nullptr);
    ASSERT_TRUE(launched.ok());
    EXPECT_GE(*launched, 1);
    EXPECT_FALSE(c.WakeAt().has_value());
  }
  // The no_continuous ablation keeps the paper's timing: one run per verification, not paced.
  {
    const auto budget = FittedBudget(20000, 1000, 8);
    ControllerOptions o = PipeInfer(budget.get());
    o.spec.no_continuous = true;
    NextTokenDrafter drafter;
    RecordingSink sink;
    Controller c(o, &sink, &drafter);
    ASSERT_TRUE(c.Start(std::vector<int32_t>{1, 2, 3}).ok());
    absl::StatusOr<int> launched = c.Speculate(nullptr);
    ASSERT_TRUE(launched.ok());
    EXPECT_EQ(*launched, 1);
    EXPECT_FALSE(c.WakeAt().has_value());
  }
}

TEST(InflightLimit, SharedBetweenRequestsInProgress) {
  // Runs in flight after the prefill and one Speculate, with `requests` in progress on the
  // service's budget (no cost fit: nothing is paced; a fixed budget of one node per run, so the
  // confident draft's chain is worth a run per level).
  const auto runs_in_flight = [](int requests, uint32_t named_max_inflight) {
    SpecBudgetOptions bo;
    bo.n_stages = 8;
    SpecBudget budget(bo);
    budget.AddSession(requests);
    ControllerOptions o = PipeInfer(&budget);
    o.spec.draft_max = 1;
    o.spec.max_inflight = named_max_inflight;
    NextTokenDrafter drafter;
    RecordingSink sink;
    Controller c(o, &sink, &drafter);
    EXPECT_TRUE(c.Start(std::vector<int32_t>{1, 2, 3}).ok());
    EXPECT_TRUE(c.Speculate(nullptr).ok());
    EXPECT_EQ(c.max_inflight(), named_max_inflight != 0 ? named_max_inflight : 9u);
    return sink.runs.size();
  };
  // Alone, a confident draft fills the derived limit: one run per stage and one more.
  EXPECT_EQ(runs_in_flight(1, 0), 9u);
  // Beside others the stages batch everyone's runs into the same passes: 9 shared by 4 requests
  // is 3 runs each (rounded up), by 8 or more requests the minimum of 2.
  EXPECT_EQ(runs_in_flight(4, 0), 3u);
  EXPECT_EQ(runs_in_flight(8, 0), 2u);
  EXPECT_EQ(runs_in_flight(16, 0), 2u);
  // A limit the request or service names is not shared.
  EXPECT_EQ(runs_in_flight(4, 6), 6u);
}

TEST(LeadRun, ACorrectionCarriesTheNextGuesses) {
  NextTokenDrafter drafter;
  RecordingSink sink;
  Controller c(PipeInfer(nullptr), &sink, &drafter);
  ASSERT_TRUE(c.Start(std::vector<int32_t>{1, 2, 3}).ok());
  ASSERT_TRUE(c.Speculate(nullptr).ok());
  const size_t before = sink.runs.size();
  ASSERT_GT(before, 1u);
  // The target says 9 after the prompt where the draft guessed 4: a correction. Every guess in
  // flight dies, and 9 is fed as the lead of a run with the draft's guesses 10, 11, ... after it.
  Outcome o;
  o.run_id = 1;
  TargetRow row;
  row.kind = TargetRow::Kind::kArgmax;
  row.argmax = 9;
  o.rows.push_back(row);
  ASSERT_TRUE(c.OnOutcome(o).ok());
  EXPECT_EQ(c.TakeEmitted(), std::vector<int32_t>{9});
  EXPECT_EQ(sink.cancelled.size(), before - 1);
  ASSERT_EQ(sink.runs.size(), before + 1);
  // The cancelled runs are dropped (their outcomes need not interrupt drafting); the lead is not.
  for (uint64_t id : sink.cancelled) EXPECT_TRUE(c.Dropped(id)) << id;
  EXPECT_FALSE(c.Dropped(before + 1));
  const RunSpec& lead = sink.runs.back();
  EXPECT_TRUE(lead.verified);
  ASSERT_GE(lead.tokens.size(), 2u);
  EXPECT_LE(lead.tokens.size(), static_cast<size_t>(kDynamicRunCap));
  EXPECT_EQ(lead.tokens[0], 9);
  EXPECT_EQ(lead.positions[0], 3u);
  for (size_t i = 1; i < lead.tokens.size(); ++i) {
    EXPECT_EQ(lead.tokens[i], (9 + static_cast<int32_t>(i)) % kVocab) << i;
    EXPECT_EQ(lead.positions[i], 3u + i);
    EXPECT_EQ(lead.parents[i], static_cast<int32_t>(i) - 1);
  }
  EXPECT_EQ(lead.result_rows.size(), lead.tokens.size());
  // Its rows verify the guesses at once: the target agreeing with 10 and 11, then saying 0.
  Outcome next;
  next.run_id = before + 1;
  for (size_t i = 0; i < lead.tokens.size(); ++i) {
    TargetRow r;
    r.argmax = i < 2 ? (10 + static_cast<int32_t>(i)) % kVocab : 0;
    next.rows.push_back(r);
  }
  ASSERT_TRUE(c.OnOutcome(next).ok());
  EXPECT_EQ(c.TakeEmitted(), (std::vector<int32_t>{10, 11, 0}));
}

}  // namespace
}  // namespace pipeinfer::spec
