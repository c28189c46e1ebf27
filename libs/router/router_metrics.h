// The router's metrics, in one registry (libs/metrics) read by /metrics and GetClusterStats:
// pipeinfer_router_requests_total{endpoint, code} (HTTP status, or gRPC code; a client that went
// away is 499 over HTTP and CANCELLED = 1 over gRPC), requests_cancelled_total{endpoint} (the
// client went away before its answer was complete), prompt and generated token counters, time
// to first token, inter-token latency, requests in flight and queue depth.
#pragma once

#include <memory>
#include <string>

#include "metrics/metrics.h"

namespace pipeinfer::router {

class RouterMetrics {
 public:
  RouterMetrics();

  const std::shared_ptr<metrics::Metrics>& metrics() const { return metrics_; }

  void CountRequest(const std::string& endpoint, int code);
  void CountCancelled(const std::string& endpoint);

  prometheus::Counter& prompt_tokens() { return *prompt_tokens_; }
  prometheus::Counter& generated_tokens() { return *generated_tokens_; }
  prometheus::Histogram& ttft() { return *ttft_; }
  prometheus::Histogram& itl() { return *itl_; }
  prometheus::Gauge& inflight() { return *inflight_; }
  prometheus::Gauge& queue() { return *queue_; }

 private:
  std::shared_ptr<metrics::Metrics> metrics_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Counter>* cancelled_;
  prometheus::Counter* prompt_tokens_;
  prometheus::Counter* generated_tokens_;
  prometheus::Histogram* ttft_;
  prometheus::Histogram* itl_;
  prometheus::Gauge* inflight_;
  prometheus::Gauge* queue_;
};

}  // namespace pipeinfer::router
