#include "stage_server/stage_server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "metrics/metrics.h"
#include "pipeinfer/v1/stage.grpc.pb.h"
#include "rpc/server.h"

namespace pipeinfer::stage_server {
namespace {

using Clock = std::chrono::system_clock;
using UpStream = grpc::ServerReaderWriter<v1::StageUpstream, v1::StageDownstream>;
using DownStream = grpc::ClientReaderWriter<v1::StageDownstream, v1::StageUpstream>;
using ResStream = grpc::ServerReaderWriter<v1::ResultsDownstream, v1::ResultsUpstream>;

constexpr const char kServiceName[] = "pipeinfer.v1.Stage";

grpc::Status Refuse(grpc::StatusCode code, const std::string& message) {
  return grpc::Status(code, message);
}

// One accepted upstream Pipeline stream (one epoch) and, on non-last stages, its downstream stream.
struct Link {
  uint64_t epoch = 0;
  grpc::ServerContext* ctx = nullptr;
  UpStream* up = nullptr;

  std::mutex up_mu;  // serializes writes upstream; guards up_closed and ctx use
  bool up_closed = false;

  std::mutex mu;  // guards everything below except `stop`
  std::condition_variable cv;
  std::deque<stage::QueuedMessage> input;
  size_t held = 0;            // messages the worker took out of `input` and has not handed back yet
  bool input_closed = false;  // the upstream peer finished sending
  bool closing = false;       // we half-closed the downstream stream ourselves
  bool worker_done = false;
  int64_t down_credit = 0;
  grpc::Status end_status;        // what the upstream stream ends with
  std::atomic<bool> stop{false};  // abandon everything (superseded, link failure, shutdown)

  std::unique_ptr<grpc::ClientContext> down_ctx;
  std::unique_ptr<DownStream> down;
  v1::PipelineReady down_ready;  // the next stage's (and its successors') capacities
  std::thread worker, down_reader;

  bool WriteUp(const v1::StageUpstream& m) {
    std::lock_guard<std::mutex> l(up_mu);
    if (up_closed) return false;
    return up->Write(m);
  }
};

// The Results stream currently attached (last stage).
struct ResultsSink {
  uint64_t epoch = 0;
  grpc::ServerContext* ctx = nullptr;  // valid while this sink is StageServer::Impl::sink_
  bool detached = false;
};

}  // namespace

class StageServer::Impl final : public v1::Stage::Service {
 public:
  Impl(std::unique_ptr<stage::StageCore> core, StageServerOptions options)
      : core_(std::move(core)), opt_(std::move(options)), metrics_(core_->metrics()) {
    if (opt_.window == 0) opt_.window = 1;
    metrics::Metrics& m = *metrics_;
    cancels_received_ =
        &m.Counter("cancels_received_total", "Cancel messages received from downstream");
    queue_depth_ = &m.Gauge("input_queue_depth",
                            "Messages received from upstream and not yet dequeued (at most W)");
    received_bytes_ = &m.Counter("received_bytes_total",
                                 "Serialized bytes of the messages received from upstream");
    sent_bytes_ = &m.Counter(
        "sent_bytes_total",
        "Serialized bytes of the messages sent downstream (or as results by the last stage)");
  }

  ~Impl() override {
    Shutdown();
    if (server_) server_->Wait();
  }

  absl::Status Start() {
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
      down_channel_ = grpc::CreateCustomChannel(opt_.downstream_address,
                                                grpc::InsecureChannelCredentials(), args);
      down_stub_ = v1::Stage::NewStub(down_channel_);
    }
    auto server = rpc::StartServer(opt_.listen_address, this, opt_.max_message_bytes, &port_);
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

  int port() const { return port_; }
  int metrics_port() const { return metrics_http_ ? metrics_http_->port() : 0; }

