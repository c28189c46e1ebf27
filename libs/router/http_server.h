// The router's OpenAI-compatible HTTP server (cpp-httplib): the routes (/v1/chat/completions,
// /v1/completions, /v1/models, /health, /ready, /metrics), OpenAI-style bodies for every error
// status, and the connection limits of http_limits.h (body size, read and keep-alive timeouts,
// worker threads, listen backlog).
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "router/core.h"

namespace httplib {
class Server;
}  // namespace httplib

namespace pipeinfer::router {

class HttpServer {
 public:
  explicit HttpServer(Core& core);
  ~HttpServer();  // stops
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds `address` (HOST:PORT, port 0 = a free one), raises the listen backlog and serves on
  // its own thread.
  absl::Status Start(const std::string& address);
  int port() const { return port_; }
  // Stops accepting and waits for the requests in progress (idempotent).
  void Stop();

 private:
  void SetUpRoutes();

  Core& core_;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  int port_ = 0;
  int listen_fd_ = -1;  // recorded by the socket-options hook, for RaiseListenBacklog
};

}  // namespace pipeinfer::router
