// The planner's formulas against hand-computed arithmetic (docs/planner.md): limits (one stage,
// agreement 0 and 1, infinite and slow links, concurrency), input checks and the calibration rows.
#include "plan/planner.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "plan/model_costs.h"
#include "plan/rounds.h"

namespace pipeinfer::plan {
namespace {

// tokens/s of one request: the prefill, then max_tokens - 1 tokens at `per_token_us`.
double Rate(int max_tokens, double ttft_us, double per_token_us) {
  return max_tokens / (ttft_us + (max_tokens - 1) * per_token_us) * 1e6;
}

PlanInput Bare() {  // no calibration constants, so the arithmetic is easy to follow
  PlanInput in;
  in.hop_us = 0;
  in.draft_floor_us = 0;
  return in;
}

std::vector<ModePrediction> Modes(const PlanInput& in) {
  absl::StatusOr<std::vector<ModePrediction>> m = PredictModes(in);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *m : std::vector<ModePrediction>(3);
}

TEST(Planner, OneStage) {
  PlanInput in = Bare();
  in.stages = 1;
  in.stage_us = 10000;
  in.token_us = 500;
  in.draft_us = 1000;
  in.hop_us = 200;
  in.link_us = 100;
  in.agreement = 0.5;
  in.draft_max = 3;
  in.prompt_tokens = 10;
  in.max_tokens = 11;
  const auto m = Modes(in);
  // One stage, two hops (to it and back) of 200 + 100 us.
  const double ttft = 10000 + 500 * 10 + 2 * 300;
  EXPECT_EQ(m[0].mode, "plain");
  EXPECT_NEAR(m[0].tokens_per_s, Rate(11, ttft, 10500 + 600), 1e-9);
  EXPECT_DOUBLE_EQ(m[0].tokens_per_pass, 1.0);
  // sync: 3 draft passes, one run of 4 tokens, 1 + 0.5 + 0.25 + 0.125 tokens per round.
  const double round = 3 * 1000 + (10000 + 500 * 4) + 600;
  EXPECT_EQ(m[1].mode, "sync");
  EXPECT_NEAR(m[1].tokens_per_s, Rate(11, ttft, round / 1.875), 1e-9);
  EXPECT_NEAR(m[1].tokens_per_pass, 1.875, 1e-12);
  EXPECT_EQ(m[2].mode, "pipeinfer");
  EXPECT_GT(m[2].tokens_per_s, 0);
}

TEST(Planner, SyncTokensPerRoundLimits) {
  EXPECT_DOUBLE_EQ(SyncTokensPerRound(0.0, 4), 1.0);
  EXPECT_DOUBLE_EQ(SyncTokensPerRound(1.0, 4), 5.0);
  EXPECT_NEAR(SyncTokensPerRound(0.8, 4), 1 + 0.8 + 0.64 + 0.512 + 0.4096, 1e-12);
  EXPECT_NEAR(SyncTokensPerRound(0.999999, 4), 5.0, 1e-4);  // continuous towards alpha = 1
}

TEST(Planner, AgreementOneSyncCommitsDraftMaxPlusOne) {
  PlanInput in = Bare();
  in.stages = 4;
  in.stage_us = 10000;
  in.token_us = 1000;
  in.draft_us = 2000;
  in.agreement = 1.0;
  in.draft_max = 4;
  in.prompt_tokens = 10;
  in.max_tokens = 21;
  const auto m = Modes(in);
  EXPECT_DOUBLE_EQ(m[1].tokens_per_pass, 5.0);
  // The prefill alone in 2 runs of 5 tokens, one pass apart: 5 passes of 15 ms (1 run: 4 x 20 ms;
  // 3 runs of at most 4 tokens: 6 x 14 ms).
  const double ttft = 5 * (10000 + 1000 * 5);
  const double round = 4 * 2000 + 4 * (10000 + 1000 * 5);
  EXPECT_NEAR(m[1].tokens_per_s, Rate(21, ttft, round / 5), 1e-9);
}

TEST(Planner, AgreementOnePipeInferKeepsThePipelineFull) {
  // Free drafting and hops: micro-batches of 2 tokens follow the plain run one pass apart. The
  // 8 tokens after the first need guesses 1..7 accepted: run 0 verifies guess 1, run j guesses
  // 2j .. 2j + 1, so run 4 (entering stage 0 at 11 + 3 * 12 ms) ends the request.
  PlanInput in = Bare();
  in.stages = 4;
  in.stage_us = 10000;
  in.token_us = 1000;
  in.agreement = 1.0;
  in.draft_max = 2;
  in.prompt_tokens = 10;
  in.max_tokens = 9;
  const auto m = Modes(in);
  const double ttft = 5 * (10000 + 1000 * 5);  // as above: the prefill in 2 runs
  const double last_result = (11000 + 3 * 12000) + 4 * 12000;
  EXPECT_NEAR(m[2].tokens_per_s, 9 / (ttft + last_result) * 1e6, 1e-9);
  EXPECT_NEAR(m[2].tokens_per_pass, 8.0 / 5.0, 1e-12);  // 8 tokens from 5 verifying runs
}

TEST(Planner, AgreementZeroGainsNothing) {
  PlanInput in;  // with the calibration constants
  in.agreement = 0.0;
  const auto m = Modes(in);
  const double hop = in.hop_us;
  const double plain_token = 8 * (10000 + 500) + 9 * hop;
  // The 20-token prefill in 2 runs of 10: 9 passes of 15 ms (1 run: 8 x 20 ms; 3 runs of 7: also
  // 10 x 13.5 = 135 ms, and ties go to fewer runs; 4 runs of 5: 11 x 12.5 ms).
  ASSERT_EQ(in.prompt_tokens, 20);
  const double ttft = 9 * (10000 + 500 * 10) + 9 * hop;
  EXPECT_NEAR(m[0].tokens_per_s, Rate(64, ttft, plain_token), 1e-9);
  // sync commits one token per round and pays the drafts and a longer run.
  const double draft = 4 * std::max(in.draft_us, in.draft_floor_us);
  const double sync_round = draft + 8 * (10000 + 500 * 5) + 9 * hop;
  EXPECT_DOUBLE_EQ(m[1].tokens_per_pass, 1.0);
  EXPECT_NEAR(m[1].tokens_per_s, Rate(64, ttft, sync_round), 1e-9);
  EXPECT_LT(m[1].tokens_per_s, m[0].tokens_per_s);
  // pipeinfer: every round is the plain run, plus the wait of the next plain run for the
  // (cancelled) pass in progress at stage 0: half a micro-batch pass, at most S hops.
  const double restart = std::min((10000 + 500 * 4) / 2.0, 8 * hop);
  EXPECT_NEAR(m[2].tokens_per_s, Rate(64, ttft, plain_token + restart), 1e-9);
  EXPECT_LE(m[2].tokens_per_s, m[0].tokens_per_s);
  EXPECT_GT(m[2].tokens_per_s, 0.9 * m[0].tokens_per_s);
}

TEST(Planner, InfiniteLinkEqualsNoLinkTerm) {
  PlanInput base;
  base.agreement = 0.7;
  PlanInput no_rate = base;
  no_rate.hidden_bytes = 8192;
  no_rate.link_mbps = 0;  // infinite
  PlanInput huge = no_rate;
  huge.link_mbps = 1e12;
  const auto b = Modes(base), z = Modes(no_rate), h = Modes(huge);
  for (int i = 0; i < 3; ++i) {
    EXPECT_DOUBLE_EQ(z[i].tokens_per_s, b[i].tokens_per_s) << b[i].mode;
    EXPECT_NEAR(h[i].tokens_per_s, b[i].tokens_per_s, 1e-6 * b[i].tokens_per_s) << b[i].mode;
  }
}

TEST(Planner, SlowLinkLowersEveryMode) {
  PlanInput fast = Bare();
  fast.agreement = 0.8;
  PlanInput slow = fast;
  slow.link_mbps = 10;
  slow.hidden_bytes = 8192;  // n_embd 4096 in f16
  slow.link_us = 500;
  const auto f = Modes(fast), s = Modes(slow);
  for (int i = 0; i < 3; ++i) EXPECT_LT(s[i].tokens_per_s, f[i].tokens_per_s) << f[i].mode;
  // plain: 7 links between the 8 stages carry 8192 bytes at 10 bit/us; 9 hops pay 500 us. The
  // prefill is split by the passes alone (2 runs of 10, as in AgreementZeroGainsNothing); the
  // second run follows the first one transfer behind (a transfer of 10 tokens outlasts a pass).
  const double wire = 8192 * 8 / 10.0;
  const double ttft = 8 * (10000 + 500 * 10) + 9 * 500 + 7 * wire * 10 + wire * 10;
  const double token = 8 * 10500 + 9 * 500 + 7 * wire;
  EXPECT_NEAR(s[0].tokens_per_s, Rate(64, ttft, token), 1e-9);
}

TEST(Planner, ConcurrencyScalesUntilTheStagesFill) {
  PlanInput one;
  one.agreement = 0.8;
  const auto m1 = Modes(one);
  for (int n : {2, 4, 8, 16}) {
    PlanInput many = one;
    many.concurrency = n;
    const auto mn = Modes(many);
    for (int i = 0; i < 3; ++i) {
      SCOPED_TRACE(mn[i].mode + " N=" + std::to_string(n));
      EXPECT_GT(mn[i].tokens_per_s, m1[i].tokens_per_s);      // more requests, more tokens
      EXPECT_LE(mn[i].tokens_per_s, n * m1[i].tokens_per_s);  // never more than N alone
    }
  }
  // Far beyond saturation: a stage spends at least b per token, so no mode beats 1 / b.
  PlanInput crowd = one;
  crowd.concurrency = 10000;
  for (const ModePrediction& p : Modes(crowd)) {
    EXPECT_LT(p.tokens_per_s, 1e6 / crowd.token_us) << p.mode;
  }
}

TEST(Planner, RejectsBadInputsNamingTheField) {
  struct Case {
    const char* field;
    void (*set)(PlanInput&);
  };
  const Case cases[] = {
      {"stages", [](PlanInput& in) { in.stages = 0; }},
      {"stage_us", [](PlanInput& in) { in.stage_us = -1; }},
      {"token_us", [](PlanInput& in) { in.token_us = std::nan(""); }},
      {"stage_us + token_us", [](PlanInput& in) { in.stage_us = in.token_us = 0; }},
      {"draft_us", [](PlanInput& in) { in.draft_us = -5; }},
      {"agreement", [](PlanInput& in) { in.agreement = 1.5; }},
      {"draft_max", [](PlanInput& in) { in.draft_max = 0; }},
      {"link_mbps", [](PlanInput& in) { in.link_mbps = -1; }},
      {"link_us", [](PlanInput& in) { in.link_us = -1; }},
      {"hidden_bytes", [](PlanInput& in) { in.hidden_bytes = -1; }},
      {"concurrency", [](PlanInput& in) { in.concurrency = 0; }},
      {"max_tokens", [](PlanInput& in) { in.max_tokens = 0; }},
      {"hop_us", [](PlanInput& in) { in.hop_us = -1; }},
      {"draft_floor_us", [](PlanInput& in) { in.draft_floor_us = -1; }},
      {"prompt_tokens", [](PlanInput& in) { in.prompt_tokens = 0; }},
      {"max_inflight", [](PlanInput& in) { in.max_inflight = 300; }},
      {"min_stages", [](PlanInput& in) { in.min_stages = 0; }},
  };
  for (const Case& c : cases) {
    PlanInput in;
    c.set(in);
    absl::StatusOr<PlanOutput> out = Predict(in);
    ASSERT_FALSE(out.ok()) << c.field;
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_EQ(out.status().message().find(c.field), 0u) << out.status();
  }
  PlanInput in;
  in.agreement = 1.5;
  EXPECT_EQ(Predict(in).status().message(), "agreement must be in [0, 1], got 1.5");
}

TEST(Planner, RecommendsWithReasons) {
  PlanInput in;
  in.min_stages = 3;
  absl::StatusOr<PlanOutput> out = Predict(in);
  ASSERT_TRUE(out.ok()) << out.status();
  const Recommendation& r = out->recommend;
  EXPECT_GE(r.draft_max, 1);
  EXPECT_LE(r.draft_max, 16);
  EXPECT_GE(r.max_inflight, 2);
  EXPECT_LE(r.max_inflight, 2 * in.stages + 2);
  EXPECT_GE(r.stages, 3);
  // b / (a + b) with one verified token per pass.
  EXPECT_DOUBLE_EQ(r.p_accept, 0.05);
  EXPECT_EQ(r.why, r.why_draft_max + "\n" + r.why_p_accept + "\n" + r.why_max_inflight + "\n" +
                       r.why_stages);
  EXPECT_EQ(r.why_draft_max.rfind("draft_max ", 0), 0u);
  EXPECT_EQ(r.why_stages.rfind("stages ", 0), 0u);
}

// The emulated 8-stage pipeline of issue 12 (10 ms + 0.5 ms per token, the 16-layer n_embd-128
// synthetic model as its own draft with --draft-noise 1 - agreement and the default `demo` rank
// model, 6 built-in prompts x 64 tokens, p_accept 0.02, draft_max 4) as `pipeinfer bench` measured
// it on 2026-12-06 (AMD EPYC, 2 vCPUs; docs/planner.md section 8): within 20 % per mode.
TEST(Planner, MatchesTheMeasuredEmulatedPipeline) {
  struct Row {
    double agreement;
    double plain, sync, pipeinfer;
  };
  for (const Row& row : {Row{0.8, 10.46, 24.61, 31.02}, Row{0.5, 10.35, 15.13, 16.15},
                         Row{0.1, 10.39, 9.47, 10.52}}) {
    PlanInput in;
    in.agreement = row.agreement;
    const auto m = Modes(in);
    SCOPED_TRACE(row.agreement);
    EXPECT_NEAR(m[0].tokens_per_s, row.plain, 0.2 * row.plain);
    EXPECT_NEAR(m[1].tokens_per_s, row.sync, 0.2 * row.sync);
    EXPECT_NEAR(m[2].tokens_per_s, row.pipeinfer, 0.2 * row.pipeinfer);
  }
}

TEST(ModelCosts, StageCostFromSizeAndBandwidth) {
  ModelSize m;
  m.model_gb = 40;
  m.draft_gb = 2;
  m.node_gbps = 50;
  m.stages = 8;
  absl::StatusOr<StageCosts> c = CostsFromModelSize(m);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->stage_us, 100000);  // 5 GB per stage at 50 GB/s
  EXPECT_DOUBLE_EQ(c->token_us, 5000);    // 5 % of it
  EXPECT_DOUBLE_EQ(c->draft_us, 40000);   // 2 GB at 50 GB/s
  EXPECT_DOUBLE_EQ(*BitsPerWeight("Q8_0"), 8.5);
  EXPECT_DOUBLE_EQ(*WireBytesPerValue("f16"), 2.0);
  EXPECT_EQ(BitsPerWeight("q3").status().message().find("quant"), 0u);
  m.node_gbps = 0;
  EXPECT_EQ(CostsFromModelSize(m).status().message().find("node_gbps"), 0u);
}

}  // namespace
}  // namespace pipeinfer::plan
