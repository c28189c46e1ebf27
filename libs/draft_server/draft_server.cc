#include "draft_server/draft_server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "draft_server/draft_model.h"
#include "metrics/metrics.h"
#include "pipeinfer/v1/draft.grpc.pb.h"
#include "pipeinfer/v1/stage.grpc.pb.h"
#include "rpc/server.h"
#include "sampling/sampling.h"
#include "spec/controller.h"

namespace pipeinfer::draft_server {
namespace {

using Clock = std::chrono::system_clock;
using Steady = std::chrono::steady_clock;
using PipeStream = grpc::ClientReaderWriter<v1::StageDownstream, v1::StageUpstream>;
using ResStream = grpc::ClientReaderWriter<v1::ResultsUpstream, v1::ResultsDownstream>;

constexpr const char kServiceName[] = "pipeinfer.v1.Draft";
// How often a waiting Generate handler checks whether its caller cancelled.
constexpr auto kPollInterval = std::chrono::milliseconds(20);

uint64_t MicrosBetween(Steady::time_point a, Steady::time_point b) {
  return b <= a ? 0
                : static_cast<uint64_t>(
                      std::chrono::duration_cast<std::chrono::microseconds>(b - a).count());
}

grpc::Status Err(grpc::StatusCode code, const std::string& message) {
  return grpc::Status(code, message);
}

grpc::Status StatusFromDetail(const v1::ErrorDetail& e) {
  auto code = static_cast<grpc::StatusCode>(e.code());
  if (code == grpc::StatusCode::OK) code = grpc::StatusCode::INTERNAL;
  const std::string origin = e.origin().empty() ? std::string("pipeline") : e.origin();
  return grpc::Status(code, absl::StrCat(origin, ": ", e.message()));
}

// One incarnation (epoch) of the pipeline: the Pipeline stream to stage 0 and the Results stream
// from the last stage, with their threads.
struct Link {
  uint64_t epoch = 0;
  std::unique_ptr<grpc::ClientContext> pctx, rctx;
  std::unique_ptr<PipeStream> pipe;
  std::unique_ptr<ResStream> res;

  std::mutex mu;  // guards the fields below (dead is also readable without it)
  std::condition_variable cv;
  int64_t credit = 0;
  bool got_credit = false;
  std::deque<v1::StageDownstream> out;  // waiting for credit
  uint64_t next_run_id = 1;
  std::atomic<bool> dead{false};
  std::string dead_reason;

  std::mutex res_write_mu;  // serializes writes on the Results stream
  std::thread sender, pipe_reader, res_reader;
};

// One Generate call's session on the pipeline.
struct Session {
  uint64_t id = 0;
  std::shared_ptr<Link> link;
  std::mutex mu;  // guards outcomes and failure
  std::condition_variable cv;
  std::deque<v1::ResultsDownstream> outcomes;
  std::optional<grpc::Status> failure;
};

void FailSession(Session& s, const grpc::Status& status) {
  {
    std::lock_guard<std::mutex> l(s.mu);
    if (!s.failure) s.failure = status;
  }
  s.cv.notify_all();
}

}  // namespace

class DraftServer::Impl final : public v1::Draft::Service {
 public:
  explicit Impl(DraftServerOptions options) : opt_(std::move(options)) {
    if (opt_.max_sessions == 0) opt_.max_sessions = 1;
  }

  ~Impl() override {
    Shutdown();
    if (server_) server_->Wait();
  }

  absl::Status Start() {
    if (opt_.stage0_address.empty() || opt_.last_address.empty()) {
      return absl::InvalidArgumentError("both the stage 0 and the last stage address are needed");
    }
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(static_cast<int>(opt_.max_message_bytes));
    args.SetMaxSendMessageSize(static_cast<int>(opt_.max_message_bytes));
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    ch0_ = grpc::CreateCustomChannel(opt_.stage0_address, grpc::InsecureChannelCredentials(), args);
    ch_last_ =
        grpc::CreateCustomChannel(opt_.last_address, grpc::InsecureChannelCredentials(), args);
    stub0_ = v1::Stage::NewStub(ch0_);
    stub_last_ = v1::Stage::NewStub(ch_last_);

    const auto deadline = Clock::now() + std::chrono::milliseconds(opt_.connect_timeout_ms);
    if (!ch0_->WaitForConnected(deadline)) {
      return absl::UnavailableError(
          absl::StrCat("cannot connect to stage 0 at ", opt_.stage0_address));
    }
    if (!ch_last_->WaitForConnected(deadline)) {
      return absl::UnavailableError(
          absl::StrCat("cannot connect to the last stage at ", opt_.last_address));
    }
    for (int i = 0; i < 2; ++i) {
      grpc::ClientContext ctx;
      ctx.set_deadline(Clock::now() + std::chrono::seconds(10));
      v1::StageInfoRequest req;
      auto& stub = i == 0 ? stub0_ : stub_last_;
      const std::string& addr = i == 0 ? opt_.stage0_address : opt_.last_address;
      grpc::Status st = stub->GetInfo(&ctx, req, i == 0 ? &info0_ : &info_last_);
      if (!st.ok()) {
        return absl::UnavailableError(
            absl::StrCat("Stage.GetInfo on ", addr, " failed: ", st.error_message()));
      }
    }
    if (info0_.stage_index() != 0 || !info0_.is_first()) {
      return absl::FailedPreconditionError(absl::StrCat(
          opt_.stage0_address, " is stage ", info0_.stage_index(), ", not the first stage"));
    }
    if (!info_last_.is_last()) {
      return absl::FailedPreconditionError(
          absl::StrCat(opt_.last_address, " is stage ", info_last_.stage_index(),
                       ", which does not hold the output head (it is not the last stage)"));
    }
    if (info0_.model_id() != info_last_.model_id() || info0_.n_vocab() != info_last_.n_vocab()) {
      return absl::FailedPreconditionError(
          absl::StrCat("stage 0 serves model '", info0_.model_id(), "' (n_vocab ", info0_.n_vocab(),
                       ") but the last stage serves '", info_last_.model_id(), "' (n_vocab ",
                       info_last_.n_vocab(), ")"));
    }
    n_stages_ = info_last_.stage_index() + 1;
    n_vocab_ = info0_.n_vocab();
    n_ctx_ = std::min(info0_.n_ctx(), info_last_.n_ctx());
    max_run_tokens_ =
        std::max<uint32_t>(1, std::min(info0_.max_run_tokens(), info_last_.max_run_tokens()));
    if (n_vocab_ == 0 || n_ctx_ == 0) {
      return absl::FailedPreconditionError("the stages report n_vocab or n_ctx 0");
    }
    if (opt_.expected_n_vocab != 0 && opt_.expected_n_vocab != n_vocab_) {
      return absl::FailedPreconditionError(
          absl::StrCat("the model file has ", opt_.expected_n_vocab,
                       " tokens but the stages serve a model with n_vocab ", n_vocab_));
    }
    for (uint32_t id : opt_.eos_ids) {
      if (id < n_vocab_) eos_ids_.push_back(id);
    }
    model_id_ = opt_.model_id.empty() ? info0_.model_id() : opt_.model_id;
    created_ =
        std::chrono::duration_cast<std::chrono::seconds>(Clock::now().time_since_epoch()).count();

    auto server = rpc::StartServer(opt_.listen_address, this, opt_.max_message_bytes, &port_);
    if (!server.ok()) return server.status();
    server_ = std::move(*server);
    SetServing(false);

    auto link = Connect(deadline);
    if (!link.ok()) {
      server_->Shutdown(Clock::now());
      server_->Wait();
      server_.reset();
      return link.status();
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      link_ = *link;
    }
    if (!opt_.metrics_address.empty()) {
      metrics_http_ = std::make_unique<metrics::MetricsHttpServer>(m_);
      absl::StatusOr<int> mp = metrics_http_->Start(opt_.metrics_address);
      if (!mp.ok()) {
        metrics_http_.reset();
        Shutdown();
        return mp.status();
      }
      metrics_port_ = *mp;
    }
    SetServing(true);
    supervisor_ = std::thread([this] { Supervise(); });
    return absl::OkStatus();
  }

  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }

