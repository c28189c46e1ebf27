// Stage cores chained in process (no transport): plain decoding through 1-3 stages reproduces
// llama.cpp's greedy ids; speculative runs in partitions with commits give the same tokens;
// cancellation skips runs, poisons their positions, and dependent runs are skipped identically on
// every stage.
#include "stage/stage_core.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>

#include <gtest/gtest.h>

#include "pipeinfer/v1/stage.pb.h"
#include "stage_chain.h"
#include "testing/fixtures.h"
#include "testing/stage_messages.h"

namespace pipeinfer::stage {
namespace {

using pipeinfer::testing::FixturePath;
using pipeinfer::testing::ReadIds;

class StageCoreTest : public ::testing::TestWithParam<uint32_t> {};

TEST_P(StageCoreTest, PlainDecodingMatchesReference) {
  Pipeline p("tiny-f32", GetParam());
  const auto prompt = ReadIds(FixturePath("refs/tiny-f32.p1.prompt_ids.txt"));
  const auto want = ReadIds(FixturePath("refs/tiny-f32.p1.greedy_ids.txt"));
  ASSERT_TRUE(p.Send(Open(7)).empty());
  // Prefill in two chunks; only the last row is needed.
  std::vector<int32_t> a(prompt.begin(), prompt.begin() + 40), b(prompt.begin() + 40, prompt.end());
  auto r1 = p.Send(PlainRun(1, 7, a, 0, false));
  ASSERT_EQ(r1.size(), 1u);
  EXPECT_EQ(r1[0].result().rows_size(), 0);
  auto r2 = p.Send(PlainRun(2, 7, b, 40));
  ASSERT_EQ(r2.size(), 1u);
  ASSERT_EQ(r2[0].result().rows_size(), 1);
  int32_t tok = static_cast<int32_t>(r2[0].result().rows(0).argmax().token_id());
  std::vector<int32_t> got;
  for (int s = 0; s < 32; ++s) {
    got.push_back(tok);
    auto r = p.Send(PlainRun(3 + s, 7, {tok}, static_cast<int32_t>(prompt.size()) + s));
    ASSERT_EQ(r.size(), 1u);
    ASSERT_TRUE(r[0].has_result());
    EXPECT_EQ(r[0].result().trace_size(), static_cast<int>(p.size()));
    tok = static_cast<int32_t>(r[0].result().rows(0).argmax().token_id());
  }
  EXPECT_EQ(got, want);
  EXPECT_TRUE(p.errors().empty());
  v1::StageDownstream close;
  close.mutable_session_close()->set_session_id(7);
  p.Send(close);
  for (size_t i = 0; i < p.size(); ++i) {
    EXPECT_EQ(p.stage(i).engine().kv().Stats().blocks_used, 0) << "stage " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Stages, StageCoreTest, ::testing::Values(1u, 2u));

TEST(StageCore, SpeculativeRunsCommitAndCancel) {
  Pipeline p("tiny-f32", 2);
  const auto prompt = ReadIds(FixturePath("refs/tiny-f32.p1.prompt_ids.txt"));
  const auto want = ReadIds(FixturePath("refs/tiny-f32.p1.greedy_ids.txt"));
  const uint32_t L = static_cast<uint32_t>(prompt.size());
  p.Send(Open(1));
  auto r = p.Send(PlainRun(1, 1, prompt, 0));
  ASSERT_EQ(r[0].result().rows(0).argmax().token_id(), static_cast<uint32_t>(want[0]));
  // Canonical has the prompt; g0 is known. Plain run for g0 and, speculatively, a draft of
  // g1 g2 X (X wrong) in partition 1 forked from canonical after g0 is appended.
  auto plain = p.Send(PlainRun(2, 1, {want[0]}, L));
  ASSERT_EQ(plain[0].result().rows(0).argmax().token_id(), static_cast<uint32_t>(want[1]));
  auto spec = p.Send(SpecRun(3, 1, 1, 0, L + 1, {want[1], want[2], 5}));
  ASSERT_EQ(spec.size(), 1u);
  ASSERT_TRUE(spec[0].has_result());
  const auto& rows = spec[0].result().rows();
  ASSERT_EQ(rows.size(), 3);
  EXPECT_EQ(rows[0].argmax().token_id(), static_cast<uint32_t>(want[2]));  // verifies g2
  EXPECT_EQ(rows[1].argmax().token_id(), static_cast<uint32_t>(want[3]));  // bonus g3
  // Accept g1 g2: canonical = prompt + g0 g1 g2.
  EXPECT_TRUE(p.Send(Commit(1, 1, L + 3, true)).empty());
  // Continue plainly with g3: must predict g4.
  auto cont = p.Send(PlainRun(4, 1, {want[3]}, L + 3));
  EXPECT_EQ(cont[0].result().rows(0).argmax().token_id(), static_cast<uint32_t>(want[4]));

  // Cancel run 5 before it is sent: every stage skips it; the dependent speculative run 6 (forked
  // from partition 2 beyond its prefix) is skipped as DEPENDENCY; committing partition 2 fails.
  for (size_t i = 0; i < p.size(); ++i) p.stage(i).Cancel({5});
  auto c5 = p.Send(SpecRun(5, 1, 2, 0, L + 4, {want[4], want[5]}));
  ASSERT_EQ(c5.size(), 1u);
  ASSERT_TRUE(c5[0].has_tombstone());
  EXPECT_EQ(c5[0].tombstone().reason(), v1::TOMBSTONE_REASON_CANCELLED);
  EXPECT_EQ(c5[0].tombstone().stage_index(), 0u);
  auto dep = p.Send(SpecRun(6, 1, 3, 2, L + 6, {want[6]}));
  ASSERT_TRUE(dep[0].has_tombstone());
  EXPECT_EQ(dep[0].tombstone().reason(), v1::TOMBSTONE_REASON_DEPENDENCY);
  EXPECT_EQ(p.stage(0).counters().runs_skipped, 1u);
  EXPECT_EQ(p.stage(0).counters().runs_dependency, 1u);
  // Later stages see only the tombstones and pass them on.
  EXPECT_EQ(p.stage(1).counters().runs_dependency, 0u);
  EXPECT_EQ(p.stage(1).counters().tombstones_forwarded, 2u);
  EXPECT_TRUE(p.errors().empty());
  p.Send(Commit(1, 2, L + 5, false));
  ASSERT_FALSE(p.errors().empty());
  EXPECT_EQ(p.errors()[0].code(), v1::STATUS_CODE_FAILED_PRECONDITION);
  EXPECT_NE(p.errors()[0].message().find("poisoned"), std::string::npos);
  // The failed session's later runs are tombstones; closing clears everything.
  auto after = p.Send(PlainRun(7, 1, {want[4]}, L + 4));
  ASSERT_TRUE(after[0].has_tombstone());
  EXPECT_EQ(after[0].tombstone().reason(), v1::TOMBSTONE_REASON_SESSION_FAILED);
  v1::StageDownstream close;
  close.mutable_session_close()->set_session_id(1);
  p.Send(close);
  EXPECT_EQ(p.stage(1).engine().kv().Stats().blocks_used, 0);
}

// SPARSE rows against a naive reduction of the FULL logits of the same run (common.proto,
// ResultSpec): candidates by raw logit, top-k, top-p and min-p on full-vocabulary probabilities,
// then softmax(logit / temperature) over the survivors.
TEST(StageCore, SparseRowsMatchANaiveReductionOfFullLogits) {
  Pipeline p("tiny-f32", 2);
  const auto prompt = ReadIds(FixturePath("refs/tiny-f32.p1.prompt_ids.txt"));
  auto open = [&](uint64_t sid, const v1::ResultSpec& spec) {
    v1::StageDownstream m = Open(sid);
    *m.mutable_session_open()->mutable_result() = spec;
    p.Send(m);
  };
  v1::ResultSpec full;
  full.set_kind(v1::RESULT_KIND_FULL);
  v1::ResultSpec filtered;
  filtered.set_kind(v1::RESULT_KIND_SPARSE);
  filtered.set_include_logits(true);
  filtered.mutable_filter()->set_temperature(0.7f);
  filtered.mutable_filter()->set_top_k(8);
  filtered.mutable_filter()->set_top_p(0.9f);
  filtered.mutable_filter()->set_min_p(0.05f);
  v1::ResultSpec plain;
  plain.set_kind(v1::RESULT_KIND_SPARSE);
  plain.set_max_candidates(5);
  open(1, full);
  open(2, filtered);
  open(3, plain);
  auto rf = p.Send(PlainRun(1, 1, prompt, 0));
  auto rs = p.Send(PlainRun(2, 2, prompt, 0));
  auto rp = p.Send(PlainRun(3, 3, prompt, 0));
  ASSERT_TRUE(p.errors().empty()) << p.errors()[0].message();
  const std::string& bytes = rf[0].result().rows(0).full().logits_f32();
  std::vector<float> logits(bytes.size() / 4);
  std::memcpy(logits.data(), bytes.data(), bytes.size());
  ASSERT_EQ(logits.size(), 259u);

  std::vector<int> order(logits.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  double z = 0;
  for (float l : logits) z += std::exp(static_cast<double>(l));
  auto p1 = [&](int id) { return std::exp(static_cast<double>(logits[id])) / z; };
  // Unfiltered: the 5 highest logits with their temperature-1 probabilities.
  const auto& sp = rp[0].result().rows(0).sparse();
  ASSERT_EQ(sp.token_ids_size(), 5);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(sp.token_ids(i), static_cast<uint32_t>(order[i]));
    EXPECT_NEAR(sp.probs(i), p1(order[i]), 1e-5);
  }
  // Filtered.
  std::vector<int> keep(order.begin(), order.begin() + 8);
  double cum = 0;
  size_t n = 0;
  while (n < keep.size() && cum < 0.9) cum += p1(keep[n++]);
  keep.resize(n);
  const double floor = 0.05 * p1(keep[0]);
  while (keep.size() > 1 && p1(keep.back()) < floor) keep.pop_back();
  double zt = 0;
  for (int id : keep) zt += std::exp(logits[id] / 0.7);
  const auto& sf = rs[0].result().rows(0).sparse();
  ASSERT_EQ(sf.token_ids_size(), static_cast<int>(keep.size()));
  ASSERT_GT(keep.size(), 1u);  // the row is not degenerate: the filter did something to test
  double sum = 0;
  for (size_t i = 0; i < keep.size(); ++i) {
    EXPECT_EQ(sf.token_ids(i), static_cast<uint32_t>(keep[i]));
    EXPECT_NEAR(sf.probs(i), std::exp(logits[keep[i]] / 0.7) / zt, 1e-5);
    EXPECT_FLOAT_EQ(sf.logits(i), logits[keep[i]]);
    sum += sf.probs(i);
  }
  EXPECT_NEAR(sum, 1.0, 1e-5);
  EXPECT_NEAR(sf.log_z(), std::log(z), 1e-4);
}

TEST(StageCore, MalformedRunsFailTheSessionWithPreciseCodes) {
  Pipeline p("tiny-f32", 1);
  p.Send(Open(1));
  auto bad_pos = PlainRun(1, 1, {5, 6}, 3);  // canonical is empty: positions must start at 0
  auto r = p.Send(bad_pos);
  ASSERT_TRUE(r[0].has_tombstone());
  ASSERT_EQ(p.errors().size(), 1u);
  EXPECT_EQ(p.errors()[0].code(), v1::STATUS_CODE_INVALID_ARGUMENT);
  EXPECT_NE(p.errors()[0].message().find("position"), std::string::npos);
  EXPECT_EQ(p.errors()[0].run_id(), 1u);
  EXPECT_EQ(p.errors()[0].origin(), "stage/0");

  p.Send(Open(2));
  auto oob = PlainRun(2, 2, {999}, 0);
  p.Send(oob);
  EXPECT_EQ(p.errors().back().code(), v1::STATUS_CODE_INVALID_ARGUMENT);
  p.Send(Open(3));
  p.Send(PlainRun(3, 99, {5}, 0));  // unknown session
  EXPECT_EQ(p.errors().back().code(), v1::STATUS_CODE_FAILED_PRECONDITION);
  p.Send(Open(3));  // already open
  EXPECT_EQ(p.errors().back().code(), v1::STATUS_CODE_ALREADY_EXISTS);
  std::vector<int32_t> long_run(600, 5);
  p.Send(PlainRun(4, 3, long_run, 0));
  EXPECT_EQ(p.errors().back().code(), v1::STATUS_CODE_INVALID_ARGUMENT);
}

// stage.proto: run ids are non-zero and increase along a session's stream within an epoch.
TEST(StageCore, RunIdsMustIncreasePerSession) {
  Pipeline p("tiny-f32", 2);
  p.Send(Open(1));
  p.Send(Open(2));
  ASSERT_TRUE(p.Send(PlainRun(10, 1, {1, 5}, 0))[0].has_result());
  ASSERT_TRUE(p.Send(PlainRun(5, 2, {1}, 0))[0].has_result());  // another session: its own order
  ASSERT_TRUE(p.errors().empty());
  auto r = p.Send(PlainRun(10, 1, {6}, 2));  // repeated id
  ASSERT_TRUE(r[0].has_tombstone());
  ASSERT_EQ(p.errors().size(), 1u);
  EXPECT_EQ(p.errors()[0].code(), v1::STATUS_CODE_INVALID_ARGUMENT);
  EXPECT_NE(p.errors()[0].message().find("run id 10 is not greater than"), std::string::npos)
      << p.errors()[0].message();
  p.Send(Open(3));
  p.Send(PlainRun(0, 3, {1}, 0));  // id 0
  ASSERT_EQ(p.errors().size(), 2u);
  EXPECT_EQ(p.errors()[1].code(), v1::STATUS_CODE_INVALID_ARGUMENT);
  EXPECT_EQ(p.errors()[1].session_id(), 3u);
}

// Session id 0 is never open: a run for it gets its one outcome (a tombstone) and an error, and
// does not hold up what follows it (it used to stay in the queue: no outcome, and a stalled link).
TEST(StageCore, RunForSessionZeroFailsInPlace) {
  Pipeline p("tiny-f32", 2);
  p.Send(Open(1));
  auto r = p.Send(PlainRun(1, 0, {5}, 0));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_TRUE(r[0].has_tombstone());
  ASSERT_FALSE(p.errors().empty());
  EXPECT_EQ(p.errors()[0].session_id(), 0u);
  ASSERT_TRUE(p.Send(PlainRun(2, 1, {1, 5}, 0))[0].has_result());
}

// A reservation beyond the stage's whole cache (1024 tokens here) can never be admitted: a
// precise OUT_OF_RANGE rather than the retryable RESOURCE_EXHAUSTED of a full cache.
TEST(StageCore, ReservationOverTheWholeCacheIsOutOfRange) {
  Pipeline p("tiny-f32", 1);
  auto open = Open(1);
  open.mutable_session_open()->set_kv_reserve_tokens(4000000000u);
  open.mutable_session_open()->set_max_partitions(4000000000u);
  p.Send(open);
  ASSERT_EQ(p.errors().size(), 1u);
  EXPECT_EQ(p.errors()[0].code(), v1::STATUS_CODE_OUT_OF_RANGE);
  EXPECT_NE(p.errors()[0].message().find("kv_reserve_tokens 4000000000"), std::string::npos)
      << p.errors()[0].message();
  auto fits = Open(2);
  fits.mutable_session_open()->set_kv_reserve_tokens(512);
  fits.mutable_session_open()->set_max_partitions(1);
  p.Send(fits);
  EXPECT_EQ(p.errors().size(), 1u);
  ASSERT_TRUE(p.Send(PlainRun(1, 2, {1, 5}, 0))[0].has_result());
}

}  // namespace
}  // namespace pipeinfer::stage
