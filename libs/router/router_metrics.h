// The router's metrics, in one registry (libs/metrics) read by /metrics and GetClusterStats;
// docs/metrics.md lists every series. Request-level series follow vLLM's names with a pipeinfer_
// prefix and carry {model, mode} (mode: plain | sync | pipeinfer, the request's or the draft
// service's default; "unknown" when the request was refused before its mode was known):
//   pipeinfer_e2e_request_latency_seconds, pipeinfer_request_queue_time_seconds,
//   pipeinfer_time_to_first_token_seconds (from the request's arrival: queueing and tokenizing
//   included), pipeinfer_inter_token_latency_seconds, pipeinfer_request_success_total
//   {finished_reason: stop | length | abort}, prompt and generation token counters,
//   pipeinfer_num_requests_running / _waiting.
// Per front end: pipeinfer_router_http_requests_total{endpoint, http_code, model, mode} and
// pipeinfer_router_grpc_requests_total{method, grpc_code, model, mode} (grpc_code by name), and
// requests_cancelled_total{endpoint} (the client went away). Per draft service replica:
// pipeinfer_router_replica_{healthy, requests_running, requests_total}{replica}.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "metrics/metrics.h"

namespace pipeinfer::router {

class RouterMetrics {
 public:
  explicit RouterMetrics(std::string model);

  const std::shared_ptr<metrics::Metrics>& metrics() const { return metrics_; }
  const std::string& model() const { return model_; }

  // The series of one mode label ("plain", "sync", "pipeinfer", "unknown"); created at start for
  // every mode, so that rate() sees them from the first scrape.
  struct ModeSeries {
    prometheus::Histogram* e2e;
    prometheus::Histogram* queue;
    prometheus::Histogram* ttft;
    prometheus::Histogram* itl;
    prometheus::Counter* prompt_tokens;
    prometheus::Counter* generation_tokens;
    prometheus::Counter* success_stop;
    prometheus::Counter* success_length;
    prometheus::Counter* success_abort;
  };
  ModeSeries& Mode(std::string_view mode);

  void CountHttp(const std::string& endpoint, int http_code, std::string_view mode);
  void CountGrpc(const std::string& method, int grpc_code, std::string_view mode);
  void CountCancelled(const std::string& endpoint);

  prometheus::Gauge& running() { return *running_; }
  prometheus::Gauge& waiting() { return *waiting_; }

  // One draft service replica's series.
  struct ReplicaSeries {
    prometheus::Gauge* healthy;
    prometheus::Gauge* running;
    prometheus::Counter* requests;
  };
  ReplicaSeries Replica(const std::string& address);

 private:
  std::string model_;
  std::shared_ptr<metrics::Metrics> metrics_;
  prometheus::Family<prometheus::Counter>* http_requests_;
  prometheus::Family<prometheus::Counter>* grpc_requests_;
  prometheus::Family<prometheus::Counter>* cancelled_;
  prometheus::Family<prometheus::Gauge>* replica_healthy_;
  prometheus::Family<prometheus::Gauge>* replica_running_;
  prometheus::Family<prometheus::Counter>* replica_requests_;
  std::map<std::string, ModeSeries, std::less<>> modes_;  // fixed after construction
  prometheus::Gauge* running_;
  prometheus::Gauge* waiting_;
};

// "OK", "CANCELLED", ... for a gRPC status code number.
std::string GrpcCodeName(int code);

}  // namespace pipeinfer::router
