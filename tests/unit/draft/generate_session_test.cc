// One Generate call's loop (generate_session.h) over a scripted SessionLink, without gRPC or
// processes: the last "stage" answers each run at once with the ARGMAX rows of a fixed next-token
// rule, so the stream, the Finished event, cancellation and a reset mid-stream can be checked
// directly. (Speculative modes need a draft model; tests/integration/draft covers them.)
#include "draft_server/generate_session.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <vector>

#include "draft_server/request_validation.h"

namespace pipeinfer::draft_server {
namespace {

constexpr uint32_t kVocab = 16;

int32_t Next(int32_t token) { return (token * 7 + 3) % static_cast<int32_t>(kVocab); }

class ScriptedLink final : public SessionLink {
 public:
  // Runs answered before the link goes quiet (then, with `fail`, the pipeline is reset).
  explicit ScriptedLink(int answers = 1 << 30, bool fail = false)
      : answers_(answers), fail_(fail) {}

  uint64_t id() const override { return 7; }
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
  uint64_t next_run_id_ = 1;
};

struct Call {
  std::vector<v1::GenerateResponse> events;
  absl::Status status;
  bool on_close = false;
};

Call Generate(ScriptedLink& link, int max_tokens, bool cancelled = false) {
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
  const SessionEnv env{&pipeline, nullptr, &metrics};
  Call call;
  GenerateSession session(
      env, req, *v, &link, [&call] { call.on_close = true; }, std::chrono::steady_clock::now());
  call.status = session.Run({[&call](const v1::GenerateResponse& ev) {
                               call.events.push_back(ev);
                               return true;
                             },
                             [cancelled] { return cancelled; }});
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

}  // namespace
}  // namespace pipeinfer::draft_server