  void Shutdown() {
    std::vector<std::shared_ptr<Session>> sessions;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (shutdown_) return;
      shutdown_ = true;
      for (auto& [id, s] : sessions_) sessions.push_back(s);
    }
    cv_.notify_all();
    for (auto& s : sessions) {
      FailSession(*s, Err(grpc::StatusCode::UNAVAILABLE, "the draft service is shutting down"));
    }
    if (server_) server_->Shutdown(Clock::now() + std::chrono::seconds(1));
    if (supervisor_.joinable()) supervisor_.join();
    std::shared_ptr<Link> link;
    {
      std::lock_guard<std::mutex> l(mu_);
      link = std::move(link_);
    }
    if (link) StopLink(link);
    if (metrics_http_) metrics_http_->Stop();
  }

  void Wait() {
    if (server_) server_->Wait();
  }

  // ---- Draft service -------------------------------------------------------------------------
  grpc::Status Generate(grpc::ServerContext* ctx, const v1::GenerateRequest* req,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override {
    const auto t_start = Steady::now();
    requests_total_->Increment();
    sampling::SamplingParams params;
    spec::SpecParams spec;
    uint32_t max_context = 0;
    if (grpc::Status st = Validate(*req, &params, &spec, &max_context); !st.ok()) {
      requests_failed_total_->Increment();
      return st;
    }
    const uint32_t prompt_len = static_cast<uint32_t>(req->prompt_token_ids_size());
    // ARGMAX rows suffice for greedy decoding without penalties; everything else needs the logits.
    const bool no_penalty = params.repetition_penalty == 1.0f || params.repeat_last_n == 0;
    const bool argmax_only = params.temperature <= 0.0f && no_penalty;
    // Sampling without penalties and with a top-k bound: SPARSE rows (a few candidates) instead of
    // the full vocabulary's logits.
    const bool sparse = !argmax_only && params.temperature > 0.0f && params.top_k > 0 && no_penalty;

    std::shared_ptr<Session> s;
    {
      std::lock_guard<std::mutex> l(mu_);
      grpc::Status st;
      if (shutdown_) {
        st = Err(grpc::StatusCode::UNAVAILABLE, "the draft service is shutting down");
      } else if (!link_ || link_->dead) {
        st = Err(grpc::StatusCode::UNAVAILABLE, "the pipeline is not connected");
      } else if (sessions_.size() >= opt_.max_sessions) {
        st = Err(grpc::StatusCode::RESOURCE_EXHAUSTED,
                 absl::StrCat("the draft service is at its limit of ", opt_.max_sessions,
                              " concurrent sessions"));
      }
      if (!st.ok()) {
        requests_failed_total_->Increment();
        return st;
      }
      s = std::make_shared<Session>();
      s->id = next_session_id_++;
      s->link = link_;
      sessions_[s->id] = s;
      sessions_open_->Set(static_cast<double>(sessions_.size()));
    }
    prompt_tokens_total_->Increment(static_cast<double>(prompt_len));
    const auto t_open = Steady::now();

    spec::ControllerOptions copt;
    copt.spec = spec;
    copt.sampling = params;
    copt.n_stages = n_stages_;
    copt.max_run_tokens = max_run_tokens_;
    copt.stop.ignore_eos = req->ignore_eos();
    for (uint32_t id : eos_ids_) copt.stop.eos_ids.push_back(static_cast<int32_t>(id));
    for (uint32_t id : req->stop_token_ids())
      copt.stop.stop_ids.push_back(static_cast<int32_t>(id));
    copt.stop.max_new_tokens = req->has_max_tokens() ? req->max_tokens() : UINT32_MAX;
    copt.stop.max_context = max_context;
    std::unique_ptr<SessionDrafter> drafter;
    if (spec.mode != spec::Mode::kPlain) {
      drafter = std::make_unique<SessionDrafter>(opt_.draft_model.get(), s->id);
    }
    SessionSink sink(this, s.get());
    spec::Controller ctl(copt, &sink, drafter.get());
    grpc::Status st;

    {  // Session open.
      v1::StageDownstream open;
      auto* o = open.mutable_session_open();
      o->set_session_id(s->id);
      o->set_request_id(req->request_id());
      o->set_max_context(max_context);
      o->set_max_partitions(ctl.max_inflight() + 1);
      if (argmax_only) {
        o->mutable_result()->set_kind(v1::RESULT_KIND_ARGMAX);
      } else if (sparse) {
        // The last stage applies the history-free part of the sampler; top_k bounds the
        // candidates, so the filtered distribution is exact.
        auto* rs = o->mutable_result();
        rs->set_kind(v1::RESULT_KIND_SPARSE);
        rs->set_max_candidates(static_cast<uint32_t>(params.top_k));
        rs->mutable_filter()->set_temperature(params.temperature);
        rs->mutable_filter()->set_top_k(static_cast<uint32_t>(params.top_k));
        rs->mutable_filter()->set_top_p(params.top_p);
        rs->mutable_filter()->set_min_p(params.min_p);
      } else {
        o->mutable_result()->set_kind(v1::RESULT_KIND_FULL);
      }
      if (!Enqueue(*s->link, std::move(open), nullptr)) st = LinkLost(*s->link);
    }
    std::vector<int32_t> prompt(req->prompt_token_ids().begin(), req->prompt_token_ids().end());
    if (st.ok()) st = FromAbsl(ctl.Start(prompt));
    const auto t_prefill = Steady::now();

    uint32_t completion = 0;
    Steady::time_point t_first{}, t_last{};
    const auto outcome_waiting = [&s] {
      std::lock_guard<std::mutex> l(s->mu);
      return !s->outcomes.empty() || s->failure.has_value();
    };
    while (st.ok() && !ctl.finished()) {
      if (ctl.mode() == spec::Mode::kPipeInfer) {
        absl::StatusOr<int> launched = ctl.Speculate(outcome_waiting);
        if (!launched.ok()) {
          st = FromAbsl(launched.status());
          break;
        }
      }
      v1::ResultsDownstream raw;
      st = WaitNext(ctx, *s, &raw);
      if (!st.ok()) break;
      spec::Outcome out;
      st = ToOutcome(raw, &out);
      if (!st.ok()) break;
      if (absl::Status cs = ctl.OnOutcome(out); !cs.ok()) {
        st = FromAbsl(cs);
        if (out.tombstone) {
          // A stage skipped a run the controller still needed; its ErrorDetail (on the Pipeline
          // stream) says why.
          std::unique_lock<std::mutex> l(s->mu);
          s->cv.wait_for(l, std::chrono::seconds(2), [&] { return s->failure.has_value(); });
          if (s->failure) st = *s->failure;
        }
        break;
      }
      std::vector<int32_t> toks = ctl.TakeEmitted();
      if (toks.empty()) continue;
      const auto now = Steady::now();
      if (completion == 0) t_first = now;
      t_last = now;
      v1::GenerateResponse ev;
      auto* batch = ev.mutable_tokens();
      for (int32_t t : toks) batch->add_token_ids(static_cast<uint32_t>(t));
      batch->set_index(completion);
      *batch->mutable_counters() = ToProto(ctl);
      if (!writer->Write(ev)) {
        st = Err(grpc::StatusCode::CANCELLED, "the caller went away");
        break;
      }
      completion += static_cast<uint32_t>(toks.size());
      tokens_generated_total_->Increment(static_cast<double>(toks.size()));
    }

    const uint64_t closed_runs = CloseSession(*s, ctl.OutstandingRunIds());
    v1::SpecCounters counters = ToProto(ctl);
    counters.set_runs_cancelled(counters.runs_cancelled() + closed_runs);
    AddUp(ctl.counters());
    drafter.reset();  // frees the session's draft KV

    if (!st.ok()) {
      if (st.error_code() == grpc::StatusCode::CANCELLED) {
        requests_cancelled_total_->Increment();
        return st;
      }
      requests_failed_total_->Increment();
      if (completion > 0) {  // the stream already carried data: an in-band error first
        v1::GenerateResponse ev;
        auto* e = ev.mutable_error();
        e->set_code(static_cast<v1::StatusCode>(st.error_code()));
        e->set_message(st.error_message());
        e->set_origin("draft");
        e->set_request_id(req->request_id());
        e->set_session_id(s->id);
        e->set_retryable(st.error_code() == grpc::StatusCode::UNAVAILABLE ||
                         st.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED ||
                         st.error_code() == grpc::StatusCode::ABORTED);
        writer->Write(ev);
      }
      return st;
    }

    v1::GenerateResponse ev;
    auto* f = ev.mutable_finished();
    f->set_finish_reason(ctl.finish_reason() == spec::Finish::kStop ? v1::FINISH_REASON_STOP
                                                                    : v1::FINISH_REASON_LENGTH);
    f->mutable_usage()->set_prompt_tokens(prompt_len);
    f->mutable_usage()->set_completion_tokens(completion);
    f->mutable_usage()->set_total_tokens(prompt_len + completion);
    auto* tm = f->mutable_timings();
    tm->set_queue_us(MicrosBetween(t_start, t_open));
    tm->set_prefill_us(MicrosBetween(t_prefill, t_first));
    tm->set_ttft_us(MicrosBetween(t_start, t_first));
    tm->set_decode_us(MicrosBetween(t_first, t_last));
    tm->set_total_us(MicrosBetween(t_start, Steady::now()));
    request_seconds_->Observe(static_cast<double>(tm->total_us()) * 1e-6);
    if (completion > 0) ttft_seconds_->Observe(static_cast<double>(tm->ttft_us()) * 1e-6);
    *f->mutable_counters() = counters;
    writer->Write(ev);
    return grpc::Status::OK;
  }

  grpc::Status GetStats(grpc::ServerContext* sctx, const v1::StatsRequest* req,
                        v1::StatsResponse* resp) override {
    m_->FillServiceStats(resp->add_services());
    if (req->include_pipeline()) {
      // Stage 0 answers for the whole chain (each stage appends its downstream neighbour's).
      grpc::ClientContext ctx;
      ctx.set_deadline(std::min(sctx->deadline(), Clock::now() + std::chrono::seconds(5)));
      v1::StatsRequest sreq;
      sreq.set_include_pipeline(true);
      v1::StatsResponse sr;
      grpc::Status st = stub0_->GetStats(&ctx, sreq, &sr);
      if (st.ok() && sr.services_size() >= 1) {
        for (auto& svc : *sr.mutable_services()) *resp->add_services() = std::move(svc);
        if (resp->services(1).address().empty()) {
          resp->mutable_services(1)->set_address(opt_.stage0_address);
        }
      } else {
        v1::ServiceStats* svc = resp->add_services();
        svc->set_service("stage0");
        svc->set_address(opt_.stage0_address);
        auto* e = svc->mutable_error();
        e->set_code(st.ok() ? v1::STATUS_CODE_INTERNAL
                            : static_cast<v1::StatusCode>(st.error_code()));
        e->set_message(st.ok() ? "stage 0 returned no statistics" : st.error_message());
        e->set_origin("stage0");
      }
    }
    return grpc::Status::OK;
  }

  grpc::Status GetInfo(grpc::ServerContext*, const v1::DraftInfoRequest*,
                       v1::DraftInfo* info) override {
    auto* m = info->mutable_model();
    m->set_id(model_id_);
    m->set_n_ctx(n_ctx_);
    m->set_n_vocab(n_vocab_);
    m->set_owned_by("pipeinfer");
    m->set_created(created_);
    m->set_n_stages(n_stages_);
    m->set_replicas(1);
    m->set_default_mode(ToProto(opt_.spec_defaults.mode));
    if (opt_.draft_model) m->set_draft_model(opt_.draft_model->name());
    info->set_draft_n_vocab(opt_.draft_model ? opt_.draft_model->n_vocab() : 0);
    const spec::SpecParams& d = opt_.spec_defaults;
    auto* def = info->mutable_defaults();
    def->set_mode(ToProto(d.mode));
    def->set_draft_max(d.draft_max);
    def->set_p_accept(d.p_accept);
    def->set_p_split(d.p_split);
    def->set_p_recovery(d.p_recovery);
    def->set_p_decay(d.p_decay);
    def->set_max_branches(d.max_branches);
    def->set_max_inflight(d.max_inflight != 0 ? d.max_inflight
                                              : spec::DefaultMaxInflight(n_stages_));
    def->set_no_cancel(d.no_cancel);
    def->set_no_continuous(d.no_continuous);
    info->set_max_sessions(opt_.max_sessions);
    info->add_stage_addresses(opt_.stage0_address);
    if (n_stages_ > 1) info->add_stage_addresses(opt_.last_address);
    std::lock_guard<std::mutex> l(mu_);
    info->set_active_sessions(static_cast<uint32_t>(sessions_.size()));
    info->set_pipeline_ready(link_ && !link_->dead);
    info->set_epoch(link_ ? link_->epoch : 0);
    return grpc::Status::OK;
  }

 private:
  // Checks a Generate request; fills the sampling parameters and the session's max_context.
  grpc::Status Validate(const v1::GenerateRequest& req, sampling::SamplingParams* params,
                        spec::SpecParams* spec, uint32_t* max_context) const {
    const auto invalid = [](const std::string& m) {
      return Err(grpc::StatusCode::INVALID_ARGUMENT, m);
    };
    if (req.request_id().empty()) return invalid("request_id is required");
    if (req.request_id().size() > 128) return invalid("request_id is longer than 128 characters");
    for (unsigned char c : req.request_id()) {
      if (c < 0x20 || c > 0x7e) return invalid("request_id must be printable ASCII");
    }
    if (!req.model().empty() && req.model() != model_id_) {
      return Err(grpc::StatusCode::NOT_FOUND, absl::StrCat("model '", req.model(),
                                                           "' is not served here (this draft "
                                                           "service serves '",
                                                           model_id_, "')"));
    }
    if (req.prompt_token_ids().empty()) return invalid("prompt_token_ids must not be empty");
    for (int i = 0; i < req.prompt_token_ids_size(); ++i) {
      if (req.prompt_token_ids(i) >= n_vocab_) {
        return invalid(absl::StrCat("prompt_token_ids[", i, "] = ", req.prompt_token_ids(i),
                                    " is not a valid token id (n_vocab is ", n_vocab_, ")"));
      }
    }
    for (int i = 0; i < req.stop_token_ids_size(); ++i) {
      if (req.stop_token_ids(i) >= n_vocab_) {
        return invalid(absl::StrCat("stop_token_ids[", i, "] = ", req.stop_token_ids(i),
                                    " is not a valid token id (n_vocab is ", n_vocab_, ")"));
      }
    }
    const uint64_t prompt_len = static_cast<uint64_t>(req.prompt_token_ids_size());
    if (prompt_len >= n_ctx_) {
      return Err(grpc::StatusCode::OUT_OF_RANGE,
                 absl::StrCat("the prompt has ", prompt_len,
                              " tokens but must be shorter than the context window of ", n_ctx_,
                              " tokens"));
    }
    if (req.has_max_tokens()) {
      if (req.max_tokens() == 0) return invalid("max_tokens must be >= 1");
      if (prompt_len + req.max_tokens() > n_ctx_) {
        return Err(
            grpc::StatusCode::OUT_OF_RANGE,
            absl::StrCat("the prompt (", prompt_len, " tokens) plus max_tokens (", req.max_tokens(),
                         ") exceeds the context window of ", n_ctx_, " tokens"));
      }
      *max_context = static_cast<uint32_t>(prompt_len + req.max_tokens());
    } else {
      *max_context = n_ctx_;
    }
    if (grpc::Status st = ValidateSpec(req.spec(), spec); !st.ok()) return st;

    const v1::SamplingParams& sp = req.sampling();
    sampling::SamplingParams p;
    if (sp.has_temperature()) {
      if (!std::isfinite(sp.temperature())) return invalid("temperature must be finite");
      p.temperature = std::max(0.0f, sp.temperature());  // <= 0 means greedy
    }
    if (sp.has_top_k()) p.top_k = sp.top_k();
    if (sp.has_top_p()) p.top_p = sp.top_p();
    if (sp.has_min_p()) p.min_p = sp.min_p();
    if (sp.has_repetition_penalty()) p.repetition_penalty = sp.repetition_penalty();
    if (sp.has_repeat_last_n()) p.repeat_last_n = sp.repeat_last_n();
    if (absl::Status v = sampling::Validate(p); !v.ok()) return invalid(std::string(v.message()));
    for (const auto& [name, has, value] :
         {std::tuple<const char*, bool, float>{"frequency_penalty", sp.has_frequency_penalty(),
                                               sp.frequency_penalty()},
          std::tuple<const char*, bool, float>{"presence_penalty", sp.has_presence_penalty(),
                                               sp.presence_penalty()}}) {
      if (!has) continue;
      if (!(value >= -2.0f && value <= 2.0f)) {
        return invalid(absl::StrCat(name, " must be in [-2, 2], got ", value));
      }
      if (value != 0.0f) {
        return Err(grpc::StatusCode::UNIMPLEMENTED,
                   absl::StrCat(name, " is not supported yet (only 0 is accepted)"));
      }
    }
    if (sp.has_seed()) {
      p.seed = sp.seed();
    } else {
      std::random_device rd;
      p.seed = (static_cast<uint64_t>(rd()) << 32) ^ rd();
    }
    *params = p;
    return grpc::Status::OK;
  }

  // Resolves the request's SpecConfig against the service defaults.
  grpc::Status ValidateSpec(const v1::SpecConfig& c, spec::SpecParams* out) const {
    spec::SpecParams p = opt_.spec_defaults;
    switch (c.mode()) {
      case v1::SPEC_MODE_UNSPECIFIED:
        break;
      case v1::SPEC_MODE_PLAIN:
        p.mode = spec::Mode::kPlain;
        break;
      case v1::SPEC_MODE_SYNC:
        p.mode = spec::Mode::kSync;
        break;
      case v1::SPEC_MODE_PIPEINFER:
        p.mode = spec::Mode::kPipeInfer;
        break;
      default:
        return Err(grpc::StatusCode::INVALID_ARGUMENT,
                   absl::StrCat("unknown speculation mode ", static_cast<int>(c.mode())));
    }
    if (c.has_draft_max()) p.draft_max = c.draft_max();
    if (c.has_p_accept()) p.p_accept = c.p_accept();
    if (c.has_p_split()) p.p_split = c.p_split();
    if (c.has_p_recovery()) p.p_recovery = c.p_recovery();
    if (c.has_p_decay()) p.p_decay = c.p_decay();
    if (c.has_max_branches()) p.max_branches = c.max_branches();
    if (c.has_max_inflight()) {
      if (c.max_inflight() == 0) {
        return Err(grpc::StatusCode::INVALID_ARGUMENT, "max_inflight must be in [1, 256]");
      }
      p.max_inflight = c.max_inflight();
    }
    if (c.has_no_cancel()) p.no_cancel = c.no_cancel();
    if (c.has_no_continuous()) p.no_continuous = c.no_continuous();
    if (absl::Status st = spec::Validate(p); !st.ok()) {
      return Err(grpc::StatusCode::INVALID_ARGUMENT, std::string(st.message()));
    }
    if (p.mode != spec::Mode::kPlain && !opt_.draft_model) {
      return Err(grpc::StatusCode::FAILED_PRECONDITION,
                 absl::StrCat("speculation mode ", std::string(spec::ModeName(p.mode)),
                              " needs a draft model, and this draft service has none (start it "
                              "with --draft-model); use mode plain"));
    }
    *out = p;
    return grpc::Status::OK;
  }

  static grpc::Status FromAbsl(const absl::Status& st) {
    if (st.ok()) return grpc::Status::OK;
    return grpc::Status(static_cast<grpc::StatusCode>(st.code()), std::string(st.message()));
  }

  static v1::SpecMode ToProto(spec::Mode m) {
    switch (m) {
      case spec::Mode::kPlain:
        return v1::SPEC_MODE_PLAIN;
      case spec::Mode::kSync:
        return v1::SPEC_MODE_SYNC;
      case spec::Mode::kPipeInfer:
        return v1::SPEC_MODE_PIPEINFER;
    }
    return v1::SPEC_MODE_UNSPECIFIED;
  }

  static v1::SpecCounters ToProto(const spec::Controller& ctl) {
    const spec::Counters& c = ctl.counters();
    v1::SpecCounters p;
    p.set_mode(ToProto(ctl.mode()));
    p.set_runs_plain(c.runs_plain);
    p.set_runs_speculative(c.runs_speculative);
    p.set_runs_cancelled(c.runs_cancelled);
    p.set_runs_tombstoned(c.runs_tombstoned);
    p.set_tokens_drafted(c.tokens_drafted);
    p.set_tokens_accepted(c.tokens_accepted);
    p.set_verifications(c.verifications);
    p.set_runs_invalidated(c.runs_invalidated);
    p.set_tokens_accepted_sibling(c.sibling_accepts);
    return p;
  }

  void AddUp(const spec::Counters& c) {
    runs_plain_total_->Increment(static_cast<double>(c.runs_plain));
    runs_speculative_total_->Increment(static_cast<double>(c.runs_speculative));
    runs_cancelled_total_->Increment(static_cast<double>(c.runs_cancelled));
    runs_invalidated_total_->Increment(static_cast<double>(c.runs_invalidated));
    runs_tombstoned_total_->Increment(static_cast<double>(c.runs_tombstoned));
    tokens_drafted_total_->Increment(static_cast<double>(c.tokens_drafted));
    tokens_accepted_total_->Increment(static_cast<double>(c.tokens_accepted));
    verifications_total_->Increment(static_cast<double>(c.verifications));
    tokens_accepted_sibling_total_->Increment(static_cast<double>(c.sibling_accepts));
    draft_failures_total_->Increment(static_cast<double>(c.draft_failures));
  }

  // Converts a pipeline outcome into the controller's terms.
  grpc::Status ToOutcome(const v1::ResultsDownstream& m, spec::Outcome* out) const {
    if (m.has_tombstone()) {
      out->run_id = m.tombstone().run_id();
      out->tombstone = true;
      out->tombstone_reason = absl::StrCat("stage ", m.tombstone().stage_index(), " ",
                                           v1::TombstoneReason_Name(m.tombstone().reason()));
      return grpc::Status::OK;
    }
    const v1::RunResult& r = m.result();
    out->run_id = r.run_id();
    out->rows.resize(static_cast<size_t>(r.rows_size()));
    for (int i = 0; i < r.rows_size(); ++i) {
      const v1::ResultRow& row = r.rows(i);
      spec::TargetRow& t = out->rows[static_cast<size_t>(i)];
      if (row.has_argmax()) {
        t.kind = spec::TargetRow::Kind::kArgmax;
        t.argmax = static_cast<int32_t>(row.argmax().token_id());
      } else if (row.has_sparse()) {
        if (row.sparse().token_ids_size() == 0 ||
            row.sparse().probs_size() != row.sparse().token_ids_size()) {
          return Err(grpc::StatusCode::INTERNAL,
                     absl::StrCat("run ", r.run_id(), ": malformed SPARSE row"));
        }
        t.kind = spec::TargetRow::Kind::kSparse;
        for (int j = 0; j < row.sparse().token_ids_size(); ++j) {
          t.sparse.ids.push_back(static_cast<int32_t>(row.sparse().token_ids(j)));
          t.sparse.probs.push_back(row.sparse().probs(j));
        }
      } else if (row.has_full()) {
        if (row.full().logits_f32().size() != size_t{n_vocab_} * 4) {
          return Err(
              grpc::StatusCode::INTERNAL,
              absl::StrCat("run ", r.run_id(), ": a FULL row must hold ", n_vocab_, " logits"));
        }
        t.kind = spec::TargetRow::Kind::kFull;
        t.logits.resize(n_vocab_);
        std::memcpy(t.logits.data(), row.full().logits_f32().data(), size_t{n_vocab_} * 4);
      } else {
        return Err(grpc::StatusCode::INTERNAL,
                   absl::StrCat("run ", r.run_id(), ": a result row without a value"));
      }
    }
    return grpc::Status::OK;
  }

  // The controller's link to the shared pipeline streams, for one session.
  class SessionSink : public spec::PipelineSink {
   public:
    SessionSink(Impl* impl, Session* s) : impl_(impl), s_(s) {}

    absl::StatusOr<uint64_t> SendRun(const spec::RunSpec& run) override {
      v1::StageDownstream m;
      auto* r = m.mutable_run();
      r->set_session_id(s_->id);
      r->set_kind(run.speculative ? v1::RUN_KIND_SPECULATIVE : v1::RUN_KIND_PLAIN);
      r->set_partition(run.partition);
      if (run.fork) {
        auto* f = r->mutable_fork();
        f->set_partition(run.fork->partition);
        f->set_src_partition(run.fork->src_partition);
        f->set_src_branch(run.fork->src_branch);
        f->set_n_positions(run.fork->n_positions);
      }
      for (int32_t t : run.tokens) r->add_token_ids(static_cast<uint32_t>(t));
      for (uint32_t p : run.positions) r->add_positions(p);
      for (int32_t p : run.parents) r->add_parents(p);
      for (uint32_t b : run.branches) r->add_branches(b);
      for (uint32_t i : run.result_rows) r->add_result_rows(i);
      uint64_t id = 0;
      if (!impl_->Enqueue(*s_->link, std::move(m), &id)) return Lost();
      return id;
    }

    absl::Status SendKvOp(const spec::KvOpSpec& op) override {
      v1::StageDownstream m;
      auto* k = m.mutable_kv();
      k->set_session_id(s_->id);
      if (op.kind == spec::KvOpSpec::Kind::kCommit) {
        auto* c = k->mutable_commit();
        c->set_partition(op.partition);
        c->set_branch(op.branch);
        c->set_n_positions(op.n_positions);
        c->set_release(op.release);
      } else {
        for (uint32_t p : op.partitions) k->mutable_release()->add_partitions(p);
      }
      if (!impl_->Enqueue(*s_->link, std::move(m), nullptr)) return Lost();
      return absl::OkStatus();
    }

    void Cancel(std::span<const uint64_t> ids) override {
      if (ids.empty()) return;
      v1::ResultsUpstream c;
      for (uint64_t id : ids) c.mutable_cancel()->add_run_ids(id);
      Link& link = *s_->link;
      std::lock_guard<std::mutex> l(link.res_write_mu);
      if (!link.dead) link.res->Write(c);
    }

   private:
    absl::Status Lost() {
      grpc::Status st = impl_->LinkLost(*s_->link);
      return absl::Status(static_cast<absl::StatusCode>(st.error_code()), st.error_message());
    }
    Impl* impl_;
    Session* s_;
  };

  // Queues a message for stage 0 (sent when credit allows). A Run gets its run id here, so that
  // ids increase along the stream. False when the link is down.
  bool Enqueue(Link& link, v1::StageDownstream m, uint64_t* run_id) {
    {
      std::lock_guard<std::mutex> l(link.mu);
      if (link.dead) return false;
      if (m.has_run()) {
        const uint64_t id = link.next_run_id++;
        m.mutable_run()->set_run_id(id);
        if (run_id) *run_id = id;
        runs_launched_total_->Increment();
      }
      link.out.push_back(std::move(m));
    }
    link.cv.notify_all();
    return true;
  }

  grpc::Status LinkLost(Link& link) {
    std::lock_guard<std::mutex> l(link.mu);
    return Err(grpc::StatusCode::ABORTED,
               absl::StrCat("the pipeline was reset while the request was in flight",
                            link.dead_reason.empty() ? "" : " (", link.dead_reason,
                            link.dead_reason.empty() ? "" : ")"));
  }

  // Waits for the session's next outcome. Fails when the session failed or the caller cancelled.
  grpc::Status WaitNext(grpc::ServerContext* ctx, Session& s, v1::ResultsDownstream* out) {
    std::unique_lock<std::mutex> l(s.mu);
    while (true) {
      if (s.failure) return *s.failure;
      if (ctx->IsCancelled()) {
        return Err(grpc::StatusCode::CANCELLED, "the caller cancelled the request");
      }
      if (!s.outcomes.empty()) {
        *out = std::move(s.outcomes.front());
        s.outcomes.pop_front();
        return grpc::Status::OK;
      }
      s.cv.wait_for(l, kPollInterval);
    }
  }

  // Forgets the session and, if its link is still up, cancels its outstanding runs and closes it
  // on every stage (freeing its KV). Returns how many runs it cancelled.
  uint64_t CloseSession(Session& s, const std::vector<uint64_t>& outstanding) {
    {
      std::lock_guard<std::mutex> l(mu_);
      sessions_.erase(s.id);
      sessions_open_->Set(static_cast<double>(sessions_.size()));
    }
    Link& link = *s.link;
    if (link.dead) return 0;
    if (!outstanding.empty()) {
      v1::ResultsUpstream c;
      for (uint64_t id : outstanding) c.mutable_cancel()->add_run_ids(id);
      std::lock_guard<std::mutex> l(link.res_write_mu);
      if (!link.dead) link.res->Write(c);
    }
    v1::StageDownstream close;
    close.mutable_session_close()->set_session_id(s.id);
    Enqueue(link, std::move(close), nullptr);
    return outstanding.size();
  }

  // ---- The pipeline link ---------------------------------------------------------------------
  // Opens the Results stream, then the Pipeline stream with a fresh epoch, and waits for stage 0's
  // first credit.
  absl::StatusOr<std::shared_ptr<Link>> Connect(Clock::time_point deadline) {
    auto link = std::make_shared<Link>();
    {
      std::lock_guard<std::mutex> l(mu_);
      const uint64_t now_us = static_cast<uint64_t>(
          std::chrono::duration_cast<std::chrono::microseconds>(Clock::now().time_since_epoch())
              .count());
      link->epoch = std::max(now_us, last_epoch_ + 1);
      last_epoch_ = link->epoch;
    }
    link->rctx = std::make_unique<grpc::ClientContext>();
    link->pctx = std::make_unique<grpc::ClientContext>();
    link->res = stub_last_->Results(link->rctx.get());
    v1::ResultsUpstream ro;
    ro.mutable_open()->set_controller_id(opt_.controller_id);
    ro.mutable_open()->set_epoch(link->epoch);
    const bool res_ok = link->res->Write(ro);
    link->pipe = stub0_->Pipeline(link->pctx.get());
    v1::StageDownstream po;
    po.mutable_open()->set_controller_id(opt_.controller_id);
    po.mutable_open()->set_epoch(link->epoch);
    po.mutable_open()->set_receiver_stage_index(0);
    po.mutable_open()->set_n_stages(n_stages_);
    po.mutable_open()->set_model_id(model_id_);
    const bool pipe_ok = res_ok && link->pipe->Write(po);

    link->res_reader = std::thread([this, link] { ResultsReadLoop(link); });
    link->pipe_reader = std::thread([this, link] { PipeReadLoop(link); });
    link->sender = std::thread([this, link] { SendLoop(link); });
    if (!pipe_ok) LinkFailed(link, "cannot open the streams");
    bool ok = false;
    {
      std::unique_lock<std::mutex> l(link->mu);
      link->cv.wait_until(l, deadline, [&] { return link->got_credit || link->dead.load(); });
      ok = link->got_credit && !link->dead;
    }
    if (ok) return link;
    auto [ps, rs] = StopLink(link);
    std::string why =
        !ps.ok()   ? absl::StrCat("stage 0 refused the Pipeline stream: ", ps.error_message())
        : !rs.ok() ? absl::StrCat("the last stage refused the Results stream: ", rs.error_message())
                   : std::string("timed out waiting for stage 0's first credit");
    return absl::UnavailableError(
        absl::StrCat("cannot open the pipeline (epoch ", link->epoch, "): ", why));
  }

  void SendLoop(std::shared_ptr<Link> link) {
    while (true) {
      v1::StageDownstream m;
      {
        std::unique_lock<std::mutex> l(link->mu);
        link->cv.wait(l, [&] { return link->dead || (!link->out.empty() && link->credit > 0); });
        if (link->dead) return;
        m = std::move(link->out.front());
        link->out.pop_front();
        --link->credit;
      }
      if (!link->pipe->Write(m)) {
        LinkFailed(link, "writing to stage 0 failed");
        return;
      }
    }
  }

  void PipeReadLoop(std::shared_ptr<Link> link) {
    v1::StageUpstream m;
    while (link->pipe->Read(&m)) {
      if (m.has_credit()) {
        {
          std::lock_guard<std::mutex> l(link->mu);
          link->credit += m.credit().messages();
          link->got_credit = true;
        }
        link->cv.notify_all();
      } else if (m.has_error()) {
        const v1::ErrorDetail& e = m.error();
        std::shared_ptr<Session> s;
        if (e.session_id() != 0) {
          std::lock_guard<std::mutex> l(mu_);
          auto it = sessions_.find(e.session_id());
          if (it != sessions_.end() && it->second->link == link) s = it->second;
        }
        if (s) {
          FailSession(*s, StatusFromDetail(e));
        } else if (e.session_id() == 0) {
          std::fprintf(stderr, "draft: pipeline error: %s\n", e.ShortDebugString().c_str());
        }
      }
      // Cancel: stage 0 never forwards cancels to the controller; nothing to do.
    }
    LinkFailed(link, "the Pipeline stream to stage 0 ended", /*cancel_pipe=*/false);
  }

  void ResultsReadLoop(std::shared_ptr<Link> link) {
    v1::ResultsDownstream m;
    while (link->res->Read(&m)) {
      const uint64_t sid = m.has_result()      ? m.result().session_id()
                           : m.has_tombstone() ? m.tombstone().session_id()
                                               : 0;
      if (sid == 0) continue;  // barrier echoes
      std::shared_ptr<Session> s;
      {
        std::lock_guard<std::mutex> l(mu_);
        auto it = sessions_.find(sid);
        if (it != sessions_.end() && it->second->link == link) s = it->second;
      }
      if (!s) continue;  // a finished session's late outcome
      {
        std::lock_guard<std::mutex> l(s->mu);
        s->outcomes.push_back(std::move(m));
      }
      s->cv.notify_all();
      m.Clear();
    }
    LinkFailed(link, "the Results stream from the last stage ended", /*cancel_pipe=*/true,
               /*cancel_results=*/false);
  }

  // Marks the link dead (once): wakes its threads, fails its sessions with ABORTED and lets the
  // supervisor reconnect.
  // A stream that the stage ended itself is not cancelled, so that Finish() returns the stage's
  // status.
  void LinkFailed(const std::shared_ptr<Link>& link, const std::string& reason,
                  bool cancel_pipe = true, bool cancel_results = true) {
    {
      std::lock_guard<std::mutex> l(link->mu);
      if (link->dead) return;
      link->dead_reason = reason;
      link->dead = true;
    }
    link->cv.notify_all();
    if (cancel_pipe) link->pctx->TryCancel();
    if (cancel_results) link->rctx->TryCancel();
    std::vector<std::shared_ptr<Session>> victims;
    bool current = false;
    {
      std::lock_guard<std::mutex> l(mu_);
      for (auto& [id, s] : sessions_) {
        if (s->link == link) victims.push_back(s);
      }
      current = link_ == link && !shutdown_;
    }
    for (auto& s : victims) {
      FailSession(*s, Err(grpc::StatusCode::ABORTED,
                          absl::StrCat("the pipeline was reset while the request was in flight (",
                                       reason, ")")));
    }
    if (current) {
      pipeline_resets_total_->Increment();
      std::fprintf(stderr, "draft: pipeline epoch %llu lost: %s\n",
                   static_cast<unsigned long long>(link->epoch), reason.c_str());
      SetServing(false);
    }
    cv_.notify_all();
  }

  // Ends the link's streams, joins its threads and returns the streams' final statuses.
  std::pair<grpc::Status, grpc::Status> StopLink(const std::shared_ptr<Link>& link) {
    LinkFailed(link, "stopped");
    if (link->sender.joinable()) link->sender.join();
    if (link->pipe_reader.joinable()) link->pipe_reader.join();
    if (link->res_reader.joinable()) link->res_reader.join();
    grpc::Status ps = link->pipe ? link->pipe->Finish() : grpc::Status::OK;
    grpc::Status rs = link->res ? link->res->Finish() : grpc::Status::OK;
    return {ps, rs};
  }

  // Replaces a failed link with a new epoch, retrying until shutdown.
  void Supervise() {
    std::unique_lock<std::mutex> l(mu_);
    while (!shutdown_) {
      cv_.wait_for(l, std::chrono::seconds(1),
                   [&] { return shutdown_ || !link_ || link_->dead.load(); });
      if (shutdown_) break;
      if (link_ && !link_->dead) continue;
      std::shared_ptr<Link> old = std::move(link_);
      l.unlock();
      if (old) {
        auto [ps, rs] = StopLink(old);
        std::fprintf(stderr, "draft: epoch %llu ended (Pipeline: %s; Results: %s)\n",
                     static_cast<unsigned long long>(old->epoch), ps.error_message().c_str(),
                     rs.error_message().c_str());
      }
      auto fresh = Connect(Clock::now() + std::chrono::seconds(5));
      l.lock();
      if (!fresh.ok()) {
        std::fprintf(stderr, "draft: reconnecting: %s\n",
                     std::string(fresh.status().message()).c_str());
        cv_.wait_for(l, std::chrono::seconds(1), [&] { return shutdown_; });
        continue;
      }
      if (shutdown_) {
        l.unlock();
        StopLink(*fresh);
        l.lock();
        break;
      }
      link_ = *fresh;
      std::fprintf(stderr, "draft: pipeline reconnected with epoch %llu\n",
                   static_cast<unsigned long long>(link_->epoch));
      l.unlock();
      SetServing(true);
      l.lock();
    }
  }

  void SetServing(bool serving) {
    pipeline_ready_->Set(serving ? 1.0 : 0.0);
    if (!server_) return;
    auto* health = server_->GetHealthCheckService();
    if (!health) return;
    health->SetServingStatus(serving);
    health->SetServingStatus(kServiceName, serving);
  }

  DraftServerOptions opt_;
  std::shared_ptr<grpc::Channel> ch0_, ch_last_;
  std::unique_ptr<v1::Stage::Stub> stub0_, stub_last_;
  v1::StageInfo info0_, info_last_;
  uint32_t n_stages_ = 0, n_vocab_ = 0, n_ctx_ = 0, max_run_tokens_ = 1;
  std::vector<uint32_t> eos_ids_;
  std::string model_id_;
  int64_t created_ = 0;

  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;

  std::mutex mu_;  // guards link_, sessions_, next_session_id_, last_epoch_, shutdown_
  std::condition_variable cv_;
  std::shared_ptr<Link> link_;
  std::map<uint64_t, std::shared_ptr<Session>> sessions_;
  uint64_t next_session_id_ = 1;
  uint64_t last_epoch_ = 0;
  bool shutdown_ = false;
  std::thread supervisor_;

  // Every counter lives in the service's registry: GetStats and /metrics read the same values.
  std::shared_ptr<metrics::Metrics> m_ = std::make_shared<metrics::Metrics>("draft", "draft");
  prometheus::Counter* requests_total_ = &m_->Counter("requests_total", "Generate calls received");
  prometheus::Counter* requests_failed_total_ =
      &m_->Counter("requests_failed_total", "Generate calls that failed");
  prometheus::Counter* requests_cancelled_total_ =
      &m_->Counter("requests_cancelled_total", "Generate calls cancelled by the caller");
  prometheus::Counter* prompt_tokens_total_ =
      &m_->Counter("prompt_tokens_total", "Prompt tokens received");
  prometheus::Counter* tokens_generated_total_ =
      &m_->Counter("tokens_generated_total", "Tokens generated (committed and streamed)");
  prometheus::Counter* runs_launched_total_ =
      &m_->Counter("runs_launched_total", "Runs sent into the pipeline");
  prometheus::Counter* pipeline_resets_total_ =
      &m_->Counter("pipeline_resets_total", "Pipeline epochs lost (link failures)");
  prometheus::Counter* runs_plain_total_ =
      &m_->Counter("runs_plain_total", "Plain runs sent (prefill chunks and next-token runs)");
  prometheus::Counter* runs_speculative_total_ =
      &m_->Counter("runs_speculative_total", "Speculative micro-batches sent");
  prometheus::Counter* runs_cancelled_total_ =
      &m_->Counter("runs_cancelled_total", "Runs cancelled after sending");
  prometheus::Counter* runs_invalidated_total_ =
      &m_->Counter("runs_invalidated_total", "Runs built on a rejected draft token");
  prometheus::Counter* runs_tombstoned_total_ =
      &m_->Counter("runs_tombstoned_total", "Outcomes that came back as tombstones");
  prometheus::Counter* tokens_drafted_total_ =
      &m_->Counter("tokens_drafted_total", "Draft tokens sent for verification");
  prometheus::Counter* tokens_accepted_total_ =
      &m_->Counter("tokens_accepted_total", "Draft tokens accepted by verification");
  prometheus::Counter* verifications_total_ =
      &m_->Counter("verifications_total", "Run results verified");
  prometheus::Counter* draft_failures_total_ = &m_->Counter(
      "draft_failures_total", "Draft model errors (speculation stopped for a request)");
  prometheus::Counter* tokens_accepted_sibling_total_ =
      &m_->Counter("tokens_accepted_sibling_total", "Accepted draft tokens from sibling branches");
  prometheus::Gauge* sessions_open_ = &m_->Gauge("sessions_open", "Generate calls in progress");
  prometheus::Gauge* pipeline_ready_ =
      &m_->Gauge("pipeline_ready", "1 when the Pipeline and Results streams are open");
  prometheus::Histogram* request_seconds_ = &m_->Histogram(
      "request_seconds", "Generate call duration, successful calls", metrics::LatencyBuckets());
  prometheus::Histogram* ttft_seconds_ =
      &m_->Histogram("time_to_first_token_seconds", "From the Generate call to its first token",
                     metrics::LatencyBuckets());
  std::unique_ptr<metrics::MetricsHttpServer> metrics_http_;
  int metrics_port_ = 0;
};

DraftServer::DraftServer(DraftServerOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}
DraftServer::~DraftServer() = default;
absl::Status DraftServer::Start() { return impl_->Start(); }
int DraftServer::port() const { return impl_->port(); }
int DraftServer::metrics_port() const { return impl_->metrics_port(); }
void DraftServer::Shutdown() { impl_->Shutdown(); }
void DraftServer::Wait() { impl_->Wait(); }

}  // namespace pipeinfer::draft_server
