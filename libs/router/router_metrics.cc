#include "router/router_metrics.h"

namespace pipeinfer::router {

RouterMetrics::RouterMetrics() : metrics_(std::make_shared<metrics::Metrics>("router", "router")) {
  metrics::Metrics& m = *metrics_;
  requests_ = &m.CounterFamily("requests_total",
                               "Requests by endpoint and status code (HTTP status, or gRPC code)");
  cancelled_ = &m.CounterFamily(
      "requests_cancelled_total",
      "Requests whose client went away before the answer was complete (generation cancelled)");
  // Listed (at 0) before the first cancellation, so that dashboards and rate() see the series.
  for (const char* e : {"/v1/chat/completions", "/v1/completions", "grpc_chat", "grpc_complete"}) {
    cancelled_->Add({{"endpoint", e}});
  }
  prompt_tokens_ = &m.Counter("prompt_tokens_total", "Prompt tokens of admitted requests");
  generated_tokens_ =
      &m.Counter("generated_tokens_total", "Completion tokens received from the draft service");
  ttft_ = &m.Histogram("time_to_first_token_seconds",
                       "Time from the draft call to the first generated token",
                       {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30});
  itl_ = &m.Histogram("inter_token_latency_seconds", "Time between consecutive generated tokens",
                      {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5});
  inflight_ = &m.Gauge("requests_in_flight", "Requests generating now");
  queue_ = &m.Gauge("queue_depth", "Requests waiting for an admission slot");
}

void RouterMetrics::CountRequest(const std::string& endpoint, int code) {
  requests_->Add({{"endpoint", endpoint}, {"code", std::to_string(code)}}).Increment();
}

void RouterMetrics::CountCancelled(const std::string& endpoint) {
  cancelled_->Add({{"endpoint", endpoint}}).Increment();
}

}  // namespace pipeinfer::router
