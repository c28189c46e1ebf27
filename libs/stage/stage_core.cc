#include "stage/stage_core.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/kernels.h"
#include "log/log.h"
#include "metrics/metrics.h"
#include "pipeinfer/v1/stage.pb.h"
#include "stage/stage_wire.h"

namespace pipeinfer::stage {
namespace {

v1::StatusCode ToProtoCode(absl::StatusCode c) { return static_cast<v1::StatusCode>(c); }

bool Retryable(absl::StatusCode c) {
  return c == absl::StatusCode::kUnavailable || c == absl::StatusCode::kResourceExhausted ||
         c == absl::StatusCode::kAborted;
}

}  // namespace

StageOutput::StageOutput() = default;
StageOutput::~StageOutput() = default;
StageOutput::StageOutput(StageOutput&&) noexcept = default;
StageOutput& StageOutput::operator=(StageOutput&&) noexcept = default;

StageCore::StageCore(std::unique_ptr<engine::Engine> engine, StageCoreConfig config,
                     std::shared_ptr<metrics::Metrics> metrics)
    : engine_(std::move(engine)), config_(std::move(config)), metrics_(std::move(metrics)) {
  if (!metrics_) {
    metrics_ = std::make_shared<metrics::Metrics>(
        absl::StrCat("stage", config_.stage_index), "stage",
        std::map<std::string, std::string>{{"stage", absl::StrCat(config_.stage_index)},
                                           {"model", config_.model_id}});
  }
  metrics::Metrics& m = *metrics_;
  m_.runs_computed = &m.Counter("runs_computed_total", "Runs computed completely");
  m_.runs_skipped =
      &m.Counter("runs_skipped_total", "Runs cancelled before compute (tombstoned at dequeue)");
  m_.runs_stopped =
      &m.Counter("runs_stopped_total", "Runs cancelled between layers (stopped early)");
  m_.runs_dependency = &m.Counter(
      "runs_dependency_total", "Runs skipped because they would read positions of a skipped run");
  m_.tombstones_forwarded =
      &m.Counter("tombstones_forwarded_total",
                 "Tombstones sent on (downstream, or to the controller by the last stage)");
  m_.tokens_computed = &m.Counter("tokens_computed_total", "Tokens of the runs computed");
  m_.session_errors = &m.Counter("session_errors_total", "Sessions failed by this stage");
  m_.compute_seconds = &m.Counter("compute_seconds_total",
                                  "Time spent in forward passes (emulation padding included)");
  m_.forward_passes =
      &m.Counter("forward_passes_total", "Forward passes computed (each holds one or more runs)");
  m_.kv_overruns = &m.Counter("kv_reservation_overruns_total",
                              "KV blocks a session allocated beyond its reservation");
  m_.forward_seconds = &m.Histogram(
      "forward_seconds", "Duration of one forward pass (all its runs)", metrics::LatencyBuckets());
  m_.batch_runs = &m.Histogram("batch_runs", "Runs per forward pass",
                               {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64});
  m_.batch_tokens = &m.Histogram("batch_tokens", "Tokens per forward pass",
                                 {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048});
  m_.kv_blocks_in_use = &m.Gauge("kv_blocks_in_use", "KV cache blocks referenced");
  m_.kv_blocks_capacity = &m.Gauge("kv_blocks_capacity", "KV cache capacity in blocks");
  m_.kv_blocks_reserved =
      &m.Gauge("kv_blocks_reserved", "KV cache blocks reserved by open sessions (used or not)");
  m_.sessions_open = &m.Gauge("sessions_open", "Sessions open on this stage");
  m.GaugeFamily("device_info", "Always 1; the device label names where the stage computes")
      .Add({{"device", engine_->DeviceDescription()}})
      .Set(1);
  UpdateKvGauges();
}

StageCore::~StageCore() = default;

void StageCore::Cancel(const std::vector<uint64_t>& run_ids) {
  {
    std::lock_guard<std::mutex> l(cancel_mu_);
    cancelled_.insert(run_ids.begin(), run_ids.end());
  }
  cancel_cv_.notify_all();
}

bool StageCore::IsCancelled(uint64_t run_id) const {
  std::lock_guard<std::mutex> l(cancel_mu_);
  return cancelled_.count(run_id) > 0;
}

void StageCore::ForgetCancelled(uint64_t run_id) {
  // Runs of different sessions may be taken out of id order, so marks are dropped one by one when
  // their run leaves. Marks for runs that already left (a cancel that arrived late) are never
  // matched; the oldest are dropped beyond a bound, since cancelling is best effort.
  constexpr size_t kMaxMarks = 1 << 16;
  std::lock_guard<std::mutex> l(cancel_mu_);
  cancelled_.erase(run_id);
  while (cancelled_.size() > kMaxMarks) cancelled_.erase(cancelled_.begin());
}

void StageCore::Reset() {
  for (auto& [sid, s] : sessions_) (void)engine_->kv().CloseSession(sid);
  sessions_.clear();
  UpdateKvGauges();
  std::lock_guard<std::mutex> l(cancel_mu_);
  cancelled_.clear();
}

void StageCore::UpdateKvGauges() {
  const kv::KvStats st = engine_->kv().Stats();
  m_.kv_blocks_in_use->Set(static_cast<double>(st.blocks_used));
  m_.kv_blocks_capacity->Set(static_cast<double>(st.blocks_total));
  m_.kv_blocks_reserved->Set(static_cast<double>(st.blocks_reserved));
  const double overruns = static_cast<double>(st.reservation_overruns);
  if (overruns > m_.kv_overruns->Value())
    m_.kv_overruns->Increment(overruns - m_.kv_overruns->Value());
  m_.sessions_open->Set(static_cast<double>(st.sessions));
}

StageCounters StageCore::counters() const {
  auto u = [](const prometheus::Counter* c) { return static_cast<uint64_t>(c->Value()); };
  StageCounters c;
  c.runs_computed = u(m_.runs_computed);
  c.runs_skipped = u(m_.runs_skipped);
  c.runs_stopped = u(m_.runs_stopped);
  c.runs_dependency = u(m_.runs_dependency);
  c.tombstones_forwarded = u(m_.tombstones_forwarded);
  c.tokens_computed = u(m_.tokens_computed);
  c.session_errors = u(m_.session_errors);
  c.compute_us = static_cast<uint64_t>(std::llround(m_.compute_seconds->Value() * 1e6));
  c.forward_passes = u(m_.forward_passes);
  return c;
}

void StageCore::FillInfo(v1::StageInfo* info) const {
  const auto& m = engine_->model();
  const auto& hp = m.hparams();
  info->set_stage_index(config_.stage_index);
  info->set_model_id(config_.model_id);
  info->set_layer_begin(m.spec().first_layer);
  info->set_layer_end(m.spec().last_layer);
  info->set_n_layer(hp.n_layer);
  info->set_n_embd(hp.n_embd);
  info->set_n_vocab(hp.n_vocab);
  info->set_n_ctx(static_cast<uint32_t>(engine_->max_context()));
  info->set_is_first(m.is_first());
  info->set_is_last(m.is_last());
  auto st = const_cast<engine::Engine&>(*engine_).kv().Stats();
  info->set_kv_block_size(engine_->options().kv_block_tokens);
  info->set_kv_blocks_total(st.blocks_total);
  info->set_kv_blocks_in_use(st.blocks_used);
  info->set_sessions_open(static_cast<uint32_t>(st.sessions));
  info->set_max_run_tokens(config_.max_run_tokens);
  info->set_max_batch_tokens(config_.max_batch_tokens);
  info->set_kv_blocks_reserved(static_cast<uint64_t>(st.blocks_reserved));
  if (!m.is_first()) {
    info->add_hidden_dtypes_in(v1::DTYPE_F32);
    info->add_hidden_dtypes_in(v1::DTYPE_F16);
    info->add_hidden_dtypes_in(v1::DTYPE_BF16);
  }
  if (!m.is_last()) info->set_hidden_dtype_out(static_cast<v1::DType>(config_.hidden_dtype_out));
  info->set_backend("cpu");
}

void StageCore::Forward(const v1::StageDownstream& msg, StageOutput& out) {
  if (engine_->model().is_last()) return;
  out.forward.push_back(std::make_unique<v1::StageDownstream>(msg));
}

void StageCore::FailSession(uint64_t sid, Session* s, absl::Status status, uint64_t run_id,
                            StageOutput& out) {
  if (s) s->failed = true;
  {
    const log::RequestScope scope(s ? s->request_id : std::string());
    log::Event(spdlog::level::warn, "session failed",
               {{"session", sid}, {"run", run_id}, {"error", status.ToString()}});
  }
  auto e = std::make_unique<v1::ErrorDetail>();
  e->set_code(ToProtoCode(status.code()));
  e->set_message(std::string(status.message()));
  e->set_retryable(Retryable(status.code()));
  e->set_origin(absl::StrCat("stage/", config_.stage_index));
  if (s) e->set_request_id(s->request_id);
  e->set_session_id(sid);
  e->set_run_id(run_id);
  e->set_stage_index(config_.stage_index);
  out.errors.push_back(std::move(e));
  m_.session_errors->Increment();
}

void StageCore::EmitTombstone(const v1::StageDownstream& original, int reason, StageOutput& out,
                              const v1::StageTiming* partial) {
  v1::Tombstone t;
  if (original.has_run()) {
    const v1::Run& r = original.run();
    t.set_run_id(r.run_id());
    t.set_session_id(r.session_id());
    t.set_kind(r.kind());
    t.set_partition(r.partition());
    if (r.has_fork()) *t.mutable_fork() = r.fork();
    t.set_n_tokens(static_cast<uint32_t>(r.token_ids_size()));
    if (r.anchors_size() > 0) {
      // A tree run: the stages downstream append its poisoned slots with the same shape.
      if (r.parents_size() > 0) {
        *t.mutable_parents() = r.parents();
      } else {
        for (int i = 0; i < r.token_ids_size(); ++i) t.add_parents(i - 1);
      }
      *t.mutable_anchors() = r.anchors();
    }
    t.set_reason(static_cast<v1::TombstoneReason>(reason));
    t.set_stage_index(config_.stage_index);
    *t.mutable_trace() = r.trace();  // the stages that computed it
    if (partial) *t.add_trace() = *partial;
  } else {
    t = original.tombstone();
  }
  m_.tombstones_forwarded->Increment();
  if (engine_->model().is_last()) {
    auto r = std::make_unique<v1::ResultsDownstream>();
    *r->mutable_tombstone() = t;
    out.results.push_back(std::move(r));
  } else {
    auto m = std::make_unique<v1::StageDownstream>();
    *m->mutable_tombstone() = t;
    out.forward.push_back(std::move(m));
  }
}

StageOutput StageCore::Handle(const v1::StageDownstream& msg) {
  std::deque<QueuedMessage> q;
  q.push_back({std::make_unique<v1::StageDownstream>(msg), std::chrono::steady_clock::now()});
  return Step(q);
}

}  // namespace pipeinfer::stage
