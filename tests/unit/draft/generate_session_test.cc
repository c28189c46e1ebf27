// One Generate call's loop (generate_session.h) over a scripted SessionLink, without gRPC or
// processes: the last "stage" answers each run at once with the ARGMAX rows of a fixed next-token
// rule, so the stream, the Finished event, cancellation and a reset mid-stream can be checked
// directly. (Speculative modes need a draft model; tests/integration/draft covers them.)
#include "draft_server/generate_session.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "draft_server/request_validation.h"

namespace pipeinfer::draft_server {
namespace {

constexpr uint32_t kVocab = 16;

int32_t Next(int32_t token) { return (token * 7 + 3) % static_cast<int32_t>(kVocab); }

class ScriptedLink final : public SessionLink {
 public:
  // Runs answered before the link goes quiet (then, with `fail`, the pipeline is reset).
  explicit ScriptedLink(int answers = 1 << 30, bool fail = false, uint64_t id = 7,
                        bool marks_lost = false)
      : answers_(answers), fail_(fail), id_(id), marks_lost_(marks_lost) {}

  uint64_t id() const override { return id_; }
  // With `marks_lost`: the reset is the pipeline's (the epoch is gone), as PipelineLink reports.
  bool lost() const override { return marks_lost_ && fail_ && answers_ == 0; }
  SessionInbox& inbox() override { return inbox_; }

  absl::StatusOr<uint64_t> Enqueue(v1::StageDownstream m) override {
    sent.push_back(m);
    if (!m.has_run()) return 0;
    const uint64_t run_id = next_run_id_++;
    if (answers_ == 0) {
      if (fail_) inbox_.Fail(absl::AbortedError("the pipeline was reset (test)"));
      return run_id;
    }
    --answers_;
    v1::ResultsDownstream out;
    v1::RunResult* r = out.mutable_result();
    r->set_session_id(id());
    r->set_run_id(run_id);
    for (uint32_t row : m.run().result_rows()) {
      r->add_rows()->mutable_argmax()->set_token_id(
          static_cast<uint32_t>(Next(static_cast<int32_t>(m.run().token_ids(row)))));
    }
    inbox_.Deliver(out);
    return run_id;
  }

  void SendCancel(std::span<const uint64_t> run_ids) override {
    cancelled.insert(cancelled.end(), run_ids.begin(), run_ids.end());
  }

  uint64_t Close(std::span<const uint64_t> outstanding) override {
    closed = true;
    closed_outstanding.assign(outstanding.begin(), outstanding.end());
    return outstanding.size();
  }

  std::vector<v1::StageDownstream> sent;
  std::vector<uint64_t> cancelled, closed_outstanding;
  bool closed = false;

 private:
  SessionInbox inbox_;
  int answers_;
  bool fail_;
  uint64_t id_;
  bool marks_lost_;
  uint64_t next_run_id_ = 1;
};

// A session the test keeps after the call (the GenerateSession owns the link it re-opens).
class Borrowed final : public SessionLink {
 public:
  explicit Borrowed(ScriptedLink* link) : link_(link) {}
  uint64_t id() const override { return link_->id(); }
  SessionInbox& inbox() override { return link_->inbox(); }
  absl::StatusOr<uint64_t> Enqueue(v1::StageDownstream m) override {
    return link_->Enqueue(std::move(m));
  }
  void SendCancel(std::span<const uint64_t> ids) override { link_->SendCancel(ids); }
  uint64_t Close(std::span<const uint64_t> outstanding) override {
    return link_->Close(outstanding);
  }
  bool lost() const override { return link_->lost(); }

