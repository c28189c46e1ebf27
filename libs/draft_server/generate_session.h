// One Generate call's session: a spec::Controller (plain, sync or pipeinfer) driving its runs
// through the shared pipeline link. The controller prefills in chunks of max_run_tokens, then
// verifies outcomes, commits, cancels and launches runs; in pipeinfer mode the session also lets
// it draft micro-batches whenever no outcome is waiting (the link's results reader keeps receiving
// meanwhile). Runs of different sessions interleave in the one stream. No gRPC: the session talks
// to the pipeline through a SessionLink and to its caller through a SessionCaller. Private to the
// draft_server library.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "draft_server/draft_metrics.h"
#include "draft_server/draft_model.h"
#include "draft_server/request_validation.h"
#include "draft_server/session_link.h"
#include "draft_server/trace_hub.h"
#include "pipeinfer/v1/draft.pb.h"
#include "spec/controller.h"
#include "spec/spec_budget.h"

namespace pipeinfer::draft_server {

// What every session shares; owned by the service.
struct SessionEnv {
  const ServedPipeline* pipeline = nullptr;
  DraftModel* draft_model = nullptr;  // null: plain mode only (validation refuses the others)
  DraftMetrics* metrics = nullptr;
  spec::SpecBudget* budget = nullptr;  // the pipeline-wide speculation budget; null: none
  // The dynamic token tree's acceptance counts, shared by the service's requests; null: none.
  spec::SharedAcceptance* acceptance = nullptr;
  // Run tracing for live views; null: none.
  TraceHub* trace = nullptr;
};

// The session's caller (the Generate stream).
struct SessionCaller {
  // Writes one event; false when the caller went away.
  std::function<bool(const v1::GenerateResponse&)> write;
  // True once the caller cancelled (polled while waiting for outcomes).
  std::function<bool()> cancelled;
};

class GenerateSession {
 public:
  using Steady = std::chrono::steady_clock;

  // `link` is the session's pipeline session (its id is the session id everywhere); `on_close` is
  // called when the session has left the pipeline, before its last event is written, so that its
  // admission slot is free by the time the caller sees the end. `t_start`: when the call arrived.
  GenerateSession(const SessionEnv& env, const v1::GenerateRequest& req, ValidatedRequest request,
                  SessionLink* link, std::function<void()> on_close, Steady::time_point t_start);
  ~GenerateSession();
  GenerateSession(const GenerateSession&) = delete;
  GenerateSession& operator=(const GenerateSession&) = delete;

  // Runs the request to its end: token batches as they are committed, then a Finished event (or,
  // once tokens were sent, an in-band error event before the error status). Returns the call's
  // status (CANCELLED when the caller cancelled or went away).
  absl::Status Run(const SessionCaller& caller);

  // After Run: tokens streamed, and the controller's counters.
  uint32_t completion_tokens() const { return completion_; }
  const spec::Counters& counters() const { return ctl_->counters(); }

 private:
  class Sink;

  // SessionOpen on every stage (with the result reduction the sampling needs), then the prefill.
  absl::Status Open();
  // Outcomes -> verification -> committed tokens, until the controller finishes.
  absl::Status Decode(const SessionCaller& caller);
  // Streams newly committed tokens with the running counters.
  absl::Status Stream(const std::vector<int32_t>& tokens,
                      const std::vector<spec::TokenLogprob>& logprobs, const SessionCaller& caller);
  // Cancels what is still in flight, closes the session on the stages, adds up the counters.
  v1::SpecCounters Close();
  // Budget bookkeeping: an outcome arrived (its run leaves the in-flight count; its stage timings
  // feed the cost model; the controller's acceptance since the last call feeds alpha); and its
  // trace event while someone listens.
  void Account(const v1::ResultsDownstream& raw);
  void Trace(const v1::ResultsDownstream& raw, uint64_t run_id, uint32_t accepted);
  absl::Status Fail(const absl::Status& st, const SessionCaller& caller);
  absl::Status Finish(const v1::SpecCounters& counters, const SessionCaller& caller);

  const SessionEnv& env_;
  const v1::GenerateRequest& req_;
  const ValidatedRequest request_;
  SessionLink& link_;
  std::function<void()> on_close_;
  std::unique_ptr<SessionDrafter> drafter_;  // null in plain mode
  std::unique_ptr<Sink> sink_;
  std::unique_ptr<spec::Controller> ctl_;

  uint32_t completion_ = 0;                        // tokens streamed
  uint64_t drafted_seen_ = 0, accepted_seen_ = 0;  // controller counters already reported
  uint64_t traced_accepted_ = 0;                   // accepted tokens already accounted
  Steady::time_point t_start_, t_open_, t_prefill_, t_first_, t_last_;
};

}  // namespace pipeinfer::draft_server
