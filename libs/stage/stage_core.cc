#include "stage/stage_core.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/kernels.h"
#include "metrics/metrics.h"
#include "pipeinfer/v1/stage.pb.h"

namespace pipeinfer::stage {
namespace {

constexpr int32_t kAllValid = INT32_MAX;

v1::StatusCode ToProtoCode(absl::StatusCode c) { return static_cast<v1::StatusCode>(c); }

bool Retryable(absl::StatusCode c) {
  return c == absl::StatusCode::kUnavailable || c == absl::StatusCode::kResourceExhausted ||
         c == absl::StatusCode::kAborted;
}

// Decodes a hidden-state tensor into floats.
absl::Status DecodeHidden(const v1::Tensor& t, int64_t n_tokens, int64_t n_embd,
                          std::vector<float>* out) {
  if (t.shape_size() != 2 || t.shape(0) != n_tokens || t.shape(1) != n_embd) {
    return absl::InvalidArgumentError(
        absl::StrCat("hidden tensor must have shape [", n_tokens, ", ", n_embd, "]"));
  }
  const int64_t n = n_tokens * n_embd;
  out->resize(n);
  const std::string& d = t.data();
  switch (t.dtype()) {
    case v1::DTYPE_F32:
      if (static_cast<int64_t>(d.size()) != n * 4) break;
      std::memcpy(out->data(), d.data(), n * 4);
      return absl::OkStatus();
    case v1::DTYPE_F16:
    case v1::DTYPE_BF16: {
      if (static_cast<int64_t>(d.size()) != n * 2) break;
      std::vector<uint16_t> h(n);
      std::memcpy(h.data(), d.data(), n * 2);
      if (t.dtype() == v1::DTYPE_F16) {
        kernels::HalfToFloatN(h.data(), out->data(), n);
      } else {
        for (int64_t i = 0; i < n; ++i) (*out)[i] = kernels::BF16ToFloat(h[i]);
      }
      return absl::OkStatus();
    }
    default:
      return absl::InvalidArgumentError("hidden tensor has no supported dtype");
  }
  return absl::InvalidArgumentError(
      absl::StrCat("hidden tensor holds ", d.size(), " bytes, which does not match its shape"));
}

void EncodeHidden(const std::vector<float>& h, int64_t n_tokens, int64_t n_embd, int dtype,
                  v1::Tensor* t) {
  t->set_dtype(static_cast<v1::DType>(dtype));
  t->add_shape(static_cast<uint32_t>(n_tokens));
  t->add_shape(static_cast<uint32_t>(n_embd));
  const int64_t n = n_tokens * n_embd;
  if (dtype == v1::DTYPE_F16) {
    std::vector<uint16_t> half(n);
    kernels::FloatToHalfN(h.data(), half.data(), n);
    t->set_data(half.data(), n * 2);
  } else if (dtype == v1::DTYPE_BF16) {
    std::vector<uint16_t> b(n);
    for (int64_t i = 0; i < n; ++i) {
      uint32_t bits;
      std::memcpy(&bits, &h[i], 4);
      bits += 0x7fff + ((bits >> 16) & 1);  // round to nearest even
      b[i] = static_cast<uint16_t>(bits >> 16);
    }
    t->set_data(b.data(), n * 2);
  } else {
    t->set_data(h.data(), n * 4);
  }
}

// SPARSE reduction as specified in common.proto (ResultSpec): candidates = the highest raw logits
// (bounded), optionally filtered by top-k / top-p / min-p on full-vocabulary temperature-1
// probabilities, then re-weighted by softmax(logit / temperature) over the survivors.
void SparseRow(const float* logits, int64_t n_vocab, const v1::ResultSpec& spec, uint32_t cap,
               v1::SparseRow* out) {
  double m = logits[0];
  for (int64_t i = 1; i < n_vocab; ++i) m = std::max<double>(m, logits[i]);
  double z = 0;
  for (int64_t i = 0; i < n_vocab; ++i) z += std::exp(static_cast<double>(logits[i]) - m);
  const double log_z = m + std::log(z);
  uint32_t bound = spec.max_candidates();
  if (bound == 0)
    bound = spec.has_filter() && spec.filter().top_k() > 0 ? spec.filter().top_k() : cap;
  bound = static_cast<uint32_t>(std::min<int64_t>(std::max<uint32_t>(bound, 1), n_vocab));
  std::vector<int32_t> ids(n_vocab);
  for (int64_t i = 0; i < n_vocab; ++i) ids[i] = static_cast<int32_t>(i);
  auto by_logit = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  std::partial_sort(ids.begin(), ids.begin() + bound, ids.end(), by_logit);
  ids.resize(bound);
  std::vector<double> probs;
  if (spec.has_filter()) {
    const v1::LogitsFilter& f = spec.filter();
    if (f.top_k() > 0 && f.top_k() < ids.size()) ids.resize(f.top_k());
    if (f.top_p() > 0 && f.top_p() < 1) {
      double cum = 0;
      size_t keep = 0;
      while (keep < ids.size() && cum < f.top_p()) cum += std::exp(logits[ids[keep++]] - log_z);
      ids.resize(std::max<size_t>(keep, 1));
    }
    if (f.min_p() > 0) {
      const double floor = f.min_p() * std::exp(logits[ids[0]] - log_z);
      size_t keep = 1;
      while (keep < ids.size() && std::exp(logits[ids[keep]] - log_z) >= floor) ++keep;
      ids.resize(keep);
    }
    if (f.temperature() <= 0) {
      ids.resize(1);
      probs = {1.0};
    } else {
      double zt = 0;
      for (int32_t id : ids) zt += std::exp((logits[id] - logits[ids[0]]) / f.temperature());
      for (int32_t id : ids)
        probs.push_back(std::exp((logits[id] - logits[ids[0]]) / f.temperature()) / zt);
    }
  } else {
    for (int32_t id : ids) probs.push_back(std::exp(logits[id] - log_z));
  }
  // Survivors are already in descending logit order, hence descending probability.
  for (size_t i = 0; i < ids.size(); ++i) {
    out->add_token_ids(static_cast<uint32_t>(ids[i]));
    out->add_probs(static_cast<float>(probs[i]));
    if (spec.include_logits()) out->add_logits(logits[ids[i]]);
  }
  if (spec.include_logits()) out->set_log_z(static_cast<float>(log_z));
}

void ReduceRow(const float* logits, int64_t n_vocab, int kind, v1::ResultRow* row) {
  if (kind == v1::RESULT_KIND_FULL) {
    row->mutable_full()->set_logits_f32(logits, n_vocab * 4);
    return;
  }
  const int64_t best = std::max_element(logits, logits + n_vocab) - logits;
  double z = 0;
  for (int64_t i = 0; i < n_vocab; ++i)
    z += std::exp(static_cast<double>(logits[i] - logits[best]));
  auto* a = row->mutable_argmax();
  a->set_token_id(static_cast<uint32_t>(best));
  a->set_logit(logits[best]);
  a->set_prob(static_cast<float>(1.0 / z));
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
    metrics_ =
        std::make_shared<metrics::Metrics>(absl::StrCat("stage", config_.stage_index), "stage");
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
  m_.compute_seconds =
      &m.Counter("compute_seconds_total", "Time spent in forward passes of computed runs");
  m_.forward_seconds =
      &m.Histogram("forward_seconds", "Forward pass time of one computed run on this stage",
                   metrics::LatencyBuckets());
  m_.kv_blocks_in_use = &m.Gauge("kv_blocks_in_use", "KV cache blocks referenced");
  m_.kv_blocks_capacity = &m.Gauge("kv_blocks_capacity", "KV cache capacity in blocks");
  m_.sessions_open = &m.Gauge("sessions_open", "Sessions open on this stage");
  UpdateKvGauges();
}

StageCore::~StageCore() = default;

void StageCore::Cancel(const std::vector<uint64_t>& run_ids) {
  std::lock_guard<std::mutex> l(cancel_mu_);
  cancelled_.insert(run_ids.begin(), run_ids.end());
}

bool StageCore::IsCancelled(uint64_t run_id) const {
  std::lock_guard<std::mutex> l(cancel_mu_);
  return cancelled_.count(run_id) > 0;
}

void StageCore::ForgetCancelledUpTo(uint64_t run_id) {
  // Run ids increase along the stream: ids at or below a dequeued run can never match again.
  std::lock_guard<std::mutex> l(cancel_mu_);
  cancelled_.erase(cancelled_.begin(), cancelled_.upper_bound(run_id));
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

void StageCore::EmitTombstone(const v1::StageDownstream& original, int reason, StageOutput& out) {
  v1::Tombstone t;
  if (original.has_run()) {
    const v1::Run& r = original.run();
    t.set_run_id(r.run_id());
    t.set_session_id(r.session_id());
    t.set_kind(r.kind());
    t.set_partition(r.partition());
    if (r.has_fork()) *t.mutable_fork() = r.fork();
    t.set_n_tokens(static_cast<uint32_t>(r.token_ids_size()));
    t.set_reason(static_cast<v1::TombstoneReason>(reason));
    t.set_stage_index(config_.stage_index);
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

absl::Status StageCore::ApplyFork(uint64_t sid, Session& s, uint32_t part, uint32_t src,
                                  uint32_t src_branch, uint32_t n_positions) {
  if (part == 0) return absl::InvalidArgumentError("fork into partition 0 (canonical)");
  if (s.parts.count(part)) {
    return absl::AlreadyExistsError(absl::StrCat("partition ", part, " is already live"));
  }
  if (n_positions >= s.max_context) {
    return absl::OutOfRangeError(absl::StrCat(
        "fork of ", n_positions, " positions reaches the session's context ", s.max_context));
  }
  kv::KvCache& kv = engine_->kv();
  PI_ASSIGN_OR_RETURN(const kv::Sequence* from, kv.Get(sid, src));
  int32_t leaf = -1;
  int32_t available = from->size();
  int32_t src_valid = s.canonical_valid;
  if (src != 0) {
    auto it = s.parts.find(src);
    if (it == s.parts.end()) {
      return absl::FailedPreconditionError(
          absl::StrCat("fork source partition ", src, " is not live"));
    }
    const Partition& p = it->second;
    src_valid = p.valid_len;
    if (p.written && p.valid_len != kAllValid) {
      available = p.prefix_len;  // its run was skipped: only the prefix is real
    } else if (p.written) {
      auto b = p.branch_leaf.find(src_branch);
      if (b == p.branch_leaf.end()) {
        return absl::FailedPreconditionError(
            absl::StrCat("partition ", src, " has no branch ", src_branch));
      }
      leaf = b->second;
      available = from->position[leaf] + 1;
    }
  } else if (src_branch != 0) {
    return absl::InvalidArgumentError("canonical has only branch 0");
  }
  if (static_cast<int32_t>(n_positions) > available && (src == 0 || src_valid == kAllValid)) {
    return absl::OutOfRangeError(
        absl::StrCat("fork of ", n_positions, " positions from a path of ", available));
  }
  const int32_t copied = std::min<int32_t>(n_positions, available);
  PI_RETURN_IF_ERROR(kv.Fork(sid, part, src, leaf, copied));
  if (static_cast<int32_t>(n_positions) > copied) {
    // Positions beyond a skipped run's prefix: placeholders, poisoned.
    std::vector<int32_t> chain(n_positions - copied);
    for (size_t i = 0; i < chain.size(); ++i) chain[i] = static_cast<int32_t>(i) - 1;
    auto st = kv.Append(sid, part, chain);
    if (!st.ok()) {
      (void)kv.Release(sid, part);
      return st.status();
    }
  }
  Partition p;
  p.prefix_len = static_cast<int32_t>(n_positions);
  p.valid_len =
      std::min<int32_t>(src_valid == kAllValid ? copied : std::min(src_valid, copied), copied);
  if (p.valid_len == p.prefix_len) p.valid_len = kAllValid;  // prefix fully valid
  s.parts[part] = p;
  return absl::OkStatus();
}

absl::Status StageCore::PoisonRun(uint64_t sid, Session& s, int kind, uint32_t part,
                                  uint32_t n_tokens) {
  if (kind == v1::RUN_KIND_PLAIN) {
    std::vector<int32_t> chain(n_tokens);
    for (uint32_t i = 0; i < n_tokens; ++i) chain[i] = static_cast<int32_t>(i) - 1;
    const int32_t before = engine_->kv().Find(sid, 0)->size();
    PI_RETURN_IF_ERROR(engine_->kv().Append(sid, 0, chain).status());
    s.canonical_valid = std::min(s.canonical_valid, before);
    return absl::OkStatus();
  }
  auto it = s.parts.find(part);
  if (it == s.parts.end()) {
    return absl::FailedPreconditionError(absl::StrCat("partition ", part, " is not live"));
  }
  it->second.written = true;
  it->second.valid_len = std::min(it->second.valid_len, it->second.prefix_len);
  return absl::OkStatus();
}

StageOutput StageCore::Handle(const v1::StageDownstream& msg) {
  StageOutput out = HandleMessage(msg);
  UpdateKvGauges();
  return out;
}

StageOutput StageCore::HandleMessage(const v1::StageDownstream& msg) {
  StageOutput out;
  switch (msg.msg_case()) {
    case v1::StageDownstream::kSessionOpen: {
      const auto& o = msg.session_open();
      const uint64_t sid = o.session_id();
      absl::Status st;
      if (sid == 0) {
        st = absl::InvalidArgumentError("session id 0");
      } else if (sessions_.count(sid)) {
        st = absl::AlreadyExistsError(absl::StrCat("session ", sid, " is already open"));
      } else if (o.max_context() == 0 ||
                 o.max_context() > static_cast<uint32_t>(engine_->max_context())) {
        st = absl::InvalidArgumentError(absl::StrCat("max_context ", o.max_context(),
                                                     " outside [1, ", engine_->max_context(), "]"));
      } else if (o.result().kind() == v1::RESULT_KIND_UNSPECIFIED) {
        st = absl::InvalidArgumentError("SessionOpen.result.kind is unspecified");
      }
      if (st.ok()) st = engine_->kv().OpenSession(sid);
      if (!st.ok()) {
        FailSession(sid, nullptr, st, 0, out);
        // Keep the stages downstream consistent: they get the same open and fail the same way.
      } else {
        Session s;
        s.max_context = o.max_context();
        s.request_id = o.request_id();
        s.result_kind = o.result().kind();
        s.max_candidates = o.result().max_candidates();
        s.result = std::make_shared<v1::ResultSpec>(o.result());
        sessions_[sid] = std::move(s);
      }
      Forward(msg, out);
      break;
    }
    case v1::StageDownstream::kSessionClose: {
      const uint64_t sid = msg.session_close().session_id();
      if (sessions_.erase(sid)) (void)engine_->kv().CloseSession(sid);
      Forward(msg, out);
      break;
    }
    case v1::StageDownstream::kRun:
      HandleRun(msg, out);
      break;
    case v1::StageDownstream::kTombstone:
      HandleTombstone(msg, out);
      break;
    case v1::StageDownstream::kKv:
      HandleKvOp(msg, out);
      Forward(msg, out);
      break;
    case v1::StageDownstream::kBarrier:
      if (engine_->model().is_last()) {
        auto r = std::make_unique<v1::ResultsDownstream>();
        *r->mutable_barrier() = msg.barrier();
        out.results.push_back(std::move(r));
      } else {
        Forward(msg, out);
      }
      break;
    default:
      // Unknown message kinds (a newer peer) are forwarded unchanged and otherwise ignored.
      Forward(msg, out);
      break;
  }
  return out;
}

void StageCore::HandleKvOp(const v1::StageDownstream& msg, StageOutput& out) {
  const v1::KvOp& op = msg.kv();
  const uint64_t sid = op.session_id();
  auto it = sessions_.find(sid);
  if (it == sessions_.end()) {
    FailSession(sid, nullptr,
                absl::FailedPreconditionError(absl::StrCat("KV op for unknown session ", sid)), 0,
                out);
    return;
  }
  Session& s = it->second;
  if (s.failed) return;
  kv::KvCache& kv = engine_->kv();
  absl::Status st;
  switch (op.op_case()) {
    case v1::KvOp::kFork:
      st = ApplyFork(sid, s, op.fork().partition(), op.fork().src_partition(),
                     op.fork().src_branch(), op.fork().n_positions());
      break;
    case v1::KvOp::kCommit: {
      const auto& c = op.commit();
      auto p = s.parts.find(c.partition());
      if (c.partition() == 0 || p == s.parts.end()) {
        st = absl::FailedPreconditionError(
            absl::StrCat("commit of partition ", c.partition(), " which is not live"));
        break;
      }
      int32_t leaf = -1;
      if (p->second.written && p->second.valid_len == kAllValid) {
        auto b = p->second.branch_leaf.find(c.branch());
        if (b == p->second.branch_leaf.end()) {
          st = absl::FailedPreconditionError(
              absl::StrCat("partition ", c.partition(), " has no branch ", c.branch()));
          break;
        }
        leaf = b->second;
      }
      if (c.n_positions() == 0) {
        st = absl::InvalidArgumentError("commit of 0 positions");
        break;
      }
      if (p->second.valid_len != kAllValid &&
          static_cast<int32_t>(c.n_positions()) > p->second.valid_len) {
        st = absl::FailedPreconditionError(absl::StrCat("commit of ", c.n_positions(),
                                                        " positions adopts poisoned positions (",
                                                        p->second.valid_len, " valid)"));
        break;
      }
      st = kv.Commit(sid, c.partition(), leaf, static_cast<int32_t>(c.n_positions()));
      if (st.ok()) {
        s.canonical_valid = static_cast<int32_t>(c.n_positions());
        if (c.release()) {
          st = kv.Release(sid, c.partition());
          s.parts.erase(c.partition());
        }
      }
      break;
    }
    case v1::KvOp::kRelease:
      for (uint32_t part : op.release().partitions()) {
        if (part == 0 || !s.parts.count(part)) {
          st = absl::FailedPreconditionError(
              absl::StrCat("release of partition ", part, " which is not live"));
          break;
        }
        st = kv.Release(sid, part);
        s.parts.erase(part);
        if (!st.ok()) break;
      }
      break;
    case v1::KvOp::kTruncate: {
      const int32_t n = static_cast<int32_t>(op.truncate().n_positions());
      if (n > kv.Find(sid, 0)->size()) {
        st = absl::OutOfRangeError(
            absl::StrCat("truncate to ", n, " beyond canonical length ", kv.Find(sid, 0)->size()));
        break;
      }
      st = kv.Commit(sid, 0, -1, n);
      s.canonical_valid = std::min(s.canonical_valid, n);
      break;
    }
    default:
      st = absl::InvalidArgumentError("KvOp without an operation");
  }
  if (!st.ok()) FailSession(sid, &s, st, 0, out);
}

void StageCore::HandleTombstone(const v1::StageDownstream& msg, StageOutput& out) {
  const v1::Tombstone& t = msg.tombstone();
  ForgetCancelledUpTo(t.run_id());
  auto it = sessions_.find(t.session_id());
  if (it != sessions_.end() && !it->second.failed) {
    Session& s = it->second;
    absl::Status st;
    if (t.has_fork()) {
      st = ApplyFork(t.session_id(), s, t.fork().partition(), t.fork().src_partition(),
                     t.fork().src_branch(), t.fork().n_positions());
    }
    if (st.ok()) st = PoisonRun(t.session_id(), s, t.kind(), t.partition(), t.n_tokens());
    if (!st.ok()) FailSession(t.session_id(), &s, st, t.run_id(), out);
  }
  EmitTombstone(msg, t.reason(), out);
}

void StageCore::HandleRun(const v1::StageDownstream& msg, StageOutput& out) {
  const v1::Run& run = msg.run();
  const uint64_t sid = run.session_id();
  const uint64_t rid = run.run_id();
  auto it = sessions_.find(sid);
  if (it == sessions_.end() || it->second.failed) {
    if (it == sessions_.end()) {
      FailSession(sid, nullptr,
                  absl::FailedPreconditionError(absl::StrCat("run for unknown session ", sid)), rid,
                  out);
    }
    ForgetCancelledUpTo(rid);
    EmitTombstone(msg, v1::TOMBSTONE_REASON_SESSION_FAILED, out);
    return;
  }
  Session& s = it->second;
  const int32_t n = run.token_ids_size();
  const bool plain = run.kind() == v1::RUN_KIND_PLAIN;
  const uint32_t part = run.partition();
  auto fail = [&](absl::Status st) {
    FailSession(sid, &s, std::move(st), rid, out);
    ForgetCancelledUpTo(rid);
    EmitTombstone(msg, v1::TOMBSTONE_REASON_SESSION_FAILED, out);
  };

  // Structure checks that do not depend on KV state.
  if (run.kind() != v1::RUN_KIND_PLAIN && run.kind() != v1::RUN_KIND_SPECULATIVE) {
    return fail(absl::InvalidArgumentError("run kind unspecified"));
  }
  if (n < 1 || n > static_cast<int32_t>(config_.max_run_tokens)) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("run has ", n, " tokens (allowed 1..", config_.max_run_tokens, ")")));
  }
  if (run.positions_size() != n || (run.parents_size() != 0 && run.parents_size() != n) ||
      (run.branches_size() != 0 && run.branches_size() != n)) {
    return fail(absl::InvalidArgumentError("run arrays must have one entry per token"));
  }
  if (plain && (part != 0 || run.has_fork())) {
    return fail(absl::InvalidArgumentError("a PLAIN run writes canonical (partition 0), no fork"));
  }
  if (!plain && part == 0) {
    return fail(absl::InvalidArgumentError("a SPECULATIVE run needs a non-zero partition"));
  }
  if (run.has_fork() && run.fork().partition() != part) {
    return fail(absl::InvalidArgumentError("Run.fork.partition must equal Run.partition"));
  }
  std::vector<int32_t> parents(n), branches(n, 0);
  for (int32_t i = 0; i < n; ++i) {
    parents[i] = run.parents_size() ? run.parents(i) : i - 1;
    if (run.branches_size()) branches[i] = static_cast<int32_t>(run.branches(i));
    if (parents[i] < -1 || parents[i] >= i) {
      return fail(
          absl::InvalidArgumentError(absl::StrCat("token ", i, " has parent ", parents[i])));
    }
    if (plain && (parents[i] != i - 1 || branches[i] != 0)) {
      return fail(absl::InvalidArgumentError("a PLAIN run must be a linear chain on branch 0"));
    }
  }
  for (int32_t i = 0; i < run.result_rows_size(); ++i) {
    if (run.result_rows(i) >= static_cast<uint32_t>(n) ||
        (i > 0 && run.result_rows(i) <= run.result_rows(i - 1))) {
      return fail(absl::InvalidArgumentError("result_rows must be increasing indices < n_tokens"));
    }
  }
  const auto& hp = engine_->model().hparams();
  for (uint32_t id : run.token_ids()) {
    if (id >= hp.n_vocab) {
      return fail(
          absl::InvalidArgumentError(absl::StrCat("token id ", id, " >= n_vocab ", hp.n_vocab)));
    }
  }

  // The embedded fork happens in order, even if the run is then skipped.
  if (run.has_fork()) {
    absl::Status st = ApplyFork(sid, s, part, run.fork().src_partition(), run.fork().src_branch(),
                                run.fork().n_positions());
    if (!st.ok()) return fail(st);
  }
  if (!plain) {
    auto p = s.parts.find(part);
    if (p == s.parts.end() || p->second.written) {
      return fail(absl::FailedPreconditionError(
          absl::StrCat("partition ", part, " is not live or was already written")));
    }
  }

  auto skip = [&](int reason) {
    absl::Status st = PoisonRun(sid, s, run.kind(), part, static_cast<uint32_t>(n));
    if (!st.ok()) FailSession(sid, &s, st, rid, out);
    ForgetCancelledUpTo(rid);
    EmitTombstone(msg, reason, out);
  };
  if (IsCancelled(rid)) {
    m_.runs_skipped->Increment();
    return skip(v1::TOMBSTONE_REASON_CANCELLED);
  }

  // Positions and poison.
  const kv::Sequence* seq = engine_->kv().Find(sid, part);
  const int32_t before = seq->size();
  const int32_t valid = plain ? s.canonical_valid : s.parts[part].valid_len;
  if (valid != kAllValid && valid < before) {
    m_.runs_dependency->Increment();
    return skip(v1::TOMBSTONE_REASON_DEPENDENCY);
  }
  const int32_t root = before == 0 ? 0 : seq->position.back() + 1;
  std::vector<int32_t> pos(n);
  std::map<int32_t, int32_t> last_of_branch;
  for (int32_t i = 0; i < n; ++i) {
    pos[i] = parents[i] < 0 ? root : pos[parents[i]] + 1;
    if (static_cast<int32_t>(run.positions(i)) != pos[i]) {
      return fail(absl::InvalidArgumentError(
          absl::StrCat("token ", i, " has position ", run.positions(i), ", expected ", pos[i])));
    }
    if (pos[i] >= static_cast<int32_t>(s.max_context)) {
      return fail(absl::OutOfRangeError(
          absl::StrCat("position ", pos[i], " reaches the session's context ", s.max_context)));
    }
    auto lb = last_of_branch.find(branches[i]);
    if (lb != last_of_branch.end() && parents[i] != lb->second) {
      return fail(absl::InvalidArgumentError(
          absl::StrCat("tokens of branch ", branches[i], " do not form a chain")));
    }
    last_of_branch[branches[i]] = i;
  }

  std::vector<float> hidden;
  if (!engine_->model().is_first()) {
    if (!run.has_hidden()) return fail(absl::InvalidArgumentError("run without hidden states"));
    absl::Status st = DecodeHidden(run.hidden(), n, hp.n_embd, &hidden);
    if (!st.ok()) return fail(st);
  }
  std::vector<int32_t> tokens(run.token_ids().begin(), run.token_ids().end());
  std::vector<int32_t> rows(run.result_rows().begin(), run.result_rows().end());
  engine::ForwardInput in;
  in.session = sid;
  in.partition = part;
  in.n_tokens = n;
  if (engine_->model().is_first()) {
    in.tokens = tokens;
  } else {
    in.hidden = hidden;
  }
  in.parents = parents;
  if (engine_->model().is_last()) in.output_rows = rows;
  in.cancelled = [this, rid] { return IsCancelled(rid); };
  const auto t0 = std::chrono::steady_clock::now();
  auto res = engine_->Forward(in);
  if (res.ok() && !res->stopped && (config_.emulate_run_us > 0 || config_.emulate_token_us > 0)) {
    const auto until =
        t0 + std::chrono::microseconds(config_.emulate_run_us +
                                       static_cast<uint64_t>(config_.emulate_token_us) * n);
    while (std::chrono::steady_clock::now() < until) {
      if (IsCancelled(rid)) {
        res->stopped = true;
        break;
      }
      std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(
          std::chrono::microseconds(200), until - std::chrono::steady_clock::now()));
    }
  }
  const uint64_t us = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0)
          .count());
  if (!res.ok()) return fail(res.status());
  if (res->stopped) {
    // Slots were appended; what they hold is incomplete: poisoned.
    if (plain) {
      s.canonical_valid = std::min(s.canonical_valid, before);
    } else {
      s.parts[part].written = true;
      s.parts[part].valid_len = std::min(s.parts[part].valid_len, s.parts[part].prefix_len);
    }
    m_.runs_stopped->Increment();
    ForgetCancelledUpTo(rid);
    EmitTombstone(msg, v1::TOMBSTONE_REASON_CANCELLED, out);
    return;
  }
  if (plain) {
    if (s.canonical_valid == before) s.canonical_valid = before + n;
  } else {
    Partition& p = s.parts[part];
    p.written = true;
    for (int32_t i = 0; i < n; ++i) p.branch_leaf[branches[i]] = res->slots[i];
  }
  m_.runs_computed->Increment();
  m_.tokens_computed->Increment(static_cast<double>(n));
  m_.compute_seconds->Increment(static_cast<double>(us) * 1e-6);
  m_.forward_seconds->Observe(static_cast<double>(us) * 1e-6);
  ForgetCancelledUpTo(rid);

  v1::StageTiming timing;
  timing.set_stage_index(config_.stage_index);
  timing.set_compute_us(us);
  timing.set_batch_runs(1);
  if (engine_->model().is_last()) {
    auto r = std::make_unique<v1::ResultsDownstream>();
    v1::RunResult* rr = r->mutable_result();
    rr->set_run_id(rid);
    rr->set_session_id(sid);
    const v1::ResultSpec& spec =
        (run.has_result() && run.result().kind() != v1::RESULT_KIND_UNSPECIFIED) ? run.result()
                                                                                 : *s.result;
    for (size_t i = 0; i < rows.size(); ++i) {
      v1::ResultRow* row = rr->add_rows();
      row->set_index(static_cast<uint32_t>(rows[i]));
      const float* lg = res->logits.data() + i * hp.n_vocab;
      if (spec.kind() == v1::RESULT_KIND_SPARSE) {
        SparseRow(lg, hp.n_vocab, spec, config_.max_sparse_candidates, row->mutable_sparse());
      } else {
        ReduceRow(lg, hp.n_vocab, spec.kind(), row);
      }
    }
    *rr->mutable_trace() = run.trace();
    *rr->add_trace() = timing;
    out.results.push_back(std::move(r));
  } else {
    auto m = std::make_unique<v1::StageDownstream>();
    v1::Run* next = m->mutable_run();
    *next = run;
    next->clear_hidden();
    EncodeHidden(res->hidden, n, hp.n_embd, config_.hidden_dtype_out, next->mutable_hidden());
    *next->add_trace() = timing;
    out.forward.push_back(std::move(m));
  }
}

}  // namespace pipeinfer::stage
