// The draft service: learns the pipeline's shape, owns the pipeline link (pipeline_link.h), admits
// Generate calls as sessions (generate_session.h) and answers GetStats and GetInfo.
#include "draft_server/draft_server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/call_tracker.h"
#include "draft_server/draft_metrics.h"
#include "draft_server/draft_model.h"
#include "draft_server/generate_session.h"
#include "draft_server/kv_admission.h"
#include "draft_server/pipeline_link.h"
#include "draft_server/request_validation.h"
#include "draft_server/spec_proto.h"
#include "draft_server/trace_hub.h"
#include "log/log.h"
#include "metrics/metrics.h"
#include "pipeinfer/v1/draft.grpc.pb.h"
#include "pipeinfer/v1/stage.grpc.pb.h"
#include "rpc/credentials.h"
#include "rpc/server.h"
#include "spec/spec_budget.h"

namespace pipeinfer::draft_server {
namespace {

using Clock = std::chrono::system_clock;
using Steady = std::chrono::steady_clock;

constexpr const char kServiceName[] = "pipeinfer.v1.Draft";

// The caller's request id: the x-request-id metadata the router sends, else the message's field.
std::string RequestIdOf(const grpc::ServerContext& ctx, const v1::GenerateRequest& req) {
  const auto& md = ctx.client_metadata();
  const auto it = md.find("x-request-id");
  if (it != md.end() && !it->second.empty() && it->second.size() <= 128) {
    return std::string(it->second.data(), it->second.size());
  }
  return req.request_id();
}

grpc::Status ToGrpc(const absl::Status& st) {
  if (st.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(st.code()), std::string(st.message()));
}

std::shared_ptr<grpc::Channel> StageChannel(const std::string& address, uint64_t max_bytes,
                                            std::shared_ptr<grpc::ChannelCredentials> creds) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(max_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(max_bytes));
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  return grpc::CreateCustomChannel(address, creds, args);
}

// The pipeline's shape from stage 0's and the last stage's StageInfo, checked for wiring mistakes.
absl::StatusOr<ServedPipeline> LearnPipeline(const DraftServerOptions& opt,
                                             const v1::StageInfo& info0,
                                             const v1::StageInfo& info_last) {
  if (info0.stage_index() != 0 || !info0.is_first()) {
    return absl::FailedPreconditionError(absl::StrCat(
        opt.stage0_address, " is stage ", info0.stage_index(), ", not the first stage"));
  }
  if (!info_last.is_last()) {
    return absl::FailedPreconditionError(
        absl::StrCat(opt.last_address, " is stage ", info_last.stage_index(),
                     ", which does not hold the output head (it is not the last stage)"));
  }
  if (info0.model_id() != info_last.model_id() || info0.n_vocab() != info_last.n_vocab()) {
    return absl::FailedPreconditionError(
        absl::StrCat("stage 0 serves model '", info0.model_id(), "' (n_vocab ", info0.n_vocab(),
                     ") but the last stage serves '", info_last.model_id(), "' (n_vocab ",
                     info_last.n_vocab(), ")"));
  }
  ServedPipeline p;
  p.n_stages = info_last.stage_index() + 1;
  p.n_vocab = info0.n_vocab();
  p.n_ctx = std::min(info0.n_ctx(), info_last.n_ctx());
  p.max_run_tokens =
      std::max<uint32_t>(1, std::min(info0.max_run_tokens(), info_last.max_run_tokens()));
  if (p.n_vocab == 0 || p.n_ctx == 0) {
    return absl::FailedPreconditionError("the stages report n_vocab or n_ctx 0");
  }
  if (opt.expected_n_vocab != 0 && opt.expected_n_vocab != p.n_vocab) {
    return absl::FailedPreconditionError(
        absl::StrCat("the model file has ", opt.expected_n_vocab,
                     " tokens but the stages serve a model with n_vocab ", p.n_vocab));
  }
  for (uint32_t id : opt.eos_ids) {
    if (id < p.n_vocab) p.eos_ids.push_back(id);
  }
  p.model_id = opt.model_id.empty() ? info0.model_id() : opt.model_id;
  return p;
}

}  // namespace

class DraftServer::Impl final : public v1::Draft::Service {
 public:
  explicit Impl(DraftServerOptions options)
      : opt_(std::move(options)), m_(opt_.metrics_model.empty() ? "unknown" : opt_.metrics_model) {
    if (opt_.max_sessions == 0) opt_.max_sessions = 1;
  }

