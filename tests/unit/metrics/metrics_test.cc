// libs/metrics: metrics get the pipeinfer_<subsystem>_ prefix, ServiceStats lists the same values
// without it (labelled metrics summed, histograms as _count and _sum), and the /metrics server
// serves the text exposition on a free port.
#include "metrics/metrics.h"

#include <httplib.h>

#include <cstdio>
#include <ctime>
#include <map>
#include <string>

#include <gtest/gtest.h>

#include "pipeinfer/v1/common.pb.h"

namespace pipeinfer::metrics {
namespace {

std::map<std::string, v1::Counter> ByName(const v1::ServiceStats& s) {
  std::map<std::string, v1::Counter> out;
  for (const auto& c : s.counters()) {
    EXPECT_FALSE(out.count(c.name())) << "duplicate " << c.name();
    out[c.name()] = c;
  }
  return out;
}

TEST(MetricsTest, ServiceStatsReadTheRegistry) {
  Metrics m("stage1", "stage");
  EXPECT_EQ(m.prefix(), "pipeinfer_stage_");
  m.Counter("runs_computed_total", "runs").Increment(3);
  // The same name twice is the same metric.
  m.Counter("runs_computed_total", "runs").Increment(2);
  m.Gauge("kv_blocks_in_use", "blocks").Set(7);
  auto& fam = m.CounterFamily("requests_total", "by code");
  fam.Add({{"code", "200"}}).Increment(4);
  fam.Add({{"code", "400"}}).Increment(1);
  auto& h = m.Histogram("forward_seconds", "forward", LatencyBuckets());
  h.Observe(0.5);
  h.Observe(0.25);

  v1::ServiceStats s;
  m.FillServiceStats(&s);
  EXPECT_EQ(s.service(), "stage1");
  auto c = ByName(s);
  ASSERT_EQ(c.size(), 6u);  // and pipeinfer_build_info, in every registry
  EXPECT_EQ(c["build_info"].value(), 1);
  EXPECT_EQ(c["runs_computed_total"].value(), 5);
  EXPECT_FALSE(c["runs_computed_total"].gauge());
  EXPECT_EQ(c["kv_blocks_in_use"].value(), 7);
  EXPECT_TRUE(c["kv_blocks_in_use"].gauge());
  EXPECT_EQ(c["requests_total"].value(), 5);
  EXPECT_EQ(c["forward_seconds_count"].value(), 2);
  EXPECT_DOUBLE_EQ(c["forward_seconds_sum"].value(), 0.75);

  const std::string text = m.Serialize();
  EXPECT_NE(text.find("# TYPE pipeinfer_stage_runs_computed_total counter\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("\npipeinfer_stage_runs_computed_total 5"), std::string::npos) << text;
  EXPECT_NE(text.find("# TYPE pipeinfer_stage_kv_blocks_in_use gauge\n"), std::string::npos);
  EXPECT_NE(text.find("pipeinfer_stage_requests_total{code=\"200\"} 4"), std::string::npos);
  EXPECT_NE(text.find("# TYPE pipeinfer_stage_forward_seconds histogram\n"), std::string::npos);
  EXPECT_NE(text.find("pipeinfer_stage_forward_seconds_bucket{le=\"+Inf\"} 2"), std::string::npos)
      << text;
  EXPECT_NE(text.find("pipeinfer_stage_forward_seconds_count 2"), std::string::npos);
}

TEST(MetricsTest, HttpServerServesMetrics) {
  auto m = std::make_shared<Metrics>("router", "router");
  m->Counter("requests_total", "requests").Increment(9);
  MetricsHttpServer server(m);
  absl::StatusOr<int> port = server.Start("127.0.0.1:0");
  ASSERT_TRUE(port.ok()) << port.status();
  ASSERT_GT(*port, 0);
  EXPECT_EQ(server.port(), *port);
  httplib::Client cli("127.0.0.1", *port);
  auto r = cli.Get("/metrics");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_NE(r->get_header_value("Content-Type").find("text/plain"), std::string::npos);
  EXPECT_NE(r->body.find("pipeinfer_router_requests_total 9"), std::string::npos) << r->body;
  EXPECT_EQ(cli.Get("/nothing")->status, 404);

  // A second server cannot take the same port.
  MetricsHttpServer clash(m);
  EXPECT_FALSE(clash.Start("127.0.0.1:" + std::to_string(*port)).ok());
  EXPECT_FALSE(clash.Start("no-port").ok());
  server.Stop();
  server.Stop();  // idempotent
}

TEST(MetricsTest, SplitHostPort) {
  std::string h;
  int p = -1;
  EXPECT_TRUE(SplitHostPort("127.0.0.1:9100", &h, &p));
  EXPECT_EQ(h, "127.0.0.1");
  EXPECT_EQ(p, 9100);
  EXPECT_TRUE(SplitHostPort("[::1]:0", &h, &p));
  EXPECT_EQ(h, "::1");
  EXPECT_EQ(p, 0);
  EXPECT_FALSE(SplitHostPort("host", &h, &p));
  EXPECT_FALSE(SplitHostPort("host:99999", &h, &p));
  EXPECT_FALSE(SplitHostPort("host:12a", &h, &p));
}

}  // namespace
}  // namespace pipeinfer::metrics

namespace pipeinfer::metrics {
namespace {

// `name value` of an unlabelled sample in the exposition text, or -1.
double Sample(const std::string& text, const std::string& name) {
  const size_t at = text.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + name.size() + 2));
}

TEST(MetricsLabelsTest, ConstantLabelsAndBuildInfoOnEverySeries) {
  Metrics m("stage2", "stage", {{"stage", "2"}, {"model", "demo"}});
  m.Counter("runs_computed_total", "runs").Increment(3);
  m.CounterFamily("pipeinfer_spec_decode_num_draft_tokens_total", "top-level")
      .Add({{"mode", "sync"}})
      .Increment(2);
  const std::string text = m.Serialize();
  EXPECT_NE(text.find("pipeinfer_stage_runs_computed_total{model=\"demo\",stage=\"2\"} 3"),
            std::string::npos)
      << text;
  // A name given with the pipeinfer_ prefix is used as is; constant labels come first.
  EXPECT_NE(text.find("pipeinfer_spec_decode_num_draft_tokens_total{model=\"demo\",stage=\"2\","
                      "mode=\"sync\"} 2"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("pipeinfer_build_info{model=\"demo\",stage=\"2\",commit=\""),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("service=\"stage2\""), std::string::npos) << text;
}

// The process series against what the test process can see for itself.
TEST(MetricsProcessTest, ProcessSeriesDescribeThisProcess) {
  Metrics m("router", "router");
  const std::string before = m.Serialize();
  const double rss = Sample(before, "process_resident_memory_bytes");
  const double vsz = Sample(before, "process_virtual_memory_bytes");
  EXPECT_GT(rss, 1 << 20);  // a gtest binary holds more than 1 MiB
  EXPECT_GE(vsz, rss);
  const double start = Sample(before, "process_start_time_seconds");
  const double now = static_cast<double>(time(nullptr));
  EXPECT_LE(start, now + 1);
  EXPECT_GT(start, now - 3600);  // this test process started within the hour
  EXPECT_GE(Sample(before, "process_cpu_seconds_total"), 0);
  const double fds = Sample(before, "process_open_fds");
  FILE* f = std::fopen("/proc/self/stat", "r");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(Sample(m.Serialize(), "process_open_fds"), fds + 1);
  std::fclose(f);
  EXPECT_GT(Sample(before, "process_max_fds"), fds);
  EXPECT_NE(before.find("# TYPE process_cpu_seconds_total counter"), std::string::npos);
}

}  // namespace
}  // namespace pipeinfer::metrics
