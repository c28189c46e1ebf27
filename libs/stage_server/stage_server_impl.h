// Private to libs/stage_server: the stage server's implementation class and its per-link state,
// shared by stage_server.cc (service, accepting links, results) and stage_link.cc (a link's
// worker, its downstream stream and cancellation).
#pragma once

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
#include "common/call_tracker.h"
#include "common/delay_line.h"
#include "common/link_pacer.h"
#include "metrics/metrics.h"
#include "pipeinfer/v1/stage.grpc.pb.h"
#include "rpc/credentials.h"
#include "rpc/server.h"
#include "stage_server/pipeline_ownership.h"

namespace pipeinfer::stage_server {
namespace internal {

using Clock = std::chrono::system_clock;
using UpStream = grpc::ServerReaderWriter<v1::StageUpstream, v1::StageDownstream>;
using DownStream = grpc::ClientReaderWriter<v1::StageDownstream, v1::StageUpstream>;
using ResStream = grpc::ServerReaderWriter<v1::ResultsDownstream, v1::ResultsUpstream>;

constexpr const char kServiceName[] = "pipeinfer.v1.Stage";

inline grpc::Status Refuse(grpc::StatusCode code, const std::string& message) {
  return grpc::Status(code, message);
}

// One accepted upstream Pipeline stream (one epoch) and, on non-last stages, its downstream stream.
struct Link {
  uint64_t epoch = 0;
  // When the upstream peer last sent a message (steady clock, ns): the ownership lease's idle
  // clock. `input_ended`: the peer finished (or lost) its side; the link no longer holds the lease.
  std::atomic<int64_t> last_rx_ns{0};
  std::atomic<bool> input_ended{false};
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
  // Benchmarks (--emulate-link-us / --emulate-link-mbps): the sends downstream and upstream,
  // delayed and paced; null otherwise.
  std::unique_ptr<DelayLine> down_line, up_line;

  bool WriteUp(const v1::StageUpstream& m) {
    if (up_line) {
      return up_line->Post(
          [this, m] {
            std::lock_guard<std::mutex> l(up_mu);
            if (!up_closed && !stop) (void)up->Write(m);
          },
          m.ByteSizeLong());
    }
    std::lock_guard<std::mutex> l(up_mu);
    if (up_closed) return false;
    return up->Write(m);
  }
};

// The Results stream currently attached (last stage).
struct ResultsSink {
  uint64_t epoch = 0;
  std::string controller_id;
  grpc::ServerContext* ctx = nullptr;  // valid while this sink is StageServer::Impl::sink_
  bool detached = false;
};

}  // namespace internal

using namespace internal;  // NOLINT: the Impl and its link types share this private header

class StageServer::Impl final : public v1::Stage::Service {
 public:
  Impl(std::unique_ptr<stage::StageCore> core, StageServerOptions options)
      : core_(std::move(core)), opt_(std::move(options)), metrics_(core_->metrics()) {
    if (opt_.window == 0) opt_.window = 1;
    results_pacer_ = LinkPacer(opt_.emulate_link_mbps);
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
    calls_.WaitIdle();
  }

  absl::Status Start();

  int port() const { return port_; }
  int metrics_port() const { return metrics_http_ ? metrics_http_->port() : 0; }

  void Shutdown();

  void Wait() {
    if (server_) server_->Wait();
  }

  // ---- Pipeline ---------------------------------------------------------------------------
  grpc::Status Pipeline(grpc::ServerContext* ctx, UpStream* stream) override;

  // ---- Results ----------------------------------------------------------------------------
  grpc::Status Results(grpc::ServerContext* ctx, ResStream* stream) override;

  // ---- GetStats / GetInfo -----------------------------------------------------------------
  grpc::Status GetStats(grpc::ServerContext* ctx, const v1::StatsRequest* req,
                        v1::StatsResponse* resp) override {
    auto call = calls_.Enter();
    metrics_->FillServiceStats(resp->add_services());
    if (req->include_pipeline() && !is_last()) CollectDownstreamStats(ctx, resp);
    return grpc::Status::OK;
  }

  grpc::Status GetInfo(grpc::ServerContext*, const v1::StageInfoRequest*,
                       v1::StageInfo* info) override;

 private:
  bool is_last() const { return core_->engine().model().is_last(); }
  // Benchmarks: links are emulated (latency and/or rate); sends go through DelayLines.
  bool emulate_link() const { return opt_.emulate_link_us > 0 || opt_.emulate_link_mbps > 0; }
  bool is_first() const { return core_->engine().model().is_first(); }
  uint32_t index() const { return core_->config().stage_index; }

  grpc::Status CheckOpen(const v1::PipelineOpen& o) const;

  // Applies the ownership rules (pipeline_ownership.h) to an open: on acceptance grants it, moves
  // the current link to `old` and detaches a Results stream that does not belong to it. A contested
  // open waits (accept_mu_ released) up to min(lease / 2, 2 s) before it is refused.
  grpc::Status TakeOwnership(grpc::ServerContext* ctx, const v1::PipelineOpen& o,
                             std::unique_lock<std::mutex>& accept, std::shared_ptr<Link>* old);
  // A granted open whose link could not be set up gives the pipeline back.
  void ReleaseOwnership();

  // Appends the statistics of the next stage and, through it, of every stage after it. A stage
  // that cannot be reached is listed with `error` set.
  void CollectDownstreamStats(grpc::ServerContext* sctx, v1::StatsResponse* resp);

  // Opens the link to the next stage and waits for its initial credit.
  grpc::Status OpenDownstream(Link& link, const v1::PipelineOpen& o);

  // Ends a link: both of its streams stop, queued input is dropped. The sync API cannot end a
  // stream that a Read is blocked on except by cancelling it, so the reason is first sent
  // upstream in-band as an ErrorDetail (session_id 0), then the call is cancelled.
  void AbortLink(Link& link, grpc::StatusCode code, const std::string& why);

  // A Cancel from downstream (or, on the last stage, from the controller): forwarded upstream
  // first (not by stage 0, whose upstream peer is the controller), then recorded.
  void HandleCancel(const v1::Cancel& c, Link* link);

  void Worker(std::shared_ptr<Link> link);

  void DownReader(std::shared_ptr<Link> link);

  void SetServing(bool serving);

  // Non-last stages: SERVING while the channel to the next stage is (or was last) connected.
  void HealthMonitor();

  // The handlers in progress; the destructor waits for them (call_tracker.h).
  CallTracker calls_;
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
  PipelineOwnership own_{std::chrono::milliseconds(opt_.owner_lease_ms)};
  std::shared_ptr<Link> current_;
  std::shared_ptr<ResultsSink> sink_;
  std::deque<std::unique_ptr<v1::ResultsDownstream>> results_;  // last stage, at most W
  // When each of results_ may be written (only with link emulation): its transmission end on the
  // Results link (results_pacer_) plus the latency.
  std::deque<std::chrono::steady_clock::time_point> results_at_;
  LinkPacer results_pacer_{0};
  std::shared_ptr<metrics::Metrics> metrics_;
  std::unique_ptr<metrics::MetricsHttpServer> metrics_http_;
  prometheus::Counter* cancels_received_ = nullptr;
  prometheus::Gauge* queue_depth_ = nullptr;
  prometheus::Counter* received_bytes_ = nullptr;
  prometheus::Counter* sent_bytes_ = nullptr;
};

}  // namespace pipeinfer::stage_server