  ~Impl() override {
    Shutdown();
    if (server_) server_->Wait();
    calls_.WaitIdle();
  }

  absl::Status Start() {
    if (opt_.stage0_address.empty() || opt_.last_address.empty()) {
      return absl::InvalidArgumentError("both the stage 0 and the last stage address are needed");
    }
    auto creds = rpc::MakeChannelCredentials(opt_.tls);
    if (!creds.ok()) return creds.status();
    auto ch0 = StageChannel(opt_.stage0_address, opt_.max_message_bytes, *creds);
    auto ch_last = StageChannel(opt_.last_address, opt_.max_message_bytes, *creds);
    stub0_ = v1::Stage::NewStub(ch0);
    const auto deadline = Clock::now() + std::chrono::milliseconds(opt_.connect_timeout_ms);
    if (!ch0->WaitForConnected(deadline)) {
      return absl::UnavailableError(
          absl::StrCat("cannot connect to stage 0 at ", opt_.stage0_address));
    }
    if (!ch_last->WaitForConnected(deadline)) {
      return absl::UnavailableError(
          absl::StrCat("cannot connect to the last stage at ", opt_.last_address));
    }
    v1::StageInfo info0, info_last;
    for (int i = 0; i < 2; ++i) {
      grpc::ClientContext ctx;
      ctx.set_deadline(Clock::now() + std::chrono::seconds(10));
      const std::string& addr = i == 0 ? opt_.stage0_address : opt_.last_address;
      grpc::Status st = v1::Stage::NewStub(i == 0 ? ch0 : ch_last)
                            ->GetInfo(&ctx, v1::StageInfoRequest(), i == 0 ? &info0 : &info_last);
      if (!st.ok()) {
        return absl::UnavailableError(
            absl::StrCat("Stage.GetInfo on ", addr, " failed: ", st.error_message()));
      }
    }
    absl::StatusOr<ServedPipeline> pipeline = LearnPipeline(opt_, info0, info_last);
    if (!pipeline.ok()) return pipeline.status();
    pipeline_ = std::move(*pipeline);
    for (const char* mode : {"sync", "pipeinfer"}) {  // listed at 0 before the first request
      const prometheus::Labels labels{{"mode", mode}};
      m_.spec_decode_draft_tokens->Add(labels);
      m_.spec_decode_accepted_tokens->Add(labels);
      m_.spec_decode_verifications->Add(labels);
    }
    created_ =
        std::chrono::duration_cast<std::chrono::seconds>(Clock::now().time_since_epoch()).count();

    auto server =
        rpc::StartServer(opt_.listen_address, this, opt_.max_message_bytes, &port_, opt_.tls);
    if (!server.ok()) return server.status();
    server_ = std::move(*server);
    SetServing(false);

    PipelineLinkOptions lo;
    lo.stage0 = ch0;
    lo.last = ch_last;
    lo.controller_id = opt_.controller_id;
    lo.model_id = pipeline_.model_id;
    lo.n_stages = pipeline_.n_stages;
    lo.emulate_link_us = opt_.emulate_link_us;
    lo.emulate_link_mbps = opt_.emulate_link_mbps;
    lo.on_state = [this](bool up) {
      if (!up) m_.pipeline_resets_total->Increment();
      SetServing(up);
    };
    // The gauge follows the wait queue itself: UpdateAdmissionGauges runs only once Acquire has
    // returned, when the request no longer waits.
    kv_admission_.SetWaitingObserver(
        [this](uint32_t waiting) { m_.kv_waiting->Set(static_cast<double>(waiting)); });
    lo.on_capacity = [this](const std::vector<StageKv>& stages) {
      kv_admission_.SetStages(stages);
      UpdateAdmissionGauges();
    };
    spec::SpecBudgetOptions bo;
    bo.n_stages = pipeline_.n_stages;
    bo.scale = opt_.spec_budget_scale;
    budget_ = std::make_unique<spec::SpecBudget>(bo);
    if (opt_.draft_model) {
      opt_.draft_model->SetPassObserver([this](size_t sessions, double seconds) {
        m_.draft_passes_total->Increment();
        m_.draft_pass_sessions->Observe(static_cast<double>(sessions));
        m_.draft_pass_seconds->Observe(seconds);
      });
    }
    auto link = std::make_unique<PipelineLink>(std::move(lo));
    if (absl::Status st = link->Start(deadline); !st.ok()) {
      server_->Shutdown(Clock::now());
      server_->Wait();
      server_.reset();
      return st;
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      link_ = std::move(link);
    }
    if (!opt_.metrics_address.empty()) {
      metrics_http_ = std::make_unique<metrics::MetricsHttpServer>(m_.registry);
      absl::StatusOr<int> mp = metrics_http_->Start(opt_.metrics_address);
      if (!mp.ok()) {
        metrics_http_.reset();
        Shutdown();
        return mp.status();
      }
      metrics_port_ = *mp;
    }
    SetServing(link_->ready());
    return absl::OkStatus();
  }

  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }

  void Shutdown() {
    PipelineLink* link = nullptr;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (shutdown_) return;
      shutdown_ = true;
      link = link_.get();
    }
    // Every session admitted before shutdown_ was set is registered with the link by now.
    if (link) link->BeginShutdown(absl::UnavailableError("the draft service is shutting down"));
    if (server_) server_->Shutdown(Clock::now() + std::chrono::seconds(1));
    if (link) link->Stop();
    if (metrics_http_) metrics_http_->Stop();
  }

  void Wait() {
    if (server_) server_->Wait();
  }

  // ---- Draft service -------------------------------------------------------------------------
  grpc::Status Generate(grpc::ServerContext* ctx, const v1::GenerateRequest* req,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override {
    auto call = calls_.Enter();
    const auto t_start = Steady::now();
    m_.requests_total->Increment();
    const log::RequestScope scope(RequestIdOf(*ctx, *req));
    absl::StatusOr<ValidatedRequest> request =
        ValidateRequest(*req, pipeline_, opt_.spec_defaults, opt_.draft_model != nullptr);
    if (!request.ok()) {
      m_.requests_failed_total->Increment();
      spdlog::warn("generate refused: {}", request.status().ToString());
      return ToGrpc(request.status());
    }
    // The request's worst case in KV must fit on every stage before it starts (it may wait).
    const auto t_kv = Steady::now();
    absl::StatusOr<std::unique_ptr<KvAdmission::Ticket>> ticket = kv_admission_.Acquire(
        KvDemandOf(*request, pipeline_.n_stages), t_kv + std::chrono::milliseconds(opt_.kv_wait_ms),
        [ctx] { return ctx->IsCancelled(); });
    UpdateAdmissionGauges();
    if (!ticket.ok()) {
      if (absl::IsCancelled(ticket.status())) {
        m_.requests_cancelled_total->Increment();
      } else {
        m_.kv_refused_total->Increment();
        m_.requests_failed_total->Increment();
        spdlog::warn("generate refused for KV: {}", ticket.status().ToString());
      }
      return ToGrpc(ticket.status());
    }
    m_.kv_wait_seconds->Observe(std::chrono::duration<double>(Steady::now() - t_kv).count());
    absl::StatusOr<std::unique_ptr<PipelineLink::Session>> link = Admit();
    if (!link.ok()) {
      m_.requests_failed_total->Increment();
      spdlog::warn("generate refused: {}", link.status().ToString());
      return ToGrpc(link.status());
    }
    m_.prompt_tokens_total->Increment(static_cast<double>(req->prompt_token_ids_size()));
    const spec::Mode mode = request->spec.mode;

    SessionEnv env;
    env.pipeline = &pipeline_;
    env.draft_model = opt_.draft_model.get();
    env.metrics = &m_;
    env.budget = budget_.get();
    env.acceptance = &acceptance_;
    env.trace = &trace_;
    env.recovery = std::chrono::seconds(opt_.recovery_seconds);
    env.split_prefill = opt_.split_prefill;
    const KvDemand demand = KvDemandOf(*request, pipeline_.n_stages);
    env.reopen = [this, &ticket, demand](Steady::time_point deadline,
                                         const std::function<bool()>& cancelled) {
      return Reopen(demand, &*ticket, deadline, cancelled);
    };
    // Leaving the pipeline (SessionClose queued behind the session's last message) frees the
    // session slot and the KV reservation: the stages free it in the same stream order.
    GenerateSession session(
        env, *req, *std::move(request), link->get(),
        [this, &ticket] {
          Release();
          ticket->reset();
          UpdateAdmissionGauges();
        },
        t_start);
    const absl::Status st =
        session.Run({[writer](const v1::GenerateResponse& ev) { return writer->Write(ev); },
                     [ctx] { return ctx->IsCancelled(); }});
    if (absl::IsCancelled(st)) {
      m_.requests_cancelled_total->Increment();
    } else if (!st.ok()) {
      m_.requests_failed_total->Increment();
    }
    UpdateBudgetGauges();
    if (trace_.active()) {
      v1::TraceEvent end;
      end.set_request_id(req->request_id());
      end.set_done_us(UnixMicros());
      end.set_status(std::string(absl::StatusCodeToString(st.code())));
      end.set_completion_tokens(session.completion_tokens());
      const spec::Counters& c = session.counters();
      end.set_drafted(static_cast<uint32_t>(c.tokens_drafted));
      end.set_accepted(static_cast<uint32_t>(c.tokens_accepted));
      m_.trace_events_total->Increment();
      trace_.Publish(end);
    }
    log::Event(st.ok() || absl::IsCancelled(st) ? spdlog::level::info : spdlog::level::warn,
               "generate finished",
               {{"mode", std::string(spec::ModeName(mode))},
                {"status", std::string(absl::StatusCodeToString(st.code()))},
                {"prompt_tokens", req->prompt_token_ids_size()},
                {"seconds", std::chrono::duration<double>(Steady::now() - t_start).count()},
                {"error", std::string(st.message())}});
    return ToGrpc(st);
  }

  grpc::Status GetStats(grpc::ServerContext* sctx, const v1::StatsRequest* req,
                        v1::StatsResponse* resp) override {
    auto call = calls_.Enter();
    m_.registry->FillServiceStats(resp->add_services());
    if (!req->include_pipeline()) return grpc::Status::OK;
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
    return grpc::Status::OK;
  }

  grpc::Status Trace(grpc::ServerContext* ctx, const v1::TraceRequest* req,
                     grpc::ServerWriter<v1::TraceEvent>* writer) override {
    auto call = calls_.Enter();
    std::shared_ptr<TraceHub::Subscription> sub = trace_.Subscribe(req->request_id());
    v1::TraceEvent ev;
    while (!ctx->IsCancelled()) {
      {
        std::lock_guard<std::mutex> l(mu_);
        if (shutdown_) break;
      }
      if (sub->Next(&ev, std::chrono::milliseconds(200)) && !writer->Write(ev)) break;
    }
    return grpc::Status::OK;
  }

  grpc::Status GetInfo(grpc::ServerContext*, const v1::DraftInfoRequest*,
                       v1::DraftInfo* info) override {
    auto call = calls_.Enter();
    auto* m = info->mutable_model();
    m->set_id(pipeline_.model_id);
    m->set_n_ctx(pipeline_.n_ctx);
    m->set_n_vocab(pipeline_.n_vocab);
    m->set_owned_by("pipeinfer");
    m->set_created(created_);
    m->set_n_stages(pipeline_.n_stages);
    m->set_replicas(1);
    m->set_default_mode(ToProto(opt_.spec_defaults.mode));
    if (opt_.draft_model) m->set_draft_model(opt_.draft_model->name());
    info->set_draft_n_vocab(opt_.draft_model ? opt_.draft_model->n_vocab() : 0);
    // Every default, with the in-flight limit the controller derives when it is 0.
    spec::SpecParams d = opt_.spec_defaults;
    if (d.max_inflight == 0) d.max_inflight = spec::DefaultMaxInflight(pipeline_.n_stages);
    *info->mutable_defaults() = ToSpecConfig(d);
    info->set_max_sessions(opt_.max_sessions);
    info->add_stage_addresses(opt_.stage0_address);
    if (pipeline_.n_stages > 1) info->add_stage_addresses(opt_.last_address);
    std::lock_guard<std::mutex> l(mu_);
    info->set_active_sessions(active_sessions_);
    info->set_pipeline_ready(link_ && link_->ready());
    info->set_epoch(link_ ? link_->epoch() : 0);
    info->set_kv_reserved_fraction(static_cast<float>(m_.kv_reserved_fraction->Value()));
    return grpc::Status::OK;
  }

 private:
  // A slot for one more session, on the current epoch. The order of the refusals is the order a
  // caller can do something about them: shutting down, pipeline down, at the session limit.
  absl::StatusOr<std::unique_ptr<PipelineLink::Session>> Admit() {
    std::lock_guard<std::mutex> l(mu_);
    if (shutdown_) return absl::UnavailableError("the draft service is shutting down");
    if (!link_ || !link_->ready()) return absl::UnavailableError("the pipeline is not connected");
    if (active_sessions_ >= opt_.max_sessions) {
      return absl::ResourceExhaustedError(absl::StrCat("the draft service is at its limit of ",
                                                       opt_.max_sessions, " concurrent sessions"));
    }
    absl::StatusOr<std::unique_ptr<PipelineLink::Session>> s = link_->OpenSession();
    if (!s.ok()) return s.status();
    ++active_sessions_;
    m_.sessions_open->Set(static_cast<double>(active_sessions_));
    return s;
  }

  // Crash recovery: a session for a request whose epoch was lost, on the pipeline once it is back,
  // with its KV reservation made again against the new epoch's capacities (the stages dropped the
  // old one with the old epoch).
  absl::StatusOr<std::unique_ptr<SessionLink>> Reopen(const KvDemand& demand,
                                                      std::unique_ptr<KvAdmission::Ticket>* ticket,
                                                      Steady::time_point deadline,
                                                      const std::function<bool()>& cancelled) {
    while (true) {
      PipelineLink* link = nullptr;
      {
        std::lock_guard<std::mutex> l(mu_);
        if (shutdown_) return absl::UnavailableError("the draft service is shutting down");
        link = link_.get();
      }
      if (cancelled()) return absl::CancelledError("the caller cancelled during recovery");
      if (link && link->ready()) {
        ticket->reset();
        absl::StatusOr<std::unique_ptr<KvAdmission::Ticket>> t =
            kv_admission_.Acquire(demand, deadline, cancelled);
        UpdateAdmissionGauges();
        if (!t.ok()) {
          if (absl::IsCancelled(t.status())) return t.status();
          return absl::UnavailableError(absl::StrCat(
              "the pipeline came back but the request's KV does not fit: ", t.status().message()));
        }
        *ticket = *std::move(t);
        absl::StatusOr<std::unique_ptr<PipelineLink::Session>> s = link->OpenSession();
        if (s.ok()) return std::unique_ptr<SessionLink>(std::move(*s));
      }
      if (Steady::now() >= deadline) {
        return absl::UnavailableError(
            absl::StrCat("the pipeline lost a stage and did not come back within ",
                         opt_.recovery_seconds, " s; retry later"));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  void Release() {
    std::lock_guard<std::mutex> l(mu_);
    --active_sessions_;
    m_.sessions_open->Set(static_cast<double>(active_sessions_));
  }

  void UpdateAdmissionGauges() {
    const KvAdmission::Stats st = kv_admission_.stats();
    m_.kv_waiting->Set(st.waiting);
    m_.kv_reserved_fraction->Set(st.max_reserved_fraction);
  }

  void UpdateBudgetGauges() {
    const spec::SpecBudget::Snapshot b = budget_->snapshot();
    m_.spec_budget_tokens->Set(b.have_model ? b.cap : -1);
    m_.spec_tokens_in_flight->Set(static_cast<double>(b.speculative));
    m_.verified_tokens_in_flight->Set(static_cast<double>(b.verified));
    m_.spec_acceptance->Set(b.alpha);
  }

  void SetServing(bool serving) {
    m_.pipeline_ready->Set(serving ? 1.0 : 0.0);
    if (!server_) return;
    auto* health = server_->GetHealthCheckService();
    if (!health) return;
    health->SetServingStatus(serving);
    health->SetServingStatus(kServiceName, serving);
  }

  DraftServerOptions opt_;
  DraftMetrics m_;  // before link_: the link's state callback counts resets
  ServedPipeline pipeline_;
  std::unique_ptr<v1::Stage::Stub> stub0_;  // for GetStats
  int64_t created_ = 0;

  // The handlers in progress; the destructor waits for them (common/call_tracker.h).
  CallTracker calls_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;

  KvAdmission kv_admission_{opt_.kv_max_waiting != 0 ? opt_.kv_max_waiting : opt_.max_sessions};
  std::unique_ptr<spec::SpecBudget> budget_;  // set in Start, before any session
  spec::SharedAcceptance acceptance_;         // the dynamic tree's counts over every request
  TraceHub trace_;                            // run events for live views (Trace)

  std::mutex mu_;  // guards link_ (set once, in Start), active_sessions_ and shutdown_
  std::unique_ptr<PipelineLink> link_;
  uint32_t active_sessions_ = 0;
  bool shutdown_ = false;

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