  void Shutdown() {
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

  void Wait() {
    if (server_) server_->Wait();
  }

  // ---- Pipeline ---------------------------------------------------------------------------
  grpc::Status Pipeline(grpc::ServerContext* ctx, UpStream* stream) override {
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
    {
      std::lock_guard<std::mutex> l(mu_);
      if (shutdown_) return Refuse(grpc::StatusCode::UNAVAILABLE, "the stage is shutting down");
      if (o.epoch() <= max_epoch_) {
        return Refuse(grpc::StatusCode::FAILED_PRECONDITION,
                      absl::StrCat("epoch ", o.epoch(), " is not greater than the accepted epoch ",
                                   max_epoch_));
      }
      max_epoch_ = o.epoch();
      old = std::move(current_);
      if (sink_ && sink_->epoch < o.epoch()) {
        sink_->detached = true;
        sink_->ctx->TryCancel();
        sink_.reset();
      }
    }
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
    }

    auto link = std::make_shared<Link>();
    link->epoch = o.epoch();
    link->ctx = ctx;
    link->up = stream;
    if (!is_last()) {
      if (grpc::Status s = OpenDownstream(*link, o); !s.ok()) return s;
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
      for (const auto& d : link->down_ready.stages()) *ready.mutable_ready()->add_stages() = d;
    }
    if (!stream->Write(credit) || !stream->Write(ready)) {
      if (link->down) {
        link->down_ctx->TryCancel();
        (void)link->down->Finish();
      }
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
      if (m->has_open()) {
        AbortLink(*link, grpc::StatusCode::FAILED_PRECONDITION, "a second PipelineOpen");
        break;
      }
      received_bytes_->Increment(static_cast<double>(m->ByteSizeLong()));
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
      if (half_close) link->down->WritesDone();
      link->down_reader.join();
      (void)link->down->Finish();
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
        if (was_current) current_.reset();
      }
      if (was_current) {
        queue_depth_->Set(0);  // an aborted link drops what was queued
        std::lock_guard<std::mutex> l(core_mu_);
        core_->Reset();
      }
    }
    std::lock_guard<std::mutex> l(link->mu);
    return link->end_status;
  }

