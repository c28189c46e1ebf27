// The draft service: serves pipeinfer.v1.Draft (Generate, GetStats, GetInfo) plus
// grpc.health.v1 and reflection, and owns the controller of one pipeline of stage servers.
//
// Inside (private to this library):
//   * pipeline_link.h: ONE Pipeline stream to stage 0 and ONE Results stream from the last stage,
//     shared by every session (credits, run ids, outcome dispatch by session, epochs and the
//     supervisor's reconnect: in-flight requests then fail with ABORTED, new ones get UNAVAILABLE
//     until the pipeline is back);
//   * generate_session.h: one Generate call = one spec::Controller (plain, sync or pipeinfer) over
//     its session of that link (session_link.h), prefill, verify/commit/cancel, drafting whenever
//     no outcome is waiting;
//   * request_validation.h, spec_proto.h, pipeline_proto.h: checking requests and converting
//     between the wire and the controller's terms; draft_metrics.h: the counters.
// gRPC includes stay out of this header.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "rpc/tls.h"
#include "spec/params.h"

namespace pipeinfer::draft_server {

class DraftModel;

struct DraftServerOptions {
  std::string listen_address = "127.0.0.1:0";  // host:port; port 0 picks a free one
  std::string stage0_address;                  // the first stage (receives the Pipeline stream)
  std::string last_address;                    // the last stage (serves the Results stream)
  // The model id clients name and that PipelineOpen carries; empty = stage 0's model id.
  std::string model_id;
  // The `model` label of every metric (known before the stages answer; pipeinfer-draft passes
  // --model-id or the target file's name, as the stages name it). Empty: "unknown".
  std::string metrics_model;
  // The model's end-of-generation token ids (from the GGUF); empty = none known.
  std::vector<uint32_t> eos_ids;
  // The vocabulary size the caller expects (from the GGUF); 0 = take the stages' value unchecked.
  uint32_t expected_n_vocab = 0;
  uint32_t max_sessions = 64;  // concurrent Generate calls; beyond: RESOURCE_EXHAUSTED
  // KV admission: how long a request may wait for its reservation to fit on every stage, and how
  // many may wait at once (0 = max_sessions); beyond either: RESOURCE_EXHAUSTED.
  int kv_wait_ms = 20000;
  uint32_t kv_max_waiting = 0;
  // Scales the pipeline-wide speculation budget (spec/spec_budget.h); 0 turns it off.
  double spec_budget_scale = 1.0;
  int connect_timeout_ms = 30000;  // how long Start() waits for the stages and the pipeline
  // Crash recovery: how long a request whose pipeline epoch was lost (a stage died) waits for the
  // pipeline to come back before it ends with UNAVAILABLE; 0 = no recovery (it fails at once).
  int recovery_seconds = 30;
  // A request alone on the pipeline splits its prefill into the runs that bring the first token
  // soonest (spec::PrefillRunTokens; needs the speculation budget's cost fit).
  bool split_prefill = true;
  uint64_t max_message_bytes = 64ull << 20;       // gRPC max send/receive message size
  std::string controller_id = "pipeinfer-draft";  // for the stages' logs
  // TLS (rpc/tls.h) of the Draft server and of the links to the stages (the stages check this
  // certificate's name against their allow-list). Empty = plaintext.
  rpc::TlsFiles tls;
  // Serve Prometheus /metrics on HOST:PORT (port 0 = a free one); empty = no endpoint.
  std::string metrics_address;
  // Speculation settings for requests that leave SpecConfig fields unset.
  spec::SpecParams spec_defaults;
  // The draft model (shared by all sessions). Null: only plain mode is served; sync and pipeinfer
  // requests fail with FAILED_PRECONDITION.
  std::shared_ptr<DraftModel> draft_model;
  // Benchmarks only: emulated latency of the links to stage 0 and the last stage, in microseconds
  // (PipelineLinkOptions::emulate_link_us). 0 = none.
  int64_t emulate_link_us = 0;
  // Benchmarks only: emulated rate of those links, Mbit/s per direction
  // (PipelineLinkOptions::emulate_link_mbps). 0 = none.
  double emulate_link_mbps = 0;
};

class DraftServer {
 public:
  explicit DraftServer(DraftServerOptions options);
  ~DraftServer();  // shuts down if still running
  DraftServer(const DraftServer&) = delete;
  DraftServer& operator=(const DraftServer&) = delete;

  // Learns the pipeline's shape from both stages (Stage.GetInfo), opens the pipeline (Results and
  // Pipeline streams, waiting for the first credit), then binds and starts serving with health
  // SERVING. Fails with a readable message when a stage is unreachable or mis-wired.
  absl::Status Start();
  // The bound port (after Start).
  int port() const;
  // The bound /metrics port (0 without an endpoint).
  int metrics_port() const;
  // Fails every request in flight, ends the pipeline streams and stops the server (idempotent).
  void Shutdown();
  // Blocks until the server has shut down.
  void Wait();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pipeinfer::draft_server
