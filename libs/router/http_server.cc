#include "router/http_server.h"

#include <httplib.h>

#include <chrono>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "router/http_generation.h"
#include "router/http_limits.h"
#include "router/http_reply.h"
#include "router/trace_stream.h"
#include "router/web_assets.h"

namespace pipeinfer::router {

using json = nlohmann::json;

// A streamed answer to a client that stops reading fails (and is cancelled) after this long.
constexpr time_t kWriteTimeoutS = 5;

HttpServer::HttpServer(Core& core) : core_(core) {}

HttpServer::~HttpServer() { Stop(); }

absl::Status HttpServer::Start(const std::string& address) {
  const size_t colon = address.rfind(':');
  const std::string bad = absl::StrCat("--http must be HOST:PORT, got '", address, "'");
  if (colon == std::string::npos) return absl::InvalidArgumentError(bad);
  const std::string host = address.substr(0, colon);
  int port = 0;
  try {
    port = std::stoi(address.substr(colon + 1));
  } catch (...) {
    return absl::InvalidArgumentError(bad);
  }
  const RouterOptions& o = core_.options;
  if (o.tls.cert.empty() != o.tls.key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (!o.tls.cert.empty()) {
    // HTTPS with the same certificate as the gRPC server (clients are not asked for one: the
    // HTTP edge authenticates with API keys).
    auto ssl = std::make_unique<httplib::SSLServer>(o.tls.cert.c_str(), o.tls.key.c_str());
    if (!ssl->is_valid()) {
      return absl::InvalidArgumentError(
          absl::StrCat("HTTPS: cannot load the certificate ", o.tls.cert, " and key ", o.tls.key));
    }
    http_ = std::move(ssl);
  } else {
    http_ = std::make_unique<httplib::Server>();
  }
  const size_t threads = HttpThreads(o);
  http_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http_->set_payload_max_length(o.max_body_bytes);
  http_->set_read_timeout(o.http_read_timeout_s, 0);
  http_->set_write_timeout(kWriteTimeoutS, 0);
  http_->set_keep_alive_timeout(o.http_keep_alive_s);
  // The hook runs on the listening socket only (before bind). Only SO_REUSEADDR (restart while
  // old connections linger in TIME_WAIT): the library's default also sets SO_REUSEPORT, which lets
  // a second router bind the same port and take half of this one's connections.
  http_->set_socket_options([this](int sock) {
    listen_fd_ = sock;
    const int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  SetUpRoutes();
  port_ = port == 0 ? http_->bind_to_any_port(host) : (http_->bind_to_port(host, port) ? port : -1);
  if (port_ <= 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", address, " (HTTP): the port is taken or not allowed"));
  }
  // cpp-httplib listens with the backlog it was compiled with (5): a burst of connections beyond
  // it would be dropped or delayed by SYN retries.
  if (auto st = RaiseListenBacklog(listen_fd_, o.http_backlog); !st.ok()) return st;
  thread_ = std::thread([this] { http_->listen_after_bind(); });
  for (int i = 0; i < 500 && !http_->is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return absl::OkStatus();
}

void HttpServer::Stop() {
  if (http_) http_->stop();
  if (thread_.joinable()) thread_.join();
}

void HttpServer::SetUpRoutes() {
  Core& core = core_;
  // API keys (api_keys.h) before any route: the pages, and /health, /ready, /metrics unless
  // --protect-metrics, stay open; everything else needs "Authorization: Bearer <key>".
  http_->set_pre_routing_handler([&core](const httplib::Request& q, httplib::Response& r) {
    if (!core.api_keys.enabled()) return httplib::Server::HandlerResponse::Unhandled;
    const bool page = q.path == "/" || q.path == "/pipeline";
    const bool probe = q.path == "/health" || q.path == "/ready" || q.path == "/metrics";
    if (page || (probe && !core.options.protect_metrics)) {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    const absl::Status st = core.api_keys.Check(q.get_header_value("Authorization"));
    if (st.ok()) return httplib::Server::HandlerResponse::Unhandled;
    r.set_header("WWW-Authenticate", "Bearer");
    const bool known = q.path == "/v1/chat/completions" || q.path == "/v1/completions" ||
                       q.path == "/v1/models" || q.path == "/v1/internal/trace" || probe;
    SendError(core, r, known ? q.path : "other",
              Error{absl::StatusCode::kUnauthenticated, S(st.message()), "", "invalid_api_key"});
    return httplib::Server::HandlerResponse::Handled;
  });
  // Handlers with a content reader see the request before its body is read (ReadBody).
  http_->Post("/v1/chat/completions", [&core](const httplib::Request& q, httplib::Response& r,
                                              const httplib::ContentReader& reader) {
    ServeGeneration(core, q, r, reader, /*chat=*/true);
  });
  http_->Post("/v1/completions", [&core](const httplib::Request& q, httplib::Response& r,
                                         const httplib::ContentReader& reader) {
    ServeGeneration(core, q, r, reader, /*chat=*/false);
  });
  // Another method on a POST endpoint: 405 with Allow (not the library's 404).
  for (const char* path : {"/v1/chat/completions", "/v1/completions"}) {
    const auto not_allowed = [&core, path](const httplib::Request& q, httplib::Response& r) {
      Error e{absl::StatusCode::kInvalidArgument,
              absl::StrCat(q.method, " is not allowed on ", path, "; use POST"), "", "",
              /*http_status=*/405};
      r.set_header("Allow", "POST");
      SendError(core, r, path, e);
    };
    http_->Get(path, not_allowed);
    http_->Put(path, not_allowed);
    http_->Delete(path, not_allowed);
    http_->Patch(path, not_allowed);
  }
  // A client that asks before sending a body too large gets its 413 without sending it.
  http_->set_expect_100_continue_handler([&core](const httplib::Request& q, httplib::Response& r) {
    const uint64_t length = q.get_header_value<uint64_t>("Content-Length");
    if (length <= core.options.max_body_bytes) return 100;
    const bool known = q.path == "/v1/chat/completions" || q.path == "/v1/completions";
    SendError(core, r, known ? q.path : "other", BodyTooLarge(length, core.options.max_body_bytes));
    return 413;
  });
  http_->Get("/v1/models", [&core](const httplib::Request&, httplib::Response& r) {
    json m{{"id", core.model.id},
           {"object", "model"},
           {"created", core.model.created},
           {"owned_by", "pipeinfer"},
           {"context_length", core.requests->n_ctx()}};
    r.set_content(Dump(json{{"object", "list"}, {"data", json::array({m})}}), "application/json");
    core.metrics->CountHttp("/v1/models", 200, "none");
  });
  // The browser pages (web_assets.h) and the trace stream they read.
  http_->Get("/", [&core](const httplib::Request&, httplib::Response& r) {
    r.set_content(std::string(ChatPageHtml()), "text/html; charset=utf-8");
    core.metrics->CountHttp("/", 200, "none");
  });
  http_->Get("/pipeline", [&core](const httplib::Request&, httplib::Response& r) {
    r.set_content(std::string(PipelinePageHtml()), "text/html; charset=utf-8");
    core.metrics->CountHttp("/pipeline", 200, "none");
  });
  http_->Get("/v1/internal/trace",
             [&core](const httplib::Request& q, httplib::Response& r) { ServeTrace(core, q, r); });
  http_->Get("/health", [&core](const httplib::Request&, httplib::Response& r) {
    r.set_content("{\"status\":\"ok\"}", "application/json");
    core.metrics->CountHttp("/health", 200, "none");
  });
  http_->Get("/ready", [this](const httplib::Request&, httplib::Response& r) {
    const bool draining = core_.draining;
    const bool ok = !draining && core_.drafts->AnyHealthy();
    r.status = ok ? 200 : 503;
    r.set_content(ok         ? "{\"status\":\"ready\"}"
                  : draining ? "{\"status\":\"draining\"}"
                             : "{\"status\":\"no draft service replica is serving\"}",
                  "application/json");
    core_.metrics->CountHttp("/ready", r.status, "none");
  });
  http_->Get("/metrics", [&core](const httplib::Request&, httplib::Response& r) {
    core.metrics->CountHttp("/metrics", 200, "none");
    r.set_content(core.metrics->metrics()->Serialize(), "text/plain; version=0.0.4; charset=utf-8");
  });
  // Every error status the library produces itself (404, a 413 for a GET with a large body,
  // 400 for a malformed request) gets an OpenAI-style body too.
  const size_t max_body = core.options.max_body_bytes;
  http_->set_error_handler([max_body](const httplib::Request&, httplib::Response& r) {
    if (!r.body.empty()) return;
    Error e{absl::StatusCode::kNotFound, "not found", "", ""};
    if (r.status == 404) {
      e.message = "Unknown URL";
    } else if (r.status == 413) {
      e = BodyTooLarge(0, max_body);
    } else {
      e.message = absl::StrCat("HTTP ", r.status);
    }
    r.set_content(Dump(ErrorBody(e)), "application/json");
  });
  http_->set_exception_handler(
      [](const httplib::Request&, httplib::Response& r, std::exception_ptr) {
        r.status = 500;
        r.set_content(Dump(ErrorBody(Error{absl::StatusCode::kInternal, "internal error", "", ""})),
                      "application/json");
      });
}

}  // namespace pipeinfer::router
