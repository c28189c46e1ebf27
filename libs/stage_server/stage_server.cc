// The stage server: the pipeinfer.v1.Stage service (Pipeline and Results streams, info, stats),
// accepting and retiring links by epoch, and health.
#include "stage_server/stage_server_impl.h"

#include <spdlog/spdlog.h>

#include "absl/strings/str_join.h"

namespace pipeinfer::stage_server {
namespace {

int64_t SteadyNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

absl::Status StageServer::Impl::Start() {
  if (!is_last() && opt_.downstream_address.empty()) {
    return absl::InvalidArgumentError("a stage that is not last needs a downstream address");
  }
  if (!is_last()) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(static_cast<int>(opt_.max_message_bytes));
    args.SetMaxSendMessageSize(static_cast<int>(opt_.max_message_bytes));
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    auto creds = rpc::MakeChannelCredentials(opt_.tls);
    if (!creds.ok()) return creds.status();
    down_channel_ = grpc::CreateCustomChannel(opt_.downstream_address, *creds, args);
    down_stub_ = v1::Stage::NewStub(down_channel_);
  }
  auto server =
      rpc::StartServer(opt_.listen_address, this, opt_.max_message_bytes, &port_, opt_.tls);
  if (!server.ok()) return server.status();
  server_ = std::move(*server);
  if (!opt_.metrics_address.empty()) {
    metrics_http_ = std::make_unique<metrics::MetricsHttpServer>(metrics_);
    absl::StatusOr<int> mp = metrics_http_->Start(opt_.metrics_address);
    if (!mp.ok()) {
      server_->Shutdown();
      server_.reset();
      return mp.status();
    }
  }
  SetServing(is_last());
  if (!is_last()) health_thread_ = std::thread([this] { HealthMonitor(); });
  return absl::OkStatus();
}

void StageServer::Impl::Shutdown() {
  std::shared_ptr<Link> cur;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (shutdown_ || !server_) return;
    shutdown_ = true;
    cur = current_;
    if (sink_) {
      sink_->detached = true;
      sink_->ctx->TryCancel();
    }
  }
  cv_.notify_all();
  if (cur) AbortLink(*cur, grpc::StatusCode::UNAVAILABLE, "the stage is shutting down");
  // Our own streams are ended above; whatever is still in flight after a short grace period
  // (unary calls, gRPC-internal calls that would otherwise hold Shutdown to its deadline) is
  // cancelled.
  server_->Shutdown(Clock::now() + std::chrono::milliseconds(500));
  if (health_thread_.joinable()) health_thread_.join();
  if (metrics_http_) metrics_http_->Stop();
}

