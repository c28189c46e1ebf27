// Router::Start wires the parts together. The files of libs/router, one concern each:
//   error.{h,cc}             Error and its HTTP / OpenAI rendering
//   served_model.{h,cc}      tokenizer, template, id, n_ctx of the served GGUF; prompt text bound
//   request_builder.{h,cc}   validation and tokenization shared by HTTP and gRPC
//   openai_request.{h,cc}    OpenAI JSON bodies -> GenRequest
//   openai_response.{h,cc}   OpenAI answer objects and SSE chunks
//   gen_request.h            GenRequest / GenResult / GenSink
//   stop_matcher.{h,cc}      text stop sequences
//   generation.{h,cc}        the Draft.Generate call and incremental detokenizing
//   admission.{h,cc}         max_inflight slots and max_queue waiters
//   draft_pool.{h,cc}        the draft service replicas: health checks, least-loaded choice
//   draft_call.h             one request's draft call attempts, cancellable
//   request_report.{h,cc}    request-level metrics and the access log
//   router_metrics.{h,cc}    the router's Prometheus metrics
//   connection_watch.{h,cc}  noticing that an HTTP client went away (socket polling)
//   client_link.{h,cc}       one HTTP request's client: gone flag, draft call, watch
//   http_limits.{h,cc}       body limit, listen backlog, worker threads
//   http_reply.{h,cc}        HTTP error responses
//   http_generation.{h,cc}   POST /v1/chat/completions, /v1/completions (whole answers)
//   sse_stream.{h,cc}        streamed answers (server-sent events)
//   http_server.{h,cc}       the cpp-httplib server, its routes and settings
//   grpc_service.{h,cc}      the pipeinfer.v1.Router gRPC service
//   core.h                   what the front ends share
#include "router/router.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "pipeinfer/v1/draft.grpc.pb.h"
#include "router/core.h"
#include "router/grpc_service.h"
#include "router/http_server.h"
#include "router/request_report.h"
#include "rpc/server.h"

namespace pipeinfer::router {

class Router::Impl {
 public:
  explicit Impl(RouterOptions o) { core_.options = std::move(o); }
  ~Impl() { Shutdown(); }

  absl::Status Start() {
    RouterOptions& o = core_.options;
    auto model = LoadServedModel(o.model_path, o.chat_template, o.model_id);
    if (!model.ok()) return model.status();
    core_.model = std::move(*model);
    o.model_id = core_.model.id;
    if (o.max_inflight < 1 || o.max_queue < 0) {
      return absl::InvalidArgumentError("--max-inflight must be >= 1 and --max-queue >= 0");
    }
    if (o.max_body_bytes < 1 || o.http_backlog < 1 || o.http_read_timeout_s < 1 ||
        o.http_keep_alive_s < 1 || o.http_threads < 0) {
      return absl::InvalidArgumentError(
          "--max-body-bytes, --http-backlog and the HTTP timeouts must be >= 1");
    }

    core_.metrics = std::make_unique<RouterMetrics>(core_.model.id);
    auto keys = ApiKeys::FromFile(o.api_keys_file);
    if (!keys.ok()) return keys.status();
    core_.api_keys = std::move(*keys);
    auto pool = DraftPool::Create(o.draft_address, *core_.metrics,
                                  std::chrono::milliseconds(std::max(50, o.draft_check_ms)), o.tls);
    if (!pool.ok()) return pool.status();
    core_.drafts = std::move(*pool);
    core_.drafts->Start(std::chrono::milliseconds(std::max(0, o.draft_wait_ms)));
    uint32_t n_ctx = core_.model.n_ctx;
    for (const auto& replica : core_.drafts->replicas()) {
      // n_ctx as the draft services serve it (it may be smaller than the training context), and
      // their default mode (the metrics label of requests that leave it unset).
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      v1::DraftInfo info;
      if (!v1::Draft::NewStub(replica->channel)
               ->GetInfo(&ctx, v1::DraftInfoRequest(), &info)
               .ok()) {
        continue;
      }
      if (info.model().n_ctx() > 0) n_ctx = info.model().n_ctx();
      v1::SpecConfig mode;
      mode.set_mode(info.model().default_mode());
      core_.default_mode = ModeLabel(mode, "");
      core_.n_stages = info.model().n_stages();
      break;
    }
    if (core_.default_mode.empty()) {
      spdlog::warn(
          "no draft service answered GetInfo at start; the context length comes from "
          "the model file");
    }
    if (n_ctx == 0) n_ctx = 2048;
    const bool explicit_bound = o.max_prompt_chars > 0;
    const size_t prompt_bound =
        explicit_bound ? o.max_prompt_chars : PromptBytesBound(*core_.model.tok, n_ctx);
    core_.requests =
        std::make_unique<RequestBuilder>(core_.model, n_ctx, prompt_bound, explicit_bound);

    core_.admission = std::make_unique<Admission>(
        o.max_inflight, o.max_queue, &core_.metrics->running(), &core_.metrics->waiting());
    core_.generator = std::make_unique<Generator>(*core_.drafts, *core_.model.tok, *core_.metrics);
    core_.watcher = std::make_unique<DisconnectWatcher>();

    service_ = MakeRouterService(core_);
    auto server = rpc::StartServer(o.grpc_address, service_.get(), 0, &grpc_port_, o.tls);
    if (!server.ok()) return server.status();
    grpc_server_ = std::move(*server);
    if (auto* h = grpc_server_->GetHealthCheckService()) {
      h->SetServingStatus(true);
      h->SetServingStatus("pipeinfer.v1.Router", true);
    }
    http_ = std::make_unique<HttpServer>(core_);
    return http_->Start(o.http_address);
  }

