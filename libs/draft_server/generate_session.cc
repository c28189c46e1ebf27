#include "draft_server/generate_session.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include "draft_server/pipeline_proto.h"
#include "draft_server/spec_proto.h"

namespace pipeinfer::draft_server {
namespace {

using Steady = std::chrono::steady_clock;

// How long a session whose run came back as an unexpected tombstone waits for the stage's
// ErrorDetail (on the Pipeline stream), which says why the run was skipped.
constexpr std::chrono::seconds kTombstoneReasonWait{2};

uint64_t MicrosBetween(Steady::time_point a, Steady::time_point b) {
  return b <= a ? 0
                : static_cast<uint64_t>(
                      std::chrono::duration_cast<std::chrono::microseconds>(b - a).count());
}

spec::ControllerOptions ControllerOptionsFor(const v1::GenerateRequest& req,
                                             const ValidatedRequest& v, const SessionEnv& env,
                                             uint32_t generated) {
  const ServedPipeline& pipeline = *env.pipeline;
  spec::ControllerOptions o;
  o.acceptance = env.acceptance;
  o.costs = env.budget;
  o.spec = v.spec;
  o.sampling = v.sampling;
  o.n_stages = pipeline.n_stages;
  o.max_run_tokens = pipeline.max_run_tokens;
  o.split_prefill = env.split_prefill;
  o.stop.ignore_eos = req.ignore_eos();
  for (uint32_t id : pipeline.eos_ids) o.stop.eos_ids.push_back(static_cast<int32_t>(id));
  for (uint32_t id : req.stop_token_ids()) o.stop.stop_ids.push_back(static_cast<int32_t>(id));
  o.stop.max_new_tokens = req.has_max_tokens() ? req.max_tokens() : UINT32_MAX;
  // After a recovery the tokens already streamed are part of the prompt.
  if (o.stop.max_new_tokens != UINT32_MAX)
    o.stop.max_new_tokens -= std::min(o.stop.max_new_tokens, generated);
  o.stop.max_context = v.max_context;
  o.logprobs = v.logprobs;
  return o;
}

}  // namespace

// The controller's way into the pipeline: its runs, KV operations and cancels, as this session's
// messages on the shared link.
class GenerateSession::Sink : public spec::PipelineSink {
 public:
  Sink(SessionLink* link, DraftMetrics* metrics, spec::SpecBudget* budget, TraceHub* trace)
      : link_(link), metrics_(metrics), budget_(budget), trace_(trace) {}
  ~Sink() override {
    // Runs whose outcome never came (the session ended): no longer in flight.
    for (const auto& [id, r] : in_flight_) Count(r, -1);
  }

  absl::StatusOr<uint64_t> SendRun(const spec::RunSpec& run) override {
    // Stamped before the message is queued: a stamp taken after Enqueue returns can be later than
    // the stage's arrival stamp when this thread is descheduled, which the trace's clock
    // alignment would read as the stage's clock running behind.
    const uint64_t sent_us = trace_ && trace_->active() ? UnixMicros() : 0;
    absl::StatusOr<uint64_t> id = link_->Enqueue(RunMessage(link_->id(), run));
    if (id.ok()) {
      metrics_->runs_launched_total->Increment();
      InFlight r{static_cast<int64_t>(run.tokens.size()), run.verified};
      r.sent_us = sent_us;
      in_flight_[*id] = r;
      Count(r, +1);
    }
    return id;
  }

  // What a traced run needs from its launch: kind, size, send time (0: not traced). False when the
  // run is unknown.
  bool Launch(uint64_t run_id, bool* speculative, uint32_t* tokens, uint64_t* sent_us) const {
    auto it = in_flight_.find(run_id);
    if (it == in_flight_.end()) return false;
    *speculative = !it->second.verified;
    *tokens = static_cast<uint32_t>(it->second.tokens);
    *sent_us = it->second.sent_us;
    return true;
  }

  // This session's tokens in flight.
  int64_t verified() const { return own_verified_; }
  int64_t speculative() const { return own_speculative_; }

  // The run's outcome arrived.
  void Done(uint64_t run_id) {
    auto it = in_flight_.find(run_id);
    if (it == in_flight_.end()) return;
    Count(it->second, -1);
    in_flight_.erase(it);
  }