grpc::Status StageServer::Impl::Pipeline(grpc::ServerContext* ctx, UpStream* stream) {
  auto call = calls_.Enter();
  if (grpc::Status s = rpc::CheckPeerAllowed(*ctx, opt_.allow_peers, "Stage.Pipeline"); !s.ok()) {
    return Refuse(s.error_code(), s.error_message());
  }
  v1::StageDownstream first;
  if (!stream->Read(&first)) {
    return Refuse(grpc::StatusCode::FAILED_PRECONDITION, "stream ended before PipelineOpen");
  }
  if (!first.has_open()) {
    return Refuse(grpc::StatusCode::FAILED_PRECONDITION,
                  "the first message of a Pipeline stream must be PipelineOpen");
  }
  const v1::PipelineOpen& o = first.open();
  if (grpc::Status s = CheckOpen(o); !s.ok()) return s;

  std::unique_lock<std::mutex> accept(accept_mu_);
  std::shared_ptr<Link> old;
  if (grpc::Status s = TakeOwnership(ctx, o, accept, &old); !s.ok()) return s;
  cv_.notify_all();
  if (old) {
    AbortLink(*old, grpc::StatusCode::ABORTED,
              absl::StrCat("epoch ", old->epoch, " superseded by epoch ", o.epoch()));
    std::unique_lock<std::mutex> l(old->mu);
    old->cv.wait(l, [&] { return old->worker_done; });
  }
  {
    std::lock_guard<std::mutex> l(core_mu_);
    core_->Reset();
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    results_.clear();
    results_at_.clear();
  }

  auto link = std::make_shared<Link>();
  if (emulate_link()) {
    const std::chrono::microseconds delay(opt_.emulate_link_us);
    link->up_line = std::make_unique<DelayLine>(delay, opt_.emulate_link_mbps);
    if (!is_last()) link->down_line = std::make_unique<DelayLine>(delay, opt_.emulate_link_mbps);
  }
  link->epoch = o.epoch();
  link->last_rx_ns = SteadyNs();
  link->ctx = ctx;
  link->up = stream;
  if (!is_last()) {
    if (grpc::Status s = OpenDownstream(*link, o); !s.ok()) {
      ReleaseOwnership();
      return s;
    }
  }
  v1::StageUpstream credit;
  credit.mutable_credit()->set_messages(opt_.window);
  v1::StageUpstream ready;
  {
    v1::StageCapacity* mine = ready.mutable_ready()->add_stages();
    v1::StageInfo info;
    {
      std::lock_guard<std::mutex> l(core_mu_);
      core_->FillInfo(&info);
    }
    mine->set_stage_index(info.stage_index());
    mine->set_kv_block_size(info.kv_block_size());
    mine->set_kv_blocks_total(info.kv_blocks_total());
    mine->set_max_run_tokens(info.max_run_tokens());
    mine->set_max_batch_tokens(info.max_batch_tokens());
    mine->set_owner_lease_ms(opt_.owner_lease_ms);
    for (const auto& d : link->down_ready.stages()) *ready.mutable_ready()->add_stages() = d;
  }
  if (!stream->Write(credit) || !stream->Write(ready)) {
    if (link->down) {
      link->down_ctx->TryCancel();
      (void)link->down->Finish();
    }
    ReleaseOwnership();
    return Refuse(grpc::StatusCode::CANCELLED, "the upstream peer went away");
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    current_ = link;
  }
  queue_depth_->Set(0);
  cv_.notify_all();
  link->worker = std::thread([this, link] { Worker(link); });
  if (link->down) link->down_reader = std::thread([this, link] { DownReader(link); });
  accept.unlock();

  // Read the upstream peer's messages into the bounded input queue.
  while (true) {
    auto m = std::make_unique<v1::StageDownstream>();
    if (!stream->Read(m.get())) break;
    link->last_rx_ns.store(SteadyNs(), std::memory_order_relaxed);
    if (m->has_open()) {
      AbortLink(*link, grpc::StatusCode::FAILED_PRECONDITION, "a second PipelineOpen");
      break;
    }
    received_bytes_->Increment(static_cast<double>(m->ByteSizeLong()));
    // The controller's shortcut to stage 0 (stage.proto section 6): recorded now, no credit, not
    // queued.
    if (m->has_cancel()) {
      cancels_received_->Increment();
      core_->Cancel(
          std::vector<uint64_t>(m->cancel().run_ids().begin(), m->cancel().run_ids().end()));
      continue;
    }
    bool overflow = false;
    {
      std::lock_guard<std::mutex> l(link->mu);
      if (link->stop) break;
      if (link->input.size() + link->held >= opt_.window) {
        overflow = true;
      } else {
        link->input.push_back({std::move(m), std::chrono::steady_clock::now()});
        queue_depth_->Set(static_cast<double>(link->input.size() + link->held));
      }
    }
    if (overflow) {
      AbortLink(*link, grpc::StatusCode::FAILED_PRECONDITION,
                "the upstream peer sent more messages than its credit allows");
      break;
    }
    link->cv.notify_all();
  }
  {
    std::lock_guard<std::mutex> l(link->mu);
    link->input_closed = true;
  }
  link->input_ended = true;
  link->cv.notify_all();
  // A cancelled call discards what is queued; a half-close lets the queue drain first.
  if (ctx->IsCancelled()) AbortLink(*link, grpc::StatusCode::CANCELLED, "upstream cancelled");
  link->worker.join();
  if (link->down) {
    bool half_close = false;
    {
      std::lock_guard<std::mutex> l(link->mu);
      if (!link->stop) link->closing = half_close = true;
    }
    if (link->down_line) {
      // Delayed forwards go out before the half-close; an aborted link drops them.
      if (half_close) {
        link->down_line->Drain();
      } else {
        link->down_line->Discard();
      }
    }
    if (half_close) link->down->WritesDone();
    link->down_reader.join();
    (void)link->down->Finish();
  }
  if (link->up_line) {
    if (link->stop) {
      link->up_line->Discard();
    } else {
      link->up_line->Drain();
    }
  }
  {
    std::lock_guard<std::mutex> l(link->up_mu);
    link->up_closed = true;
  }
  // The link is gone: drop its sessions unless a newer epoch already took over.
  {
    std::lock_guard<std::mutex> a(accept_mu_);
    bool was_current = false;
    {
      std::lock_guard<std::mutex> l(mu_);
      was_current = current_ == link;
      if (was_current) {
        current_.reset();
        own_.Release();
      }
    }
    cv_.notify_all();
    if (was_current) {
      queue_depth_->Set(0);  // an aborted link drops what was queued
      std::lock_guard<std::mutex> l(core_mu_);
      core_->Reset();
    }
  }
  std::lock_guard<std::mutex> l(link->mu);
  return link->end_status;
}

