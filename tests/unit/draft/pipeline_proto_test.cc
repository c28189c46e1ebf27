// The draft service's pipeline messages (pipeline_proto.h) and a session's inbox
// (session_inbox.h), without processes.
#include "draft_server/pipeline_proto.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "draft_server/session_inbox.h"

namespace pipeinfer::draft_server {
namespace {

TEST(PipelineProto, ResultSpecFollowsTheSampler) {
  sampling::SamplingParams greedy;
  greedy.temperature = 0.0f;
  EXPECT_EQ(ResultSpecFor(greedy).kind(), v1::RESULT_KIND_ARGMAX);

  sampling::SamplingParams top_k;
  top_k.temperature = 0.8f;
  top_k.top_k = 20;
  top_k.top_p = 0.9f;
  const v1::ResultSpec sparse = ResultSpecFor(top_k);
  EXPECT_EQ(sparse.kind(), v1::RESULT_KIND_SPARSE);
  EXPECT_EQ(sparse.max_candidates(), 20u);
  EXPECT_FLOAT_EQ(sparse.filter().temperature(), 0.8f);
  EXPECT_EQ(sparse.filter().top_k(), 20u);
  EXPECT_FLOAT_EQ(sparse.filter().top_p(), 0.9f);

  sampling::SamplingParams unbounded = top_k;
  unbounded.top_k = 0;  // no bound on the candidates: the full logits
  EXPECT_EQ(ResultSpecFor(unbounded).kind(), v1::RESULT_KIND_FULL);

  sampling::SamplingParams penalty = greedy;
  penalty.repetition_penalty = 1.2f;  // the history matters: the full logits, even greedy
  penalty.repeat_last_n = 64;
  EXPECT_EQ(ResultSpecFor(penalty).kind(), v1::RESULT_KIND_FULL);

  // OpenAI's penalties and logit bias, and log-probabilities: the full logits too.
  for (int i = 0; i < 3; ++i) {
    sampling::SamplingParams p = i < 2 ? greedy : top_k;
    if (i == 0) p.frequency_penalty = 0.5f;
    if (i == 1) p.presence_penalty = -0.5f;
    if (i == 2) p.logit_bias = {{3, -100.0f}};
    EXPECT_EQ(ResultSpecFor(p).kind(), v1::RESULT_KIND_FULL) << i;
  }
  sampling::SamplingParams no_window = greedy;
  no_window.frequency_penalty = 1.0f;
  no_window.repeat_last_n = 0;  // penalties off
  EXPECT_EQ(ResultSpecFor(no_window).kind(), v1::RESULT_KIND_ARGMAX);
  EXPECT_EQ(ResultSpecFor(greedy, /*logprobs=*/true).kind(), v1::RESULT_KIND_FULL);
  EXPECT_EQ(ResultSpecFor(top_k, /*logprobs=*/true).kind(), v1::RESULT_KIND_FULL);
}

TEST(PipelineProto, RunAndKvOpMessages) {
  spec::RunSpec run;
  run.speculative = true;
  run.partition = 2;
  run.fork = spec::ForkSpec{2, 0, 0, 7};
  run.tokens = {5, 6};
  run.positions = {7, 8};
  run.parents = {-1, 0};
  run.branches = {0, 0};
  run.result_rows = {0, 1};
  const v1::StageDownstream m = RunMessage(42, run);
  ASSERT_TRUE(m.has_run());
  EXPECT_EQ(m.run().session_id(), 42u);
  EXPECT_EQ(m.run().run_id(), 0u);  // assigned when queued
  EXPECT_EQ(m.run().kind(), v1::RUN_KIND_SPECULATIVE);
  EXPECT_EQ(m.run().partition(), 2u);
  EXPECT_EQ(m.run().fork().n_positions(), 7u);
  EXPECT_EQ(m.run().token_ids_size(), 2);
  EXPECT_EQ(m.run().parents(0), -1);
  EXPECT_EQ(m.run().result_rows(1), 1u);

  spec::KvOpSpec commit;
  commit.kind = spec::KvOpSpec::Kind::kCommit;
  commit.partition = 2;
  commit.branch = 1;
  commit.n_positions = 9;
  commit.release = true;
  const v1::StageDownstream c = KvOpMessage(42, commit);
  EXPECT_EQ(c.kv().commit().branch(), 1u);
  EXPECT_TRUE(c.kv().commit().release());
  spec::KvOpSpec release;
  release.partitions = {3, 4};
  EXPECT_EQ(KvOpMessage(42, release).kv().release().partitions_size(), 2);
}

TEST(PipelineProto, Outcomes) {
  v1::ResultsDownstream tomb;
  tomb.mutable_tombstone()->set_run_id(9);
  tomb.mutable_tombstone()->set_stage_index(1);
  spec::Outcome out;
  ASSERT_TRUE(ToOutcome(tomb, 4, &out).ok());
  EXPECT_TRUE(out.tombstone);
  EXPECT_EQ(out.run_id, 9u);

  v1::ResultsDownstream res;
  res.mutable_result()->set_run_id(10);
  res.mutable_result()->add_rows()->mutable_argmax()->set_token_id(3);
  auto* sparse = res.mutable_result()->add_rows()->mutable_sparse();
  sparse->add_token_ids(1);
  sparse->add_probs(1.0f);
  const std::vector<float> logits = {0.5f, 1.5f, -1.0f, 2.0f};
  res.mutable_result()->add_rows()->mutable_full()->set_logits_f32(
      std::string(reinterpret_cast<const char*>(logits.data()), logits.size() * 4));
  spec::Outcome r;
  ASSERT_TRUE(ToOutcome(res, 4, &r).ok());
  ASSERT_EQ(r.rows.size(), 3u);
  EXPECT_EQ(r.rows[0].argmax, 3);
  EXPECT_EQ(r.rows[1].sparse.ids, std::vector<int32_t>{1});
  EXPECT_EQ(r.rows[2].logits, logits);

  spec::Outcome bad;
  EXPECT_EQ(ToOutcome(res, 5, &bad), absl::InternalError("run 10: a FULL row must hold 5 logits"));
  res.mutable_result()->mutable_rows(1)->mutable_sparse()->add_probs(0.0f);
  EXPECT_EQ(ToOutcome(res, 4, &bad), absl::InternalError("run 10: malformed SPARSE row"));
  res.mutable_result()->add_rows();
  res.mutable_result()->mutable_rows(1)->mutable_sparse()->add_token_ids(2);
  EXPECT_EQ(ToOutcome(res, 4, &bad), absl::InternalError("run 10: a result row without a value"));
}

TEST(PipelineProto, StatusFromDetail) {
  v1::ErrorDetail e;
  e.set_code(v1::STATUS_CODE_RESOURCE_EXHAUSTED);
  e.set_message("out of KV");
  e.set_origin("stage1");
  EXPECT_EQ(StatusFromDetail(e), absl::ResourceExhaustedError("stage1: out of KV"));
  e.clear_origin();
  e.set_code(v1::STATUS_CODE_OK);
  EXPECT_EQ(StatusFromDetail(e), absl::InternalError("pipeline: out of KV"));
}

TEST(SessionInbox, FailureFirstThenCancellationThenOutcomes) {
  SessionInbox inbox;
  EXPECT_FALSE(inbox.Waiting());
  v1::ResultsDownstream m;
  m.mutable_result()->set_run_id(1);
  inbox.Deliver(m);
  m.mutable_result()->set_run_id(2);
  inbox.Deliver(m);
  EXPECT_TRUE(inbox.Waiting());
  const auto never = [] { return false; };
  EXPECT_EQ(inbox.Next(never)->result().run_id(), 1u);  // in delivery order
  EXPECT_EQ(inbox.Next([] { return true; }).status().code(), absl::StatusCode::kCancelled);
  inbox.Fail(absl::AbortedError("reset"));
  inbox.Fail(absl::UnavailableError("later"));  // the first failure sticks
  EXPECT_EQ(inbox.Next(never).status(), absl::AbortedError("reset"));
  EXPECT_EQ(inbox.AwaitFailure(std::chrono::milliseconds(0)), absl::AbortedError("reset"));
}

TEST(SessionInbox, NextWaitsForADelivery) {
  SessionInbox inbox;
  EXPECT_EQ(inbox.AwaitFailure(std::chrono::milliseconds(1)), std::nullopt);
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    v1::ResultsDownstream m;
    m.mutable_tombstone()->set_run_id(5);
    inbox.Deliver(m);
  });
  absl::StatusOr<v1::ResultsDownstream> got = inbox.Next([] { return false; });
  t.join();
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->tombstone().run_id(), 5u);
}

