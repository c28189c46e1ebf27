// The gRPC transport of a stage: serves pipeinfer.v1.Stage (Pipeline, Results, GetStats, GetInfo)
// around a StageCore, plus grpc.health.v1 and reflection.
//
// Threads (gRPC sync API, one thread per stream direction):
//   * the Pipeline handler reads the upstream peer's messages into a bounded input queue (at most
//     `window` messages, the credit window W);
//   * a worker hands the whole queue to StageCore::Step, which takes what one forward pass can
//     hold (runs of different sessions batched; see stage_core.h) and leaves the rest queued in
//     order; the worker sends the outputs: forwards to the next stage (waiting for its credits),
//     results to the Results stream (queued, at most W, while none is attached), errors upstream;
//     it grants one credit upstream per message taken;
//   * on non-last stages a downstream reader takes the next stage's Cancel (forwarded upstream
//     first, then recorded), Credit and ErrorDetail messages;
//   * on the last stage the Results handler reads Cancels (forwarded upstream first, then recorded)
//     and a writer thread sends the queued outcomes.
//
// Metrics: every counter lives in the StageCore's metrics registry (pipeinfer_stage_*), plus the
// transport's own (cancels received, input queue depth, bytes received / sent). GetStats reads
// that registry (service "stage<index>"); with include_pipeline a non-last stage also asks its
// downstream stage (with include_pipeline) and appends what it returns, so stage 0 answers for
// the whole chain in pipeline order. /metrics serves the same registry.
// gRPC includes stay in stage_server.cc.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "rpc/tls.h"
#include "stage/stage_core.h"

namespace pipeinfer::stage_server {

struct StageServerOptions {
  std::string listen_address = "127.0.0.1:0";  // host:port; port 0 picks a free one
  std::string downstream_address;              // the next stage; empty on the last stage
  // Credit window W per upstream link, in messages. A stage batches only what is queued, so W
  // should hold a few messages per concurrent session.
  uint32_t window = 64;
  uint64_t max_message_bytes = 64ull << 20;  // gRPC max send/receive message size
  int connect_timeout_ms = 5000;  // how long opening the downstream link may wait to connect
  // The pipeline ownership lease L (stage.proto section 2a): an owner link idle this long may be
  // taken over, and a challenger that keeps asking for this long displaces an active owner.
  uint32_t owner_lease_ms = 10000;
  // HOST:PORT of the Prometheus /metrics endpoint (port 0 picks a free one); empty = none.
  std::string metrics_address;
  // Benchmarks only: every message this stage sends on a link (downstream, upstream, results) is
  // sent this many microseconds after it was produced, by a sender thread, in order. 0 = inline.
  int64_t emulate_link_us = 0;
  // Benchmarks only: each link direction carries this many Mbit/s: a message is released only once
  // the previous ones on the same link and its own bytes (ByteSizeLong() + framing) have been
  // serialized at this rate, then delayed by emulate_link_us (common/delay_line.h). 0 = no pacing.
  // With both 0 every send is inline.
  double emulate_link_mbps = 0;
  // TLS (rpc/tls.h): the server's certificate and, with a CA, mutual TLS for every caller; the
  // same files are used for the downstream link. Empty = plaintext.
  rpc::TlsFiles tls;
  // Certificate names (subject CN or a SAN entry) allowed to open the Pipeline and Results
  // streams; empty = any caller that passed the TLS handshake. Other RPCs (GetInfo, GetStats,
  // health) are open to every caller with a trusted certificate.
  std::vector<std::string> allow_peers;
};

class StageServer {
 public:
  StageServer(std::unique_ptr<stage::StageCore> core, StageServerOptions options);
  ~StageServer();  // shuts down if still running
  StageServer(const StageServer&) = delete;
  StageServer& operator=(const StageServer&) = delete;

  // Binds and starts serving. Non-last stages report NOT_SERVING on the health service until the
  // downstream address accepts a connection.
  absl::Status Start();
  // The bound port (after Start).
  int port() const;
  // The bound /metrics port (after Start), 0 without one.
  int metrics_port() const;
  // Ends every stream and stops the server (idempotent; in-flight calls get ~0.5 s before they are
  // cancelled).
  void Shutdown();
  // Blocks until the server has shut down.
  void Wait();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pipeinfer::stage_server