  void Drain(std::chrono::milliseconds limit) {
    core_.draining = true;
    if (grpc_server_) {
      if (auto* h = grpc_server_->GetHealthCheckService()) {
        h->SetServingStatus(false);
        h->SetServingStatus("pipeinfer.v1.Router", false);
      }
    }
    const auto until = std::chrono::steady_clock::now() + limit;
    int busy = core_.admission ? core_.admission->Busy() : 0;
    spdlog::info("draining: {} request(s) in progress, up to {} ms", busy, limit.count());
    while (busy > 0 && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      busy = core_.admission->Busy();
    }
    if (busy > 0) {
      spdlog::warn("drain limit reached with {} request(s) still in progress", busy);
    } else {
      spdlog::info("drained");
    }
  }

  void Shutdown() {
    std::lock_guard<std::mutex> l(shutdown_mu_);
    if (down_) return;
    down_ = true;
    if (http_) http_->Stop();
    if (grpc_server_) {
      grpc_server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    }
    done_cv_.notify_all();
  }

  void Wait() {
    std::unique_lock<std::mutex> l(shutdown_mu_);
    done_cv_.wait(l, [&] { return down_; });
  }

  int http_port() const { return http_ ? http_->port() : 0; }
  int grpc_port() const { return grpc_port_; }
  const std::string& model_id() const { return core_.options.model_id; }

 private:
  Core core_;
  std::unique_ptr<grpc::Service> service_;
  std::unique_ptr<grpc::Server> grpc_server_;
  int grpc_port_ = 0;
  std::unique_ptr<HttpServer> http_;

  std::mutex shutdown_mu_;
  std::condition_variable done_cv_;
  bool down_ = false;
};

Router::Router(RouterOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Router::~Router() = default;
absl::Status Router::Start() { return impl_->Start(); }
int Router::http_port() const { return impl_->http_port(); }
int Router::grpc_port() const { return impl_->grpc_port(); }
const std::string& Router::model_id() const { return impl_->model_id(); }
void Router::Drain(std::chrono::milliseconds limit) { impl_->Drain(limit); }
void Router::Shutdown() { impl_->Shutdown(); }
void Router::Wait() { impl_->Wait(); }

}  // namespace pipeinfer::router