 private:
  ScriptedLink* link_;
};

struct Call {
  std::vector<v1::GenerateResponse> events;
  absl::Status status;
  bool on_close = false;
  double recoveries_metric = 0;  // pipeinfer_draft_recoveries_total after the call
};

Call Generate(ScriptedLink& link, int max_tokens, bool cancelled = false,
              const std::function<void(SessionEnv&)>& setup = nullptr) {
  ServedPipeline pipeline;
  pipeline.model_id = "m";
  pipeline.n_stages = 1;
  pipeline.n_vocab = kVocab;
  pipeline.n_ctx = 64;
  pipeline.max_run_tokens = 4;
  v1::GenerateRequest req;
  req.set_request_id("r1");
  for (uint32_t t : {1u, 2u, 3u, 4u, 5u}) req.add_prompt_token_ids(t);
  req.set_max_tokens(static_cast<uint32_t>(max_tokens));
  req.mutable_sampling()->set_temperature(0.0f);
  spec::SpecParams defaults;
  defaults.mode = spec::Mode::kPlain;
  absl::StatusOr<ValidatedRequest> v = ValidateRequest(req, pipeline, defaults, false);
  EXPECT_TRUE(v.ok()) << v.status();

  DraftMetrics metrics;
  SessionEnv env;
  env.pipeline = &pipeline;
  env.metrics = &metrics;
  if (setup) setup(env);
  Call call;
  GenerateSession session(
      env, req, *v, &link, [&call] { call.on_close = true; }, std::chrono::steady_clock::now());
  call.status = session.Run({[&call](const v1::GenerateResponse& ev) {
                               call.events.push_back(ev);
                               return true;
                             },
                             [cancelled] { return cancelled; }});
  call.recoveries_metric = metrics.recoveries_total->Value();
  return call;
}

TEST(GenerateSession, PlainGreedyStreamsTheTargetsTokensThenFinished) {
  ScriptedLink link;
  const Call call = Generate(link, 6);
  ASSERT_TRUE(call.status.ok()) << call.status;
  std::vector<int32_t> want;
  for (int32_t t = 5; want.size() < 6;) want.push_back(t = Next(t));
  std::vector<int32_t> got;
  for (const auto& ev : call.events) {
    if (!ev.has_tokens()) continue;
    EXPECT_EQ(ev.tokens().index(), got.size());
    for (uint32_t t : ev.tokens().token_ids()) got.push_back(static_cast<int32_t>(t));
  }
  EXPECT_EQ(got, want);
  ASSERT_TRUE(call.events.back().has_finished());
  const v1::GenerateFinished& f = call.events.back().finished();
  EXPECT_EQ(f.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(f.usage().completion_tokens(), 6u);
  EXPECT_EQ(f.usage().prompt_tokens(), 5u);
  EXPECT_EQ(f.counters().mode(), v1::SPEC_MODE_PLAIN);
  EXPECT_TRUE(call.on_close);
  EXPECT_TRUE(link.closed);

  // SessionOpen first (ARGMAX rows for greedy), then the prefill in chunks of max_run_tokens.
  ASSERT_GE(link.sent.size(), 3u);
  ASSERT_TRUE(link.sent[0].has_session_open());
  EXPECT_EQ(link.sent[0].session_open().session_id(), 7u);
  EXPECT_EQ(link.sent[0].session_open().max_context(), 11u);
  EXPECT_EQ(link.sent[0].session_open().result().kind(), v1::RESULT_KIND_ARGMAX);
  EXPECT_EQ(link.sent[1].run().token_ids_size(), 4);
  EXPECT_EQ(link.sent[2].run().token_ids_size(), 1);
}

TEST(GenerateSession, CancelledCallerClosesWithTheRunsInFlight) {
  ScriptedLink link(/*answers=*/1);  // the first prefill chunk only
  const Call call = Generate(link, 6, /*cancelled=*/true);
  EXPECT_EQ(call.status.code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(call.events.empty());  // nothing streamed, no Finished
  EXPECT_TRUE(call.on_close);
  EXPECT_TRUE(link.closed);
  // Both prefill chunks: the first one's outcome arrived but was never handled.
  EXPECT_EQ(link.closed_outstanding, (std::vector<uint64_t>{1, 2}));
}

TEST(GenerateSession, AResetAfterTokensIsReportedInBand) {
  ScriptedLink link(/*answers=*/4, /*fail=*/true);  // 2 prefill chunks, 2 tokens, then a reset
  const Call call = Generate(link, 6);
  EXPECT_EQ(call.status.code(), absl::StatusCode::kAborted);
  ASSERT_FALSE(call.events.empty());
  const v1::GenerateResponse& last = call.events.back();
  ASSERT_TRUE(last.has_error());
  EXPECT_EQ(last.error().code(), v1::STATUS_CODE_ABORTED);
  EXPECT_TRUE(last.error().retryable());
  EXPECT_EQ(last.error().origin(), "draft");
  EXPECT_EQ(last.error().session_id(), 7u);
  EXPECT_TRUE(call.on_close);
}

// The tokens of a call's Tokens events, checking that each batch starts at the index after the
// previous one (nothing streamed twice, nothing skipped).
std::vector<int32_t> Streamed(const Call& call) {
  std::vector<int32_t> got;
  for (const auto& ev : call.events) {
    if (!ev.has_tokens()) continue;
    EXPECT_EQ(ev.tokens().index(), got.size());
    for (uint32_t t : ev.tokens().token_ids()) got.push_back(static_cast<int32_t>(t));
  }
  return got;
}

// Crash recovery: the epoch is lost after 4 answered runs (2 prefill chunks, then plain runs); the
// session re-opens on a new session (id 8), re-prefills prompt + the k tokens streamed so far, and
// streams the other 6 - k.
TEST(GenerateSession, ALostEpochResumesOnANewSession) {
  ScriptedLink first(/*answers=*/4, /*fail=*/true, /*id=*/7, /*marks_lost=*/true);
  ScriptedLink second_link(1 << 30, false, 8);
  ScriptedLink* second = nullptr;
  int reopened = 0;
  const Call call = Generate(first, 6, false, [&](SessionEnv& env) {
    env.recovery = std::chrono::seconds(5);
    env.reopen = [&](std::chrono::steady_clock::time_point,
                     const std::function<bool()>&) -> absl::StatusOr<std::unique_ptr<SessionLink>> {
      ++reopened;
      second = &second_link;
      return std::unique_ptr<SessionLink>(std::make_unique<Borrowed>(&second_link));
    };
  });
  ASSERT_TRUE(call.status.ok()) << call.status;
  EXPECT_EQ(reopened, 1);
  std::vector<int32_t> want;
  for (int32_t t = 5; want.size() < 6;) want.push_back(t = Next(t));
  EXPECT_EQ(Streamed(call), want);
  ASSERT_TRUE(call.events.back().has_finished());
  EXPECT_EQ(call.events.back().finished().usage().completion_tokens(), 6u);
  EXPECT_EQ(call.events.back().finished().usage().prompt_tokens(), 5u);
  EXPECT_TRUE(first.closed);
  ASSERT_NE(second, nullptr);
  EXPECT_TRUE(second->closed);
  // Tokens streamed before the loss: each plain run of the first session after its 2 prefill
  // chunks carried one committed token (the last one's outcome never came).
  size_t runs = 0;
  for (const auto& m : first.sent) runs += m.has_run() ? 1 : 0;
  ASSERT_GE(runs, 3u);
  const size_t k = runs - 2;
  ASSERT_LT(k, want.size());
  // The new session: SessionOpen with the same context, then prompt + the k streamed tokens.
  ASSERT_GE(second->sent.size(), 3u);
  ASSERT_TRUE(second->sent[0].has_session_open());
  EXPECT_EQ(second->sent[0].session_open().session_id(), 8u);
  EXPECT_EQ(second->sent[0].session_open().max_context(), 11u);
  std::vector<int32_t> prefill;
  for (size_t i = 1; i < second->sent.size() && prefill.size() < 5 + k; ++i) {
    for (uint32_t t : second->sent[i].run().token_ids()) prefill.push_back(static_cast<int32_t>(t));
  }
  std::vector<int32_t> want_prefill = {1, 2, 3, 4, 5};
  want_prefill.insert(want_prefill.end(), want.begin(), want.begin() + static_cast<long>(k));
  EXPECT_EQ(prefill, want_prefill);
  EXPECT_EQ(second->sent[1].run().token_ids_size(), 4);  // chunks of max_run_tokens
  EXPECT_EQ(call.recoveries_metric, 1.0);
  EXPECT_TRUE(call.on_close);
}

// The pipeline does not come back in time: UNAVAILABLE (retryable), in band after the tokens.
TEST(GenerateSession, APipelineThatStaysDownEndsWithUnavailable) {
  ScriptedLink first(/*answers=*/4, /*fail=*/true, /*id=*/7, /*marks_lost=*/true);
  const Call call = Generate(first, 6, false, [&](SessionEnv& env) {
    env.recovery = std::chrono::milliseconds(200);
    env.reopen = [](std::chrono::steady_clock::time_point deadline,
                    const std::function<bool()>&) -> absl::StatusOr<std::unique_ptr<SessionLink>> {
      std::this_thread::sleep_until(deadline);
      return absl::UnavailableError("the pipeline did not come back (test)");
    };
  });
  EXPECT_EQ(call.status.code(), absl::StatusCode::kUnavailable) << call.status;
  EXPECT_GE(Streamed(call).size(), 1u);
  EXPECT_LT(Streamed(call).size(), 6u);
  ASSERT_TRUE(call.events.back().has_error());
  EXPECT_EQ(call.events.back().error().code(), v1::STATUS_CODE_UNAVAILABLE);
  EXPECT_TRUE(call.events.back().error().retryable());
  EXPECT_TRUE(call.on_close);
}

// Without recovery (no reopen), a lost epoch is still a retryable UNAVAILABLE, not ABORTED.
TEST(GenerateSession, ALostEpochWithoutRecoveryIsUnavailable) {
  ScriptedLink first(/*answers=*/4, /*fail=*/true, /*id=*/7, /*marks_lost=*/true);
  const Call call = Generate(first, 6);
  EXPECT_EQ(call.status.code(), absl::StatusCode::kUnavailable) << call.status;
  ASSERT_TRUE(call.events.back().has_error());
  EXPECT_TRUE(call.events.back().error().retryable());
}

}  // namespace
}  // namespace pipeinfer::draft_server