grpc::Status StageServer::Impl::TakeOwnership(grpc::ServerContext* ctx, const v1::PipelineOpen& o,
                                              std::unique_lock<std::mutex>& accept,
                                              std::shared_ptr<Link>* old) {
  using Steady = std::chrono::steady_clock;
  PipelineOwnership::Open open;
  open.controller_id = o.controller_id();
  open.epoch = o.epoch();
  open.key = o.controller_id();
  open.principal = o.controller_id();
  // Under mutual TLS the asking principal is the peer's certificate, not what it claims.
  if (std::vector<std::string> names = rpc::PeerNames(*ctx); !names.empty()) {
    open.principal = absl::StrCat("cert:", absl::StrJoin(names, ","));
    open.key = absl::StrCat(open.controller_id, "\n", open.principal);
  }
  const Steady::time_point wait_until =
      Steady::now() + std::min<Steady::duration>(own_.lease() / 2, std::chrono::seconds(2));
  std::unique_lock<std::mutex> l(mu_);
  while (true) {
    if (shutdown_) return Refuse(grpc::StatusCode::UNAVAILABLE, "the stage is shutting down");
    // accept_mu_ is held: no grant is being set up, so an owner without a live link is gone.
    if (own_.owned() && (!current_ || current_->stop || current_->input_ended)) own_.Release();
    const Steady::time_point now = Steady::now();
    const Steady::time_point last =
        current_ ? Steady::time_point(Steady::duration(current_->last_rx_ns.load())) : now;
    PipelineOwnership::Decision d = own_.Decide(open, now, last);
    if (d.verdict == PipelineOwnership::Verdict::kAccept) {
      if (own_.owned() || own_.epoch() != 0) {
        spdlog::info("stage {}: pipeline taken by controller '{}' epoch {}: {}", index(),
                     o.controller_id(), o.epoch(), d.reason);
      }
      own_.Grant(open, now);
      *old = std::move(current_);
      if (sink_ && !own_.IsCurrent(sink_->controller_id, sink_->epoch)) {
        sink_->detached = true;
        sink_->ctx->TryCancel();
        sink_.reset();
      }
      return grpc::Status::OK;
    }
    if (ctx->IsCancelled() || now >= wait_until) {
      return Refuse(grpc::StatusCode::FAILED_PRECONDITION,
                    absl::StrCat("epoch ", o.epoch(), " refused: ", d.reason));
    }
    // Wait with accept_mu_ released, so that the owner's link can end and be retired.
    l.unlock();
    accept.unlock();
    {
      std::unique_lock<std::mutex> w(mu_);
      cv_.wait_for(w, std::chrono::milliseconds(50));
    }
    accept.lock();
    l.lock();
  }
}

void StageServer::Impl::ReleaseOwnership() {
  {
    std::lock_guard<std::mutex> l(mu_);
    own_.Release();
  }
  cv_.notify_all();
}