  absl::Status SendKvOp(const spec::KvOpSpec& op) override {
    return link_->Enqueue(KvOpMessage(link_->id(), op)).status();
  }

  void Cancel(std::span<const uint64_t> ids) override { link_->SendCancel(ids); }

 private:
  struct InFlight {
    int64_t tokens = 0;
    bool verified = false;
    uint64_t sent_us = 0;  // tracing only
  };
  void Count(const InFlight& r, int sign) {
    (r.verified ? own_verified_ : own_speculative_) += sign * r.tokens;
    if (!budget_) return;
    if (r.verified) {
      budget_->AddVerified(sign * r.tokens);
    } else {
      budget_->AddSpeculative(sign * r.tokens);
    }
  }

  SessionLink* link_;
  DraftMetrics* metrics_;
  spec::SpecBudget* budget_;
  TraceHub* trace_;
  std::map<uint64_t, InFlight> in_flight_;
  int64_t own_verified_ = 0, own_speculative_ = 0;
};

GenerateSession::GenerateSession(const SessionEnv& env, const v1::GenerateRequest& req,
                                 ValidatedRequest request, SessionLink* link,
                                 std::function<void()> on_close, Steady::time_point t_start)
    : env_(env),
      req_(req),
      request_(std::move(request)),
      link_(link),
      on_close_(std::move(on_close)),
      t_start_(t_start),
      t_open_(Steady::now()) {
  if (env_.budget) env_.budget->AddSession(+1);
  NewController(0);
}

void GenerateSession::NewController(uint32_t generated) {
  ctl_.reset();  // it points at the sink and the drafter
  sink_.reset();
  drafter_.reset();
  if (request_.spec.mode != spec::Mode::kPlain) {
    drafter_ = std::make_unique<SessionDrafter>(env_.draft_model, link_->id());
    // An outcome wakes the session if it waits for a draft pass (set before anything is sent, so
    // before any delivery).
    DraftModel* model = env_.draft_model;
    link_->inbox().SetWaker([model] { model->Wake(); });
  }
  sink_ = std::make_unique<Sink>(link_, env_.metrics, env_.budget, env_.trace);
  abandoned_ = false;
  ctl_ = std::make_unique<spec::Controller>(ControllerOptionsFor(req_, request_, env_, generated),
                                            sink_.get(), drafter_.get());
}

spec::Counters GenerateSession::counters() const {
  spec::Counters c = prior_;
  if (abandoned_) return c;  // the current controller's counters are in prior_ already
  const spec::Counters& n = ctl_->counters();
  c.runs_plain += n.runs_plain;
  c.runs_speculative += n.runs_speculative;
  c.runs_invalidated += n.runs_invalidated;
  c.runs_cancelled += n.runs_cancelled;
  c.runs_tombstoned += n.runs_tombstoned;
  c.tokens_drafted += n.tokens_drafted;
  c.tokens_accepted += n.tokens_accepted;
  c.sibling_accepts += n.sibling_accepts;
  c.branch_accepts += n.branch_accepts;
  c.verifications += n.verifications;
  c.draft_failures += n.draft_failures;
  return c;
}

GenerateSession::~GenerateSession() {
  if (env_.budget) env_.budget->AddSession(-1);
}

absl::Status GenerateSession::Run(const SessionCaller& caller) {
  absl::Status st =
      Open(std::vector<int32_t>(req_.prompt_token_ids().begin(), req_.prompt_token_ids().end()));
  t_prefill_ = Steady::now();
  if (st.ok()) st = Decode(caller);
  // A lost epoch: resume on the next one, as often as the pipeline comes back in time (Recover
  // fails, ending the loop, when it does not).
  while (!st.ok() && EpochLost(st)) {
    if (st = Recover(caller); !abandoned_) {
      if (st.ok()) st = Decode(caller);
    } else {
      break;  // the pipeline did not come back (or the caller went away)
    }
  }
  const v1::SpecCounters counters = Close();
  if (!st.ok()) return Fail(st, caller);
  return Finish(counters, caller);
}

bool GenerateSession::EpochLost(const absl::Status& st) {
  if (absl::IsCancelled(st)) return false;
  if (!link_->lost()) {
    // A stage's error about the session may arrive just before its link ends (the stage saw its
    // neighbour die): give the link a moment to notice, for the codes a dying pipeline gives.
    if (!absl::IsUnavailable(st) && !absl::IsAborted(st)) return false;
    const auto until = Steady::now() + std::chrono::milliseconds(500);
    while (!link_->lost() && Steady::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!link_->lost()) return false;
  }
  return true;
}

void GenerateSession::Abandon() {
  if (abandoned_) return;
  prior_closed_runs_ += link_->Close(ctl_->OutstandingRunIds());
  const spec::Counters& c = ctl_->counters();
  env_.metrics->AddUp(c, std::string(spec::ModeName(ctl_->mode())));
  prior_ = counters();
  abandoned_ = true;
}

absl::Status GenerateSession::Recover(const SessionCaller& caller) {
  const auto t_lost = Steady::now();
  Abandon();
  if (!env_.reopen || env_.recovery.count() <= 0) {
    return absl::UnavailableError(
        "the pipeline was reset while the request was in flight (crash recovery is off); retry");
  }
  if (recovery_progress_ != completion_) {
    recovery_deadline_ = t_lost + env_.recovery;
    recovery_progress_ = completion_;
  }
  absl::StatusOr<std::unique_ptr<SessionLink>> fresh =
      env_.reopen(recovery_deadline_, caller.cancelled);
  if (!fresh.ok()) return fresh.status();
  // The old leg's objects go before its session does (the sink points at it).
  ctl_.reset();
  sink_.reset();
  drafter_.reset();
  owned_link_ = *std::move(fresh);
  link_ = owned_link_.get();
  NewController(completion_);
  ++recoveries_;
  const double waited = std::chrono::duration<double>(Steady::now() - t_lost).count();
  env_.metrics->recoveries_total->Increment();
  env_.metrics->recovery_seconds->Observe(waited);
  spdlog::warn(
      "pipeline lost mid-request; resumed on session {} after {:.3f} s ({} tokens streamed)",
      link_->id(), waited, completion_);
  std::vector<int32_t> prompt(req_.prompt_token_ids().begin(), req_.prompt_token_ids().end());
  prompt.insert(prompt.end(), streamed_.begin(), streamed_.end());
  return Open(prompt);
}

absl::Status GenerateSession::Open(const std::vector<int32_t>& prompt) {
  v1::StageDownstream open;
  auto* o = open.mutable_session_open();
  o->set_session_id(link_->id());
  o->set_request_id(req_.request_id());
  o->set_max_context(request_.max_context);
  // The reservation admission made room for (the stages reserve the same blocks).
  const KvDemand demand = KvDemandOf(request_, env_.pipeline->n_stages);
  o->set_kv_reserve_tokens(demand.reserve_tokens);
  o->set_max_partitions(demand.partitions);
  *o->mutable_result() = ResultSpecFor(request_.sampling, request_.logprobs >= 0);
  if (absl::Status st = link_->Enqueue(std::move(open)).status(); !st.ok()) return st;
  return ctl_->Start(prompt);
}

absl::Status GenerateSession::Decode(const SessionCaller& caller) {
  SessionInbox& inbox = link_->inbox();
  // A draft pass this session waits for is interrupted when an outcome arrives: handling results
  // never waits for drafting. Outcomes of runs the controller dropped (cancelled, after a miss
  // there are several) do not count: they change nothing, and they would interrupt the drafting of
  // the very run that replaces them.
  const auto result_waiting = [this, &inbox] {
    return inbox.Waiting([this](uint64_t run_id) { return ctl_->Dropped(run_id); });
  };
  if (drafter_) drafter_->SetInterrupt(result_waiting);
  // Drafting stops when an outcome is waiting (it is handled first) or when the pipeline-wide
  // budget has no room for another micro-batch.
  const uint32_t micro_batch =
      std::min(spec::EffectiveDraftMax(request_.spec), spec::kPaperDraftMax);
  const auto outcome_waiting = [this, &result_waiting, micro_batch] {
    return result_waiting() || (env_.budget && !env_.budget->Allows(micro_batch, sink_->verified(),
                                                                    sink_->speculative()));
  };
  while (!ctl_->finished()) {
    if (ctl_->mode() != spec::Mode::kPlain) {
      // Draft while the pipeline has room and nothing is waiting to be verified (sync: only
      // ahead of its first round).
      absl::StatusOr<int> launched = ctl_->Speculate(outcome_waiting);
      if (!launched.ok()) return launched.status();
    }
    // A run held back until stage 0 needs it (WakeAt): back to Speculate then, unless an outcome
    // comes first.
    absl::StatusOr<std::optional<v1::ResultsDownstream>> raw = inbox.NextUntil(
        caller.cancelled, ctl_->WakeAt().value_or(std::chrono::steady_clock::time_point::max()));
    if (!raw.ok()) return raw.status();
    if (!raw->has_value()) continue;
    if (absl::Status st = Handle(**raw, inbox, caller); !st.ok()) return st;
  }
  return absl::OkStatus();
}

absl::Status GenerateSession::Handle(const v1::ResultsDownstream& raw, SessionInbox& inbox,
                                     const SessionCaller& caller) {
  spec::Outcome out;
  if (absl::Status st = ToOutcome(raw, env_.pipeline->n_vocab, &out); !st.ok()) return st;
  absl::Status handled = ctl_->OnOutcome(out);
  Account(raw);
  if (!handled.ok()) {
    // A stage skipped a run the controller still needed; its ErrorDetail says why.
    if (out.tombstone) {
      if (std::optional<absl::Status> why = inbox.AwaitFailure(kTombstoneReasonWait)) return *why;
    }
    return handled;
  }
  const std::vector<int32_t> tokens = ctl_->TakeEmitted();
  return Stream(tokens, ctl_->TakeLogprobs(), caller);
}

void GenerateSession::Account(const v1::ResultsDownstream& raw) {
  const uint64_t run_id = raw.has_result() ? raw.result().run_id() : raw.tombstone().run_id();
  // The controller already verified this outcome: its acceptance counter moved by this run's.
  const uint64_t accepted = ctl_->counters().tokens_accepted;
  if (env_.trace && env_.trace->active()) {
    Trace(raw, run_id, static_cast<uint32_t>(accepted - traced_accepted_));
  }
  traced_accepted_ = accepted;
  sink_->Done(run_id);
  if (!env_.budget) return;
  if (raw.has_result()) {
    for (const v1::StageTiming& t : raw.result().trace()) {
      env_.budget->ObservePass(t.batch_tokens(), t.compute_us());
    }
  }
  const spec::Counters& c = ctl_->counters();
  env_.budget->ObserveAcceptance(c.tokens_drafted - drafted_seen_,
                                 c.tokens_accepted - accepted_seen_);
  drafted_seen_ = c.tokens_drafted;
  accepted_seen_ = c.tokens_accepted;
}

void GenerateSession::Trace(const v1::ResultsDownstream& raw, uint64_t run_id, uint32_t accepted) {
  v1::TraceEvent ev;
  bool speculative = false;
  uint32_t tokens = 0;
  uint64_t sent_us = 0;
  if (!sink_->Launch(run_id, &speculative, &tokens, &sent_us) || sent_us == 0) {
    return;  // launched before anyone listened
  }
  const uint64_t done_us = UnixMicros();
  ev.set_request_id(req_.request_id());
  ev.set_session_id(link_->id());
  ev.set_run_id(run_id);
  ev.set_speculative(speculative);
  ev.set_tokens(tokens);
  ev.set_sent_us(sent_us);
  ev.set_done_us(done_us);
  ev.set_drafted(speculative ? tokens : 0);
  ev.set_accepted(accepted);
  if (raw.has_result()) {
    ev.set_outcome(v1::TRACE_OUTCOME_COMPUTED);
    env_.trace->AlignSpans(raw.result().trace(), sent_us, done_us, &ev);
  } else {
    const v1::Tombstone& t = raw.tombstone();
    const bool stopped = t.trace_size() > 0 && t.trace(t.trace_size() - 1).stopped();
    if (!t.has_stage_index()) {
      ev.set_outcome(v1::TRACE_OUTCOME_CANCELLED);
    } else {
      ev.set_outcome(stopped ? v1::TRACE_OUTCOME_STOPPED : v1::TRACE_OUTCOME_SKIPPED);
      ev.set_outcome_stage(t.stage_index());
    }
    env_.trace->AlignSpans(t.trace(), sent_us, done_us, &ev);
  }
  env_.metrics->trace_events_total->Increment();
  env_.trace->Publish(ev);
}

absl::Status GenerateSession::Stream(const std::vector<int32_t>& tokens,
                                     const std::vector<spec::TokenLogprob>& logprobs,
                                     const SessionCaller& caller) {
  if (tokens.empty()) return absl::OkStatus();
  const auto now = Steady::now();
  if (completion_ == 0) t_first_ = now;
  t_last_ = now;
  v1::GenerateResponse ev;
  auto* batch = ev.mutable_tokens();
  for (int32_t t : tokens) batch->add_token_ids(static_cast<uint32_t>(t));
  if (request_.logprobs >= 0) {
    if (logprobs.size() != tokens.size()) {
      return absl::InternalError("the controller's log-probabilities do not match its tokens");
    }
    for (const spec::TokenLogprob& lp : logprobs) {
      v1::TokenLogprob* out = batch->add_logprobs();
      out->set_logprob(lp.logprob);
      for (int32_t id : lp.top_ids) out->add_top_token_ids(static_cast<uint32_t>(id));
      for (float x : lp.top_logprobs) out->add_top_logprobs(x);
    }
  }
  batch->set_index(completion_);
  *batch->mutable_counters() = ToSpecCounters(ctl_->mode(), counters());
  if (!caller.write(ev)) return absl::CancelledError("the caller went away");
  completion_ += static_cast<uint32_t>(tokens.size());
  streamed_.insert(streamed_.end(), tokens.begin(), tokens.end());
  env_.metrics->tokens_generated_total->Increment(static_cast<double>(tokens.size()));
  return absl::OkStatus();
}

v1::SpecCounters GenerateSession::Close() {
  // SessionClose is queued first: the stages free the session's reservation at that point of the
  // stream, so admission may only hand it to the next request after it.
  const uint64_t closed_runs =
      (abandoned_ ? 0 : link_->Close(ctl_->OutstandingRunIds())) + prior_closed_runs_;
  if (on_close_) on_close_();
  v1::SpecCounters counters = ToSpecCounters(ctl_->mode(), this->counters());
  counters.set_runs_cancelled(counters.runs_cancelled() + closed_runs);
  if (!abandoned_) {
    env_.metrics->AddUp(ctl_->counters(), std::string(spec::ModeName(ctl_->mode())));
  }
  drafter_.reset();  // frees the session's draft KV
  return counters;
}

absl::Status GenerateSession::Fail(const absl::Status& st, const SessionCaller& caller) {
  if (absl::IsCancelled(st) || completion_ == 0) return st;
  // The stream already carried data: an in-band error first.
  v1::GenerateResponse ev;
  auto* e = ev.mutable_error();
  e->set_code(static_cast<v1::StatusCode>(st.code()));
  e->set_message(std::string(st.message()));
  e->set_origin("draft");
  e->set_request_id(req_.request_id());
  e->set_session_id(link_->id());
  e->set_retryable(absl::IsUnavailable(st) || absl::IsResourceExhausted(st) || absl::IsAborted(st));
  caller.write(ev);
  return st;
}

absl::Status GenerateSession::Finish(const v1::SpecCounters& counters,
                                     const SessionCaller& caller) {
  const uint32_t prompt_len = static_cast<uint32_t>(req_.prompt_token_ids_size());
  v1::GenerateResponse ev;
  auto* f = ev.mutable_finished();
  f->set_finish_reason(ctl_->finish_reason() == spec::Finish::kStop ? v1::FINISH_REASON_STOP
                                                                    : v1::FINISH_REASON_LENGTH);
  f->mutable_usage()->set_prompt_tokens(prompt_len);
  f->mutable_usage()->set_completion_tokens(completion_);
  f->mutable_usage()->set_total_tokens(prompt_len + completion_);
  auto* tm = f->mutable_timings();
  tm->set_queue_us(MicrosBetween(t_start_, t_open_));
  tm->set_prefill_us(MicrosBetween(t_prefill_, t_first_));
  tm->set_ttft_us(MicrosBetween(t_start_, t_first_));
  tm->set_decode_us(MicrosBetween(t_first_, t_last_));
  tm->set_total_us(MicrosBetween(t_start_, Steady::now()));
  env_.metrics->request_seconds->Observe(static_cast<double>(tm->total_us()) * 1e-6);
  if (completion_ > 0) {
    env_.metrics->ttft_seconds->Observe(static_cast<double>(tm->ttft_us()) * 1e-6);
  }
  *f->mutable_counters() = counters;
  caller.write(ev);
  return absl::OkStatus();
}

}  // namespace pipeinfer::draft_server
