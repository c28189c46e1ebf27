#include "router/router_metrics.h"

#include <vector>

namespace pipeinfer::router {
namespace {

std::vector<double> TtftBuckets() {
  return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 2.5, 5, 10, 30};
}
std::vector<double> ItlBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};
}
std::vector<double> E2eBuckets() {
  return {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300};
}
std::vector<double> QueueBuckets() {
  return {0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
}

}  // namespace

std::string GrpcCodeName(int code) {
  static const char* const kNames[] = {"OK",
                                       "CANCELLED",
                                       "UNKNOWN",
                                       "INVALID_ARGUMENT",
                                       "DEADLINE_EXCEEDED",
                                       "NOT_FOUND",
                                       "ALREADY_EXISTS",
                                       "PERMISSION_DENIED",
                                       "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION",
                                       "ABORTED",
                                       "OUT_OF_RANGE",
                                       "UNIMPLEMENTED",
                                       "INTERNAL",
                                       "UNAVAILABLE",
                                       "DATA_LOSS",
                                       "UNAUTHENTICATED"};
  if (code >= 0 && code < static_cast<int>(std::size(kNames))) return kNames[code];
  return "UNKNOWN";
}

RouterMetrics::RouterMetrics(std::string model)
    : model_(std::move(model)), metrics_(std::make_shared<metrics::Metrics>("router", "router")) {
  metrics::Metrics& m = *metrics_;
  http_requests_ = &m.CounterFamily(
      "http_requests_total", "HTTP requests by endpoint, status code, model and speculation mode");
  grpc_requests_ = &m.CounterFamily(
      "grpc_requests_total", "gRPC Router calls by method, status code name, model and mode");
  cancelled_ = &m.CounterFamily(
      "requests_cancelled_total",
      "Requests whose client went away before the answer was complete (generation cancelled)");
  for (const char* e : {"/v1/chat/completions", "/v1/completions", "Chat", "Complete"}) {
    cancelled_->Add({{"endpoint", e}});
  }
  auto& e2e = m.HistogramFamily("pipeinfer_e2e_request_latency_seconds",
                                "From the request's arrival to its last token (finished requests)");
  auto& queue = m.HistogramFamily("pipeinfer_request_queue_time_seconds",
                                  "Time admitted requests waited for a generation slot");
  auto& ttft = m.HistogramFamily(
      "pipeinfer_time_to_first_token_seconds",
      "From the request's arrival (queueing and tokenizing included) to its first token");
  auto& itl = m.HistogramFamily("pipeinfer_inter_token_latency_seconds",
                                "Time between consecutive generated tokens");
  auto& prompt =
      m.CounterFamily("pipeinfer_prompt_tokens_total", "Prompt tokens of admitted requests");
  auto& gen = m.CounterFamily("pipeinfer_generation_tokens_total",
                              "Completion tokens received from the draft service");
  auto& success = m.CounterFamily(
      "pipeinfer_request_success_total",
      "Finished requests by finish reason (stop, length, abort = the client went away)");
  for (const char* mode : {"plain", "sync", "pipeinfer", "unknown"}) {
    const prometheus::Labels l{{"model", model_}, {"mode", mode}};
    auto with = [&](const char* reason) {
      prometheus::Labels r = l;
      r["finished_reason"] = reason;
      return &success.Add(r);
    };
    modes_.emplace(
        mode, ModeSeries{&e2e.Add(l, E2eBuckets()), &queue.Add(l, QueueBuckets()),
                         &ttft.Add(l, TtftBuckets()), &itl.Add(l, ItlBuckets()), &prompt.Add(l),
                         &gen.Add(l), with("stop"), with("length"), with("abort")});
  }
  running_ = &m.GaugeFamily("pipeinfer_num_requests_running", "Requests generating now")
                  .Add({{"model", model_}});
  waiting_ =
      &m.GaugeFamily("pipeinfer_num_requests_waiting", "Requests waiting for a generation slot")
           .Add({{"model", model_}});
  replica_healthy_ = &m.GaugeFamily(
      "replica_healthy", "1 while the draft service replica (one pipeline) is taking requests");
  replica_running_ =
      &m.GaugeFamily("replica_requests_running", "Requests generating on the replica now");
  replica_requests_ =
      &m.CounterFamily("replica_requests_total", "Draft calls sent to the replica (attempts)");
}

RouterMetrics::ModeSeries& RouterMetrics::Mode(std::string_view mode) {
  auto it = modes_.find(mode);
  if (it == modes_.end()) it = modes_.find("unknown");
  return it->second;
}

void RouterMetrics::CountHttp(const std::string& endpoint, int http_code, std::string_view mode) {
  http_requests_
      ->Add({{"endpoint", endpoint},
             {"http_code", std::to_string(http_code)},
             {"model", model_},
             {"mode", std::string(mode)}})
      .Increment();
}

void RouterMetrics::CountGrpc(const std::string& method, int grpc_code, std::string_view mode) {
  grpc_requests_
      ->Add({{"method", method},
             {"grpc_code", GrpcCodeName(grpc_code)},
             {"model", model_},
             {"mode", std::string(mode)}})
      .Increment();
}

void RouterMetrics::CountCancelled(const std::string& endpoint) {
  cancelled_->Add({{"endpoint", endpoint}}).Increment();
}

RouterMetrics::ReplicaSeries RouterMetrics::Replica(const std::string& address) {
  const prometheus::Labels l{{"replica", address}};
  return {&replica_healthy_->Add(l), &replica_running_->Add(l), &replica_requests_->Add(l)};
}

}  // namespace pipeinfer::router