grpc::Status StageServer::Impl::Results(grpc::ServerContext* ctx, ResStream* stream) {
  auto call = calls_.Enter();
  if (grpc::Status s = rpc::CheckPeerAllowed(*ctx, opt_.allow_peers, "Stage.Results"); !s.ok()) {
    return Refuse(s.error_code(), s.error_message());
  }
  if (!is_last()) {
    return Refuse(grpc::StatusCode::FAILED_PRECONDITION,
                  absl::StrCat("stage ", index(), " is not the last stage"));
  }
  v1::ResultsUpstream first;
  if (!stream->Read(&first) || !first.has_open()) {
    return Refuse(grpc::StatusCode::FAILED_PRECONDITION,
                  "the first message of a Results stream must be ResultsOpen");
  }
  auto sink = std::make_shared<ResultsSink>();
  sink->epoch = first.open().epoch();
  sink->controller_id = first.open().controller_id();
  sink->ctx = ctx;
  {
    // A Results stream that is not the owner's waits while the owner has its own (section 2a).
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    std::unique_lock<std::mutex> l(mu_);
    while (true) {
      if (shutdown_) return Refuse(grpc::StatusCode::UNAVAILABLE, "the stage is shutting down");
      const bool attached_is_current = sink_ && own_.IsCurrent(sink_->controller_id, sink_->epoch);
      if (own_.DecideResults(sink->controller_id, sink->epoch, attached_is_current) ==
          PipelineOwnership::ResultsVerdict::kAttach) {
        break;
      }
      if (ctx->IsCancelled()) return Refuse(grpc::StatusCode::CANCELLED, "cancelled");
      if (std::chrono::steady_clock::now() >= give_up) {
        return Refuse(grpc::StatusCode::ABORTED,
                      absl::StrCat("results epoch ", sink->epoch, " of controller '",
                                   sink->controller_id, "' does not own the pipeline"));
      }
      cv_.wait_for(l, std::chrono::milliseconds(100));
    }
    if (sink_) {
      sink_->detached = true;
      sink_->ctx->TryCancel();
    }
    sink_ = sink;
  }
  cv_.notify_all();

  std::thread writer([&] {
    while (true) {
      std::unique_ptr<v1::ResultsDownstream> r;
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] {
          return sink->detached || shutdown_ ||
                 (!results_.empty() && own_.IsCurrent(sink->controller_id, sink->epoch));
        });
        if (sink->detached || shutdown_) break;
        if (emulate_link()) {
          // Emulated link: an outcome leaves when its transmission ends, plus the latency.
          const auto due = results_at_.front();
          if (std::chrono::steady_clock::now() < due) {
            cv_.wait_until(l, due, [&] { return sink->detached || shutdown_; });
            continue;
          }
          results_at_.pop_front();
        }
        r = std::move(results_.front());
        results_.pop_front();
      }
      cv_.notify_all();  // room for the worker
      if (!stream->Write(*r)) {
        std::lock_guard<std::mutex> l(mu_);
        if (!sink->detached && own_.IsCurrent(sink->controller_id, sink->epoch)) {
          results_.push_front(std::move(r));
          if (emulate_link()) {
            results_at_.push_front(std::chrono::steady_clock::now() +
                                   std::chrono::microseconds(opt_.emulate_link_us));
          }
        }
        break;
      }
    }
  });

  v1::ResultsUpstream m;
  while (stream->Read(&m)) {
    if (m.has_cancel()) HandleCancel(m.cancel(), nullptr);
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    sink->detached = true;
    if (sink_ == sink) sink_.reset();
  }
  cv_.notify_all();
  writer.join();
  return grpc::Status::OK;
}

grpc::Status StageServer::Impl::GetInfo(grpc::ServerContext*, const v1::StageInfoRequest*,
                                        v1::StageInfo* info) {
  auto call = calls_.Enter();
  {
    std::lock_guard<std::mutex> l(core_mu_);
    core_->FillInfo(info);
  }
  info->set_max_message_bytes(opt_.max_message_bytes);
  info->set_link_window(opt_.window);
  std::lock_guard<std::mutex> l(mu_);
  info->set_epoch(own_.epoch());
  info->set_upstream_connected(current_ != nullptr && !current_->stop);
  info->set_downstream_connected(current_ != nullptr && current_->down && !current_->stop);
  info->set_results_attached(sink_ != nullptr &&
                             own_.IsCurrent(sink_->controller_id, sink_->epoch));
  return grpc::Status::OK;
}

