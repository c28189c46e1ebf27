// The router of a PipeInfer cluster: an OpenAI-compatible HTTP gateway (cpp-httplib) and the
// pipeinfer.v1.Router gRPC service (plus health and reflection), both in front of one or more
// draft services (Draft.Generate), one per pipeline replica (draft_pool.h).
//
// For each request the router renders the chat template (or takes a raw prompt), bounds the
// prompt text, tokenizes, enforces the context limit, admits the request (at most max_inflight
// generating, at most max_queue waiting; beyond: HTTP 429 with Retry-After / RESOURCE_EXHAUSTED),
// calls Draft.Generate, detokenizes incrementally (UTF-8 safe), matches text stop sequences
// (holding back text that may be the start of one) and cancels the draft call when a stop
// sequence matched or the client goes away (an HTTP client is noticed within ~100 ms even while
// nothing is written: connection_watch.h).
//
// HTTP error statuses (OpenAI-style body {"error": {"message", "type", "param", "code"}}):
//   body over max_body_bytes -> 413 "request_too_large" (before the body is read or parsed);
//   malformed JSON, invalid UTF-8 -> 400; a field of the wrong JSON type -> 400 (not 422);
//   out-of-range parameter, n != 1, > 4 stop sequences -> 400; unknown model -> 404;
//   prompt text over the text bound, or prompt (+ max_tokens) longer than the context -> 400
//   with code "context_length_exceeded" (not 413); admission full -> 429 + Retry-After; draft
//   service unavailable -> 503.
// HTTP defaults follow OpenAI: temperature 1 when absent. Over gRPC, unset sampling fields take
// the draft service's defaults. A max_tokens beyond the context is refused on both (400
// "context_length_exceeded" / OUT_OF_RANGE), as OpenAI does; it is never clamped.
//
// The parts live in libs/router/*.{h,cc}, one concern each (see router.cc); gRPC and cpp-httplib
// includes stay in the .cc files.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "rpc/tls.h"

namespace pipeinfer::router {

struct RouterOptions {
  std::string http_address = "127.0.0.1:0";  // HOST:PORT; port 0 picks a free one
  std::string grpc_address = "127.0.0.1:0";  // HOST:PORT; port 0 picks a free one
  // The draft services, one per pipeline replica: HOST:PORT[,HOST:PORT...] (or gRPC targets).
  std::string draft_address;
  int draft_check_ms = 1000;  // how often every replica's health is checked
  int draft_wait_ms = 5000;   // at start, how long to wait for a first healthy replica
  std::string model_path;     // the target GGUF (tokenizer, template, n_ctx)
  std::string model_id;       // empty = the file name without ".gguf"
  std::string chat_template;  // template name override; empty = detect
  int max_inflight = 8;       // requests generating at once
  int max_queue = 16;         // requests waiting for a slot
  int retry_after_s = 1;      // Retry-After of a 429 or 503

  // HTTP limits (see http_limits.h).
  size_t max_body_bytes = size_t{8} << 20;  // larger request bodies get 413 unread
  // Prompt text bound in bytes (chat: the rendered template with every message), checked before
  // tokenizing; 0 = derived from the context: n_ctx times the longest token text of the
  // vocabulary, which no prompt that fits the context can exceed.
  size_t max_prompt_chars = 0;
  int http_threads = 0;          // 0 = max(64, max_inflight + max_queue + 32)
  int http_backlog = 512;        // listen backlog (the kernel caps it at net.core.somaxconn)
  int http_read_timeout_s = 10;  // a request's bytes must keep arriving within this
  int http_keep_alive_s = 5;     // an idle keep-alive connection is closed after this

  // Security (README "Security"). TLS: with cert + key the gRPC server and HTTP (HTTPS) use
  // them; with ca the gRPC server requires client certificates signed by it, and the links to
  // the draft services verify their certificates against it (presenting cert + key).
  rpc::TlsFiles tls;
  // API keys file (router/api_keys.h), one key per line; empty = no keys (open router).
  std::string api_keys_file;
  // With keys: /health, /ready and /metrics need the key too (by default they stay open).
  bool protect_metrics = false;
};

class Router {
 public:
  explicit Router(RouterOptions options);
  ~Router();  // shuts down if still running
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // Loads the tokenizer and template from the model, asks the draft service for n_ctx (falls
  // back to the GGUF's context length), then starts the gRPC and HTTP servers.
  absl::Status Start();
  int http_port() const;
  int grpc_port() const;
  // The model id served.
  const std::string& model_id() const;
  // Graceful drain (SIGTERM): /ready answers 503 and the gRPC health service NOT_SERVING at
  // once, so that load balancers stop sending; requests keep being served; returns when no
  // request is generating or waiting, or after `limit`. Then call Shutdown().
  void Drain(std::chrono::milliseconds limit);
  // Stops both servers (idempotent).
  void Shutdown();
  // Blocks until Shutdown() has run.
  void Wait();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pipeinfer::router