  // ---- Results ----------------------------------------------------------------------------
  grpc::Status Results(grpc::ServerContext* ctx, ResStream* stream) override {
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
    sink->ctx = ctx;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (shutdown_) return Refuse(grpc::StatusCode::UNAVAILABLE, "the stage is shutting down");
      if (sink->epoch < max_epoch_ || (sink_ && sink->epoch < sink_->epoch)) {
        return Refuse(grpc::StatusCode::ABORTED,
                      absl::StrCat("results epoch ", sink->epoch, " is older than the current"));
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
            return sink->detached || shutdown_ || (!results_.empty() && sink->epoch == max_epoch_);
          });
          if (sink->detached || shutdown_) break;
          r = std::move(results_.front());
          results_.pop_front();
        }
        cv_.notify_all();  // room for the worker
        if (!stream->Write(*r)) {
          std::lock_guard<std::mutex> l(mu_);
          if (!sink->detached && sink->epoch == max_epoch_) results_.push_front(std::move(r));
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

  // ---- GetStats / GetInfo -----------------------------------------------------------------
  grpc::Status GetStats(grpc::ServerContext* ctx, const v1::StatsRequest* req,
                        v1::StatsResponse* resp) override {
    metrics_->FillServiceStats(resp->add_services());
    if (req->include_pipeline() && !is_last()) CollectDownstreamStats(ctx, resp);
    return grpc::Status::OK;
  }

  grpc::Status GetInfo(grpc::ServerContext*, const v1::StageInfoRequest*,
                       v1::StageInfo* info) override {
    {
      std::lock_guard<std::mutex> l(core_mu_);
      core_->FillInfo(info);
    }
    info->set_max_message_bytes(opt_.max_message_bytes);
    info->set_link_window(opt_.window);
    std::lock_guard<std::mutex> l(mu_);
    info->set_epoch(max_epoch_);
    info->set_upstream_connected(current_ != nullptr && !current_->stop);
    info->set_downstream_connected(current_ != nullptr && current_->down && !current_->stop);
    info->set_results_attached(sink_ != nullptr && sink_->epoch == max_epoch_);
    return grpc::Status::OK;
  }

 private:
  bool is_last() const { return core_->engine().model().is_last(); }
  bool is_first() const { return core_->engine().model().is_first(); }
  uint32_t index() const { return core_->config().stage_index; }

  grpc::Status CheckOpen(const v1::PipelineOpen& o) const {
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

  // Appends the statistics of the next stage and, through it, of every stage after it. A stage
  // that cannot be reached is listed with `error` set.
  void CollectDownstreamStats(grpc::ServerContext* sctx, v1::StatsResponse* resp) {
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

  // Opens the link to the next stage and waits for its initial credit.
  grpc::Status OpenDownstream(Link& link, const v1::PipelineOpen& o) {
    if (!down_channel_->WaitForConnected(Clock::now() +
                                         std::chrono::milliseconds(opt_.connect_timeout_ms))) {
      return Refuse(grpc::StatusCode::UNAVAILABLE,
                    absl::StrCat("cannot connect to the next stage at ", opt_.downstream_address));
    }
    link.down_ctx = std::make_unique<grpc::ClientContext>();
    link.down = down_stub_->Pipeline(link.down_ctx.get());
    v1::StageDownstream open;
    *open.mutable_open() = o;
    open.mutable_open()->set_receiver_stage_index(index() + 1);
    open.mutable_open()->set_hidden_dtype(static_cast<v1::DType>(core_->config().hidden_dtype_out));
    v1::StageUpstream c, r;
    if (!link.down->Write(open) || !link.down->Read(&c) || !c.has_credit() ||
        !link.down->Read(&r) || !r.has_ready()) {
      link.down_ctx->TryCancel();
      grpc::Status s = link.down->Finish();
      link.down.reset();
      return Refuse(grpc::StatusCode::UNAVAILABLE,
                    absl::StrCat("the next stage at ", opt_.downstream_address,
                                 " refused the link: ", s.error_message()));
    }
    link.down_credit = c.credit().messages();
    link.down_ready = std::move(*r.mutable_ready());
    return grpc::Status::OK;
  }

  // Ends a link: both of its streams stop, queued input is dropped. The sync API cannot end a
  // stream that a Read is blocked on except by cancelling it, so the reason is first sent
  // upstream in-band as an ErrorDetail (session_id 0), then the call is cancelled.
  void AbortLink(Link& link, grpc::StatusCode code, const std::string& why) {
    {
      std::lock_guard<std::mutex> l(link.mu);
      if (link.stop) return;
      link.stop = true;
      link.end_status = grpc::Status(code, why);
    }
    link.cv.notify_all();
    { std::lock_guard<std::mutex> l(mu_); }
    cv_.notify_all();
    {
      std::lock_guard<std::mutex> l(link.up_mu);
      if (!link.up_closed) {
        if (code != grpc::StatusCode::CANCELLED) {
          v1::StageUpstream e;
          v1::ErrorDetail* d = e.mutable_error();
          d->set_code(static_cast<v1::StatusCode>(code));
          d->set_message(why);
          d->set_retryable(code == grpc::StatusCode::UNAVAILABLE ||
                           code == grpc::StatusCode::ABORTED);
          d->set_origin(absl::StrCat("stage/", index()));
          d->set_stage_index(index());
          (void)link.up->Write(e);
        }
        link.ctx->TryCancel();
      }
    }
    if (link.down_ctx) link.down_ctx->TryCancel();
  }

  // A Cancel from downstream (or, on the last stage, from the controller): forwarded upstream
  // first (not by stage 0, whose upstream peer is the controller), then recorded.
  void HandleCancel(const v1::Cancel& c, Link* link) {
    cancels_received_->Increment();
    if (index() > 0) {
      std::shared_ptr<Link> cur;
      if (!link) {
        std::lock_guard<std::mutex> l(mu_);
        cur = current_;
        link = cur.get();
      }
      if (link) {
        v1::StageUpstream u;
        *u.mutable_cancel() = c;
        (void)link->WriteUp(u);
      }
    }
    core_->Cancel(std::vector<uint64_t>(c.run_ids().begin(), c.run_ids().end()));
  }

  void Worker(std::shared_ptr<Link> link) {
    Link& l = *link;
    const size_t window = opt_.window;
    std::deque<stage::QueuedMessage> work;
    while (!l.stop) {
      {
        std::unique_lock<std::mutex> lk(l.mu);
        l.cv.wait(lk, [&] { return l.stop || !l.input.empty() || l.input_closed; });
        if (l.stop || l.input.empty()) break;
        // Everything queued is a candidate for this forward pass.
        l.held = l.input.size();
        work.swap(l.input);
      }
      size_t taken = 0;
      stage::StageOutput out;
      {
        std::lock_guard<std::mutex> lk(core_mu_);
        if (!l.stop) out = core_->Step(work, &taken);
      }
      {
        // What the pass left goes back in front of what arrived meanwhile, in order.
        std::lock_guard<std::mutex> lk(l.mu);
        while (!work.empty()) {
          l.input.push_front(std::move(work.back()));
          work.pop_back();
        }
        l.held = 0;
        queue_depth_->Set(static_cast<double>(l.input.size()));
      }
      if (l.stop) break;
      if (taken > 0) {
        v1::StageUpstream credit;
        credit.mutable_credit()->set_messages(static_cast<uint32_t>(taken));
        (void)l.WriteUp(credit);
      }
      for (auto& e : out.errors) {
        v1::StageUpstream u;
        *u.mutable_error() = *e;
        (void)l.WriteUp(u);
      }
      for (auto& f : out.forward) {
        {
          std::unique_lock<std::mutex> lk(l.mu);
          l.cv.wait(lk, [&] { return l.stop || l.down_credit > 0; });
          if (l.stop) break;
          --l.down_credit;
        }
        sent_bytes_->Increment(static_cast<double>(f->ByteSizeLong()));
        if (!l.down->Write(*f)) {
          AbortLink(
              l, grpc::StatusCode::UNAVAILABLE,
              absl::StrCat("the link to the next stage at ", opt_.downstream_address, " failed"));
          break;
        }
      }
      if (!out.results.empty()) {
        std::unique_lock<std::mutex> lk(mu_);
        for (auto& r : out.results) {
          cv_.wait(lk, [&] { return l.stop || shutdown_ || results_.size() < window; });
          if (l.stop || shutdown_) break;
          sent_bytes_->Increment(static_cast<double>(r->ByteSizeLong()));
          results_.push_back(std::move(r));
        }
        lk.unlock();
        cv_.notify_all();
      }
    }
    {
      std::lock_guard<std::mutex> lk(l.mu);
      l.worker_done = true;
    }
    l.cv.notify_all();
  }

  void DownReader(std::shared_ptr<Link> link) {
    Link& l = *link;
    v1::StageUpstream m;
    while (l.down->Read(&m)) {
      switch (m.msg_case()) {
        case v1::StageUpstream::kCancel:
          HandleCancel(m.cancel(), &l);
          break;
        case v1::StageUpstream::kCredit: {
          {
            std::lock_guard<std::mutex> lk(l.mu);
            l.down_credit += m.credit().messages();
          }
          l.cv.notify_all();
          break;
        }
        case v1::StageUpstream::kError:
          (void)l.WriteUp(m);
          break;
        case v1::StageUpstream::kReady:
          break;  // only expected once, right after the initial credit (read by OpenDownstream)
        default:
          break;
      }
    }
    bool expected = false;
    {
      std::lock_guard<std::mutex> lk(l.mu);
      expected = l.stop || l.closing;
    }
    if (!expected) {
      AbortLink(l, grpc::StatusCode::UNAVAILABLE,
                absl::StrCat("the link to the next stage at ", opt_.downstream_address, " ended"));
    }
  }

  void SetServing(bool serving) {
    if (serving == serving_ && serving_known_) return;
    serving_ = serving;
    serving_known_ = true;
    auto* h = server_->GetHealthCheckService();
    if (!h) return;
    h->SetServingStatus("", serving);
    h->SetServingStatus(kServiceName, serving);
  }

  // Non-last stages: SERVING while the channel to the next stage is (or was last) connected.
  void HealthMonitor() {
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

  std::unique_ptr<stage::StageCore> core_;
  std::mutex core_mu_;  // StageCore::Handle/Reset/FillInfo and KV stats (Cancel is thread-safe)
  StageServerOptions opt_;
  std::shared_ptr<grpc::Channel> down_channel_;
  std::unique_ptr<v1::Stage::Stub> down_stub_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::thread health_thread_;
  bool serving_ = false, serving_known_ = false;  // health thread / Start only

  std::mutex accept_mu_;  // serializes accepting and retiring Pipeline links
  std::mutex mu_;         // guards the members below
  std::condition_variable cv_;
  bool shutdown_ = false;
  uint64_t max_epoch_ = 0;
  std::shared_ptr<Link> current_;
  std::shared_ptr<ResultsSink> sink_;
  std::deque<std::unique_ptr<v1::ResultsDownstream>> results_;  // last stage, at most W
  std::shared_ptr<metrics::Metrics> metrics_;
  std::unique_ptr<metrics::MetricsHttpServer> metrics_http_;
  prometheus::Counter* cancels_received_ = nullptr;
  prometheus::Gauge* queue_depth_ = nullptr;
  prometheus::Counter* received_bytes_ = nullptr;
  prometheus::Counter* sent_bytes_ = nullptr;
};

StageServer::StageServer(std::unique_ptr<stage::StageCore> core, StageServerOptions options)
    : impl_(std::make_unique<Impl>(std::move(core), std::move(options))) {}

StageServer::~StageServer() = default;

absl::Status StageServer::Start() { return impl_->Start(); }
int StageServer::port() const { return impl_->port(); }
int StageServer::metrics_port() const { return impl_->metrics_port(); }
void StageServer::Shutdown() { impl_->Shutdown(); }
void StageServer::Wait() { impl_->Wait(); }

}  // namespace pipeinfer::stage_server