TEST(SessionInbox, NextUntilEndsAtTheDeadlineOrAtADelivery) {
  SessionInbox inbox;
  const auto never = [] { return false; };
  const auto t0 = std::chrono::steady_clock::now();
  auto none = inbox.NextUntil(never, t0 + std::chrono::milliseconds(20));
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(20));
  // A delivery before the deadline ends the wait with it.
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    v1::ResultsDownstream m;
    m.mutable_result()->set_run_id(7);
    inbox.Deliver(m);
  });
  auto got = inbox.NextUntil(never, std::chrono::steady_clock::now() + std::chrono::seconds(30));
  t.join();
  ASSERT_TRUE(got.ok());
  ASSERT_TRUE(got->has_value());
  EXPECT_EQ((*got)->result().run_id(), 7u);
  // A failure or a cancellation wins over the deadline as over a wait.
  inbox.Fail(absl::AbortedError("reset"));
  EXPECT_EQ(inbox.NextUntil(never, std::chrono::steady_clock::now()).status().code(),
            absl::StatusCode::kAborted);
}

TEST(SessionInbox, WaitingCanIgnoreTheOutcomesOfDroppedRuns) {
  SessionInbox inbox;
  const auto dropped = [](uint64_t id) { return id == 5 || id == 6; };
  EXPECT_FALSE(inbox.Waiting(dropped));
  v1::ResultsDownstream r5, t6, r8;
  r5.mutable_result()->set_run_id(5);
  t6.mutable_tombstone()->set_run_id(6);
  r8.mutable_result()->set_run_id(8);
  inbox.Deliver(r5);
  inbox.Deliver(t6);
  EXPECT_TRUE(inbox.Waiting());  // the plain form counts everything
  EXPECT_FALSE(inbox.Waiting(dropped));
  EXPECT_TRUE(inbox.Waiting([](uint64_t id) { return id == 5; }));  // the tombstone of 6 counts
  inbox.Deliver(r8);                                                // behind the ignored ones
  EXPECT_TRUE(inbox.Waiting(dropped));
  // Nothing was consumed: they come out in order.
  for (uint64_t want : {5u, 6u, 8u}) {
    auto got = inbox.Next([] { return false; });
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(got->has_result() ? got->result().run_id() : got->tombstone().run_id(), want);
  }
  // A failure always counts.
  inbox.Fail(absl::AbortedError("reset"));
  EXPECT_TRUE(inbox.Waiting([](uint64_t) { return true; }));
}

}  // namespace
}  // namespace pipeinfer::draft_server
