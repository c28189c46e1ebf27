// The metrics of one service (router, draft service, stage): a prometheus-cpp registry that holds
// every counter, gauge and histogram of the process, so that the Prometheus exposition (/metrics)
// and the services' GetStats RPCs read the same values (one source of truth).
//
// Naming (https://prometheus.io/docs/practices/naming/): every metric is called
// `pipeinfer_<subsystem>_<name>`, e.g. `pipeinfer_stage_runs_computed_total`, in base units
// (`_seconds`, `_bytes`), counters ending in `_total`. In a pipeinfer.v1.ServiceStats the same
// metric is listed without the `pipeinfer_<subsystem>_` prefix (`runs_computed_total`); a metric
// with labels is listed once, summed over its label sets; a histogram is listed as `<name>_count`
// and `<name>_sum`.
//
// A name given that already starts with `pipeinfer_` is used as is: the request-level series that
// follow vLLM's names (`pipeinfer_e2e_request_latency_seconds`) and `pipeinfer_build_info`.
// Constant labels given at construction (a stage's `stage` and `model`) are on every series.
// Every registry also carries `pipeinfer_build_info{service,version,commit}` = 1, and the
// exposition adds the standard `process_*` series (CPU, memory, file descriptors, start time) read
// from /proc (process_metrics.h).
//
// No gRPC include here; the ServiceStats conversion only needs the protobuf message.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace pipeinfer::v1 {
class ServiceStats;
}  // namespace pipeinfer::v1

namespace pipeinfer::metrics {

// Bucket boundaries in seconds for latencies from ~100 us to 30 s.
std::vector<double> LatencyBuckets();

class Metrics {
 public:
  // `service`: the name the service reports in ServiceStats ("router", "draft", "stage0", ...).
  // `subsystem`: the middle part of every metric name ("router", "draft", "stage").
  // `const_labels`: labels every series of this registry carries (e.g. {{"stage", "0"}}).
  Metrics(std::string service, std::string subsystem,
          std::map<std::string, std::string> const_labels = {});
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  const std::string& service() const { return service_; }
  const std::string& subsystem() const { return subsystem_; }
  // "pipeinfer_<subsystem>_"
  const std::string& prefix() const { return prefix_; }
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // Metrics without labels. `name` is given without the prefix ("runs_computed_total"); counter
  // names must end in "_total". Registering the same name twice returns the same metric.
  prometheus::Counter& Counter(const std::string& name, const std::string& help);
  prometheus::Gauge& Gauge(const std::string& name, const std::string& help);
  prometheus::Histogram& Histogram(const std::string& name, const std::string& help,
                                   const std::vector<double>& buckets);
  // Labelled families (e.g. requests by endpoint and code).
  prometheus::Family<prometheus::Counter>& CounterFamily(const std::string& name,
                                                         const std::string& help);
  prometheus::Family<prometheus::Gauge>& GaugeFamily(const std::string& name,
                                                     const std::string& help);
  prometheus::Family<prometheus::Histogram>& HistogramFamily(const std::string& name,
                                                             const std::string& help);

  // The Prometheus text exposition format (version 0.0.4) of the current values.
  std::string Serialize() const;

  // Sets `out->service` to service() and appends one Counter per metric (see the naming above).
  // Existing counters of `out` are kept.
  void FillServiceStats(v1::ServiceStats* out) const;

 private:
  std::string FullName(const std::string& name) const;

  std::string service_, subsystem_, prefix_;
  std::map<std::string, std::string> const_labels_;
  std::shared_ptr<prometheus::Registry> registry_;
};

// A minimal HTTP server for one Metrics: GET /metrics (text exposition) and GET /health.
class MetricsHttpServer {
 public:
  explicit MetricsHttpServer(std::shared_ptr<const Metrics> metrics);
  ~MetricsHttpServer();  // stops
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // Binds HOST:PORT (port 0 = a free one) and serves on a background thread. Returns the bound
  // port.
  absl::StatusOr<int> Start(const std::string& address);
  int port() const { return port_; }
  void Stop();  // idempotent

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

// Splits "HOST:PORT" (also "[v6]:PORT"). False on a malformed address.
bool SplitHostPort(const std::string& address, std::string* host, int* port);

}  // namespace pipeinfer::metrics
