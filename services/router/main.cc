// `pipeinfer-router`: the cluster's front door. Serves the OpenAI-compatible HTTP API and the
// pipeinfer.v1.Router gRPC service in front of one or more draft services (pipeline replicas),
// until SIGINT (stops at once) or SIGTERM (drains first: /ready turns 503, requests in progress
// finish within --drain-seconds).
#include <signal.h>
#include <cstdlib>

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>

#include "common/stop_signals.h"
#include "log/log_flags.h"
#include "router/router.h"

namespace {

int Fail(const std::string& message) { return pipeinfer::log::Fail(message); }

std::string Host(const std::string& addr) { return addr.substr(0, addr.rfind(':')); }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pipeinfer-router: OpenAI-compatible HTTP + gRPC router of a PipeInfer cluster"};
  pipeinfer::router::RouterOptions o;
  app.add_option("--http", o.http_address, "HTTP listen address HOST:PORT")->required();
  app.add_option("--grpc", o.grpc_address, "gRPC listen address HOST:PORT")->required();
  app.add_option("--draft", o.draft_address,
                 "The draft service's HOST:PORT; several (one per pipeline replica) separated "
                 "by commas: requests go to the least-loaded healthy one")
      ->required();
  app.add_option("--draft-check-ms", o.draft_check_ms,
                 "How often every draft service replica's health is checked")
      ->capture_default_str()
      ->check(CLI::Range(50, 600000));
  int drain_seconds = 30;
  app.add_option("--drain-seconds", drain_seconds,
                 "On SIGTERM: /ready turns 503 at once, requests in progress get this long to "
                 "finish, then the router exits")
      ->capture_default_str()
      ->check(CLI::Range(0, 3600));
  pipeinfer::log::Options log_options;
  pipeinfer::log::AddFlags(app, &log_options);
  app.add_option("--model,-m", o.model_path, "The target GGUF model (tokenizer, chat template)")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--model-id", o.model_id, "Model id served (default: file name without .gguf)");
  app.add_option("--chat-template", o.chat_template,
                 "Chat template override (chatml, llama2, mistral, zephyr, llama3, plain)")
      ->check(CLI::IsMember({"chatml", "llama2", "mistral", "zephyr", "llama3", "plain"}));
  app.add_option("--max-inflight", o.max_inflight, "Most requests generating at once")
      ->check(CLI::Range(1, 4096));
  app.add_option("--max-queue", o.max_queue, "Most requests waiting for a slot (beyond: 429)")
      ->check(CLI::Range(0, 65536));
  app.add_option("--max-body-bytes", o.max_body_bytes,
                 "Largest HTTP request body; larger ones get 413 without being read")
      ->capture_default_str()
      ->check(CLI::Range(size_t{1}, size_t{1} << 34));
  app.add_option("--max-prompt-chars", o.max_prompt_chars,
                 "Longest prompt text in bytes (chat: the rendered template), checked before "
                 "tokenizing; 0 = n_ctx times the longest token of the vocabulary")
      ->capture_default_str();
  app.add_option("--http-threads", o.http_threads,
                 "HTTP worker threads (0 = max(64, max-inflight + max-queue + 32))")
      ->capture_default_str()
      ->check(CLI::Range(0, 65536));
  app.add_option("--http-backlog", o.http_backlog, "HTTP listen backlog")
      ->capture_default_str()
      ->check(CLI::Range(1, 65535));
  app.add_option("--http-read-timeout-s", o.http_read_timeout_s,
                 "Seconds a request's bytes may pause before the connection is dropped")
      ->capture_default_str()
      ->check(CLI::Range(1, 3600));
  app.add_option("--http-keep-alive-s", o.http_keep_alive_s,
                 "Seconds an idle keep-alive connection stays open")
      ->capture_default_str()
      ->check(CLI::Range(1, 3600));
  app.add_option("--tls-ca", o.tls.ca,
                 "CA certificate (PEM): peers must present certificates it signed (mutual TLS)");
  app.add_option("--tls-cert", o.tls.cert,
                 "The router's certificate (PEM); turns on TLS for gRPC and HTTPS");
  app.add_option("--tls-key", o.tls.key, "This service's private key (PEM)");
  app.add_option("--api-keys-file", o.api_keys_file,
                 "API keys, one per line: clients send 'Authorization: Bearer <key>' (default: "
                 "env PIPEINFER_API_KEYS_FILE; absent: no keys)");
  app.add_flag("--protect-metrics", o.protect_metrics,
               "With API keys: /health, /ready and /metrics need a key too");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 1;  // --help exits 0; every flag error exits 1
  }
  if (o.api_keys_file.empty()) {
    if (const char* env = std::getenv("PIPEINFER_API_KEYS_FILE")) o.api_keys_file = env;
  }
  if (auto st = pipeinfer::log::Init("router", log_options); !st.ok()) {
    return Fail(std::string(st.message()));
  }

  // Before any thread exists: workers inherit the blocked SIGINT/SIGTERM.
  const pipeinfer::StopSignals stop_signals;
  signal(SIGPIPE, SIG_IGN);

  pipeinfer::router::Router router(o);
  if (auto st = router.Start(); !st.ok()) return Fail(std::string(st.message()));
  spdlog::info("router listening on {}://{}:{} (gRPC {}:{}{}), model {}, draft {}{}",
               o.tls.cert.empty() ? "http" : "https", Host(o.http_address), router.http_port(),
               Host(o.grpc_address), router.grpc_port(), o.tls.cert.empty() ? "" : ", TLS",
               router.model_id(), o.draft_address, o.api_keys_file.empty() ? "" : ", API keys on");

  const int sig = stop_signals.Wait();
  if (sig == SIGTERM && drain_seconds > 0) {
    spdlog::info("router: SIGTERM, draining for up to {} s", drain_seconds);
    router.Drain(std::chrono::seconds(drain_seconds));
  } else {
    spdlog::info("router: signal {}, shutting down", sig);
  }
  router.Shutdown();
  return 0;
}