grpc::Status StageServer::Impl::CheckOpen(const v1::PipelineOpen& o) const {
  auto refuse = [](const std::string& m) {
    return Refuse(grpc::StatusCode::FAILED_PRECONDITION, m);
  };
  if (o.receiver_stage_index() != index()) {
    return refuse(absl::StrCat("PipelineOpen is for stage ", o.receiver_stage_index(),
                               " but this is stage ", index()));
  }
  if (o.n_stages() == 0 || o.receiver_stage_index() >= o.n_stages() ||
      (o.receiver_stage_index() + 1 == o.n_stages()) != is_last()) {
    return refuse(absl::StrCat("n_stages ", o.n_stages(), " does not match stage ", index(),
                               is_last() ? " being" : " not being", " the last stage"));
  }
  const std::string& mine = core_->config().model_id;
  if (!o.model_id().empty() && !mine.empty() && o.model_id() != mine) {
    return refuse(absl::StrCat("PipelineOpen expects model '", o.model_id(),
                               "' but this stage serves '", mine, "'"));
  }
  if (o.epoch() == 0) return refuse("epoch 0 is not allowed");
  if (!is_first()) {
    const int d = o.hidden_dtype();
    if (d != v1::DTYPE_F32 && d != v1::DTYPE_F16 && d != v1::DTYPE_BF16 &&
        d != v1::DTYPE_UNSPECIFIED) {
      return refuse(absl::StrCat("hidden dtype ", d, " is not accepted by this stage"));
    }
  }
  return grpc::Status::OK;
}

void StageServer::Impl::CollectDownstreamStats(grpc::ServerContext* sctx, v1::StatsResponse* resp) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::min(sctx->deadline(), Clock::now() + std::chrono::seconds(5)));
  v1::StatsRequest req;
  req.set_include_pipeline(true);
  v1::StatsResponse down;
  const grpc::Status st = down_stub_->GetStats(&ctx, req, &down);
  if (st.ok() && down.services_size() > 0) {
    for (int i = 0; i < down.services_size(); ++i) {
      v1::ServiceStats* s = resp->add_services();
      *s = std::move(*down.mutable_services(i));
      if (i == 0 && s->address().empty()) s->set_address(opt_.downstream_address);
    }
    return;
  }
  v1::ServiceStats* s = resp->add_services();
  s->set_service(absl::StrCat("stage", index() + 1));
  s->set_address(opt_.downstream_address);
  v1::ErrorDetail* e = s->mutable_error();
  e->set_code(st.ok() ? v1::STATUS_CODE_INTERNAL : static_cast<v1::StatusCode>(st.error_code()));
  e->set_message(st.ok() ? "the next stage returned no statistics" : st.error_message());
  e->set_origin(absl::StrCat("stage/", index()));
  e->set_stage_index(index() + 1);
}

void StageServer::Impl::SetServing(bool serving) {
  if (serving == serving_ && serving_known_) return;
  serving_ = serving;
  serving_known_ = true;
  auto* h = server_->GetHealthCheckService();
  if (!h) return;
  h->SetServingStatus("", serving);
  h->SetServingStatus(kServiceName, serving);
}

void StageServer::Impl::HealthMonitor() {
  bool ever_ready = false;
  while (true) {
    {
      std::lock_guard<std::mutex> l(mu_);
      if (shutdown_) return;
    }
    const grpc_connectivity_state st = down_channel_->GetState(/*try_to_connect=*/true);
    if (st == GRPC_CHANNEL_READY) ever_ready = true;
    if (st == GRPC_CHANNEL_READY || (ever_ready && st == GRPC_CHANNEL_IDLE)) {
      SetServing(true);
    } else if (st == GRPC_CHANNEL_TRANSIENT_FAILURE || st == GRPC_CHANNEL_SHUTDOWN) {
      SetServing(false);
    }
    down_channel_->WaitForStateChange(st, Clock::now() + std::chrono::milliseconds(250));
  }
}

StageServer::StageServer(std::unique_ptr<stage::StageCore> core, StageServerOptions options)
    : impl_(std::make_unique<Impl>(std::move(core), std::move(options))) {}

StageServer::~StageServer() = default;

absl::Status StageServer::Start() { return impl_->Start(); }
int StageServer::port() const { return impl_->port(); }
int StageServer::metrics_port() const { return impl_->metrics_port(); }
void StageServer::Shutdown() { impl_->Shutdown(); }
void StageServer::Wait() { impl_->Wait(); }

}  // namespace pipeinfer::stage_server
