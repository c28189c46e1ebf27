// One Generate call's session: a spec::Controller (plain, sync or pipeinfer) driving its runs
// through the shared pipeline link. The controller prefills in chunks of max_run_tokens, then
// verifies outcomes, commits, cancels and launches runs; in pipeinfer mode the session also lets
// it draft micro-batches whenever no outcome is waiting (the link's results reader keeps receiving
// meanwhile). Runs of different sessions interleave in the one stream. No gRPC: the session talks
// to the pipeline through a SessionLink and to its caller through a SessionCaller. Private to the
// draft_server library.
//
// Crash recovery: when the session's pipeline epoch is lost (a stage or a link died), the session
// keeps the request. It drops its controller (runs in flight, partitions, draft state) but keeps
// the tokens it has streamed, waits for the link to come back (SessionEnv::reopen, at most
// `recovery` since the loss without new tokens), opens a new session on the new epoch and starts a
// fresh controller whose prompt is the original prompt followed by the streamed tokens and whose
// max_tokens is what is left; streaming goes on at the next index. Greedy output is identical to
// an undisturbed run (the stages compute each row independently of its batch, so the re-prefill
// reproduces the KV and the logits exactly). A sampled request restarts its sampler from the same
// seed after the recovery point: the output is still a sample of the target's distribution, but
// not the one the undisturbed run would have drawn. If the pipeline does not come back in time the
// request ends with UNAVAILABLE (retryable; an in-band error event when tokens were streamed).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
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
  // Crash recovery: opens a new session on the pipeline once it is back, waiting until `deadline`
  // (then UNAVAILABLE) or until `cancelled()` (then CANCELLED); UNAVAILABLE at once when the
  // service shuts down. Unset, or `recovery` 0: a lost epoch fails the request with UNAVAILABLE.
  std::function<absl::StatusOr<std::unique_ptr<SessionLink>>(
      std::chrono::steady_clock::time_point deadline, const std::function<bool()>& cancelled)>
      reopen;
  std::chrono::milliseconds recovery{30000};
  bool split_prefill = true;  // spec::ControllerOptions::split_prefill
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
  // Over every controller of the request (one more after each recovery).
  spec::Counters counters() const;
  uint32_t recoveries() const { return recoveries_; }

 private:
  class Sink;

  // SessionOpen on every stage (with the result reduction the sampling needs), then the prefill.
  // `prompt`: the request's prompt, after a recovery followed by the tokens streamed so far.
  absl::Status Open(const std::vector<int32_t>& prompt);
  // A fresh drafter, sink and controller on link_ (`generated` tokens already streamed).
  void NewController(uint32_t generated);
  // The failure `st` lost the pipeline epoch (not the request's own fault)?
  bool EpochLost(const absl::Status& st);
  // Leaves the lost epoch, waits for the pipeline and resumes on a new session (re-prefill).
  absl::Status Recover(const SessionCaller& caller);
  // Outcomes -> verification -> committed tokens, until the controller finishes.
  absl::Status Decode(const SessionCaller& caller);
  // Streams newly committed tokens with the running counters.
  absl::Status Stream(const std::vector<int32_t>& tokens,
                      const std::vector<spec::TokenLogprob>& logprobs, const SessionCaller& caller);
  // Cancels what is still in flight, closes the session on the stages, adds up the counters.
  v1::SpecCounters Close();
  // Leaves the session's (lost) epoch: unregisters it and folds its counters into prior_.
  void Abandon();
  // Budget bookkeeping: an outcome arrived (its run leaves the in-flight count; its stage timings
  // feed the cost model; the controller's acceptance since the last call feeds alpha); and its
  // trace event while someone listens.
  // One outcome: verified by the controller, accounted, its committed tokens streamed.
  absl::Status Handle(const v1::ResultsDownstream& raw, SessionInbox& inbox,
                      const SessionCaller& caller);
  void Account(const v1::ResultsDownstream& raw);
  void Trace(const v1::ResultsDownstream& raw, uint64_t run_id, uint32_t accepted);
  absl::Status Fail(const absl::Status& st, const SessionCaller& caller);
  absl::Status Finish(const v1::SpecCounters& counters, const SessionCaller& caller);

  const SessionEnv& env_;
  const v1::GenerateRequest& req_;
  const ValidatedRequest request_;
  SessionLink* link_;                        // the current leg's session
  std::unique_ptr<SessionLink> owned_link_;  // after a recovery: the session it opened
  std::function<void()> on_close_;
  std::unique_ptr<SessionDrafter> drafter_;  // null in plain mode
  std::unique_ptr<Sink> sink_;
  std::unique_ptr<spec::Controller> ctl_;

  uint32_t completion_ = 0;        // tokens streamed
  std::vector<int32_t> streamed_;  // their ids (the prompt of a recovery)
  spec::Counters prior_;           // of the controllers before a recovery
  uint64_t prior_closed_runs_ = 0;
  uint32_t recoveries_ = 0;
  bool abandoned_ = false;  // the current controller's epoch was left (Abandon)
  // While recovering: until when the pipeline may take to come back, and the completion count
  // the deadline was set at (new tokens since then give a later loss a fresh deadline).
  Steady::time_point recovery_deadline_;
  uint32_t recovery_progress_ = UINT32_MAX;
  uint64_t drafted_seen_ = 0, accepted_seen_ = 0;  // controller counters already reported
  uint64_t traced_accepted_ = 0;                   // accepted tokens already accounted
  Steady::time_point t_start_, t_open_, t_prefill_, t_first_, t_last_;
};

}  // namespace pipeinfer::draft_server
