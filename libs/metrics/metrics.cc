#include "metrics/metrics.h"

#include <httplib.h>
#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>
#include <sys/socket.h>

#include <chrono>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "metrics/process_metrics.h"
#include "pipeinfer/v1/common.pb.h"

namespace pipeinfer::metrics {

std::vector<double> LatencyBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
          0.1,    0.25,    0.5,    1,     2.5,    5,     10,   30};
}

Metrics::Metrics(std::string service, std::string subsystem,
                 std::map<std::string, std::string> const_labels)
    : service_(std::move(service)),
      subsystem_(std::move(subsystem)),
      prefix_(absl::StrCat("pipeinfer_", subsystem_, "_")),
      const_labels_(std::move(const_labels)),
      registry_(std::make_shared<prometheus::Registry>()) {
  GaugeFamily("pipeinfer_build_info",
              "Always 1: the build of this process (version and git commit) as labels")
      .Add({{"service", service_}, {"version", PIPEINFER_VERSION}, {"commit", PIPEINFER_COMMIT}})
      .Set(1);
}

std::string Metrics::FullName(const std::string& name) const {
  return absl::StartsWith(name, "pipeinfer_") ? name : prefix_ + name;
}

prometheus::Counter& Metrics::Counter(const std::string& name, const std::string& help) {
  return CounterFamily(name, help).Add({});
}

prometheus::Gauge& Metrics::Gauge(const std::string& name, const std::string& help) {
  return GaugeFamily(name, help).Add({});
}

prometheus::Histogram& Metrics::Histogram(const std::string& name, const std::string& help,
                                          const std::vector<double>& buckets) {
  return HistogramFamily(name, help).Add({}, prometheus::Histogram::BucketBoundaries(buckets));
}

prometheus::Family<prometheus::Counter>& Metrics::CounterFamily(const std::string& name,
                                                                const std::string& help) {
  return prometheus::BuildCounter()
      .Name(FullName(name))
      .Help(help)
      .Labels(const_labels_)
      .Register(*registry_);
}

prometheus::Family<prometheus::Gauge>& Metrics::GaugeFamily(const std::string& name,
                                                            const std::string& help) {
  return prometheus::BuildGauge()
      .Name(FullName(name))
      .Help(help)
      .Labels(const_labels_)
      .Register(*registry_);
}

prometheus::Family<prometheus::Histogram>& Metrics::HistogramFamily(const std::string& name,
                                                                    const std::string& help) {
  return prometheus::BuildHistogram()
      .Name(FullName(name))
      .Help(help)
      .Labels(const_labels_)
      .Register(*registry_);
}

std::string Metrics::Serialize() const {
  prometheus::TextSerializer ser;
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  for (prometheus::MetricFamily& f : ProcessMetricFamilies()) families.push_back(std::move(f));
  return ser.Serialize(families);
}

void Metrics::FillServiceStats(v1::ServiceStats* out) const {
  out->set_service(service_);
  for (const prometheus::MetricFamily& fam : registry_->Collect()) {
    std::string name = fam.name;
    if (absl::StartsWith(name, prefix_)) {
      name = name.substr(prefix_.size());
    } else if (absl::StartsWith(name, "pipeinfer_")) {
      name = name.substr(10);
    }
    auto add = [&](const std::string& n, double v, bool gauge) {
      v1::Counter* c = out->add_counters();
      c->set_name(n);
      c->set_value(v);
      c->set_gauge(gauge);
    };
    switch (fam.type) {
      case prometheus::MetricType::Counter:
      case prometheus::MetricType::Gauge:
      case prometheus::MetricType::Untyped: {
        double sum = 0;
        for (const auto& m : fam.metric) {
          sum += fam.type == prometheus::MetricType::Counter ? m.counter.value
                 : fam.type == prometheus::MetricType::Gauge ? m.gauge.value
                                                             : m.untyped.value;
        }
        add(name, sum, fam.type != prometheus::MetricType::Counter);
        break;
      }
      case prometheus::MetricType::Histogram: {
        double count = 0, sum = 0;
        for (const auto& m : fam.metric) {
          count += static_cast<double>(m.histogram.sample_count);
          sum += m.histogram.sample_sum;
        }
        add(name + "_count", count, false);
        add(name + "_sum", sum, false);
        break;
      }
      case prometheus::MetricType::Summary: {
        double count = 0, sum = 0;
        for (const auto& m : fam.metric) {
          count += static_cast<double>(m.summary.sample_count);
          sum += m.summary.sample_sum;
        }
        add(name + "_count", count, false);
        add(name + "_sum", sum, false);
        break;
      }
      default:
        break;
    }
  }
}

bool SplitHostPort(const std::string& address, std::string* host, int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon + 1 >= address.size()) return false;
  std::string h = address.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  int p = 0;
  for (size_t i = colon + 1; i < address.size(); ++i) {
    const char ch = address[i];
    if (ch < '0' || ch > '9') return false;
    p = p * 10 + (ch - '0');
    if (p > 65535) return false;
  }
  *host = h.empty() ? "0.0.0.0" : h;
  *port = p;
  return true;
}

struct MetricsHttpServer::Impl {
  std::shared_ptr<const Metrics> metrics;
  httplib::Server http;
  std::thread thread;
};

MetricsHttpServer::MetricsHttpServer(std::shared_ptr<const Metrics> metrics)
    : impl_(std::make_unique<Impl>()) {
  impl_->metrics = std::move(metrics);
}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

absl::StatusOr<int> MetricsHttpServer::Start(const std::string& address) {
  if (impl_->thread.joinable()) return absl::FailedPreconditionError("already started");
  std::string host;
  int port = 0;
  if (!SplitHostPort(address, &host, &port)) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", address, "' is not HOST:PORT"));
  }
  Impl& im = *impl_;
  // cpp-httplib's default also sets SO_REUSEPORT, which would let a second process share the
  // port silently (and Prometheus scrape either); a port that is taken must be an error.
  im.http.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, reinterpret_cast<const void*>(&yes), sizeof(yes));
  });
  im.http.Get("/metrics", [m = im.metrics](const httplib::Request&, httplib::Response& r) {
    r.set_content(m->Serialize(), "text/plain; version=0.0.4; charset=utf-8");
  });
  im.http.Get("/health", [](const httplib::Request&, httplib::Response& r) {
    r.set_content("{\"status\":\"ok\"}", "application/json");
  });
  int bound = 0;
  if (port == 0) {
    bound = im.http.bind_to_any_port(host);
  } else if (im.http.bind_to_port(host, port)) {
    bound = port;
  } else {
    bound = -1;
  }
  if (bound <= 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address, " for /metrics"));
  }
  port_ = bound;
  im.thread = std::thread([&im] { im.http.listen_after_bind(); });
  // stop() only ends a server that is already running.
  for (int i = 0; i < 500 && !im.http.is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return bound;
}

void MetricsHttpServer::Stop() {
  if (!impl_ || !impl_->thread.joinable()) return;
  impl_->http.stop();
  impl_->thread.join();
}

}  // namespace pipeinfer::metrics
