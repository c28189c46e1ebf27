// libs/metrics: metrics get the pipeinfer_<subsystem>_ prefix, ServiceStats lists the same values
// without it (labelled metrics summed, histograms as _count and _sum), and the /metrics server
// serves the text exposition on a free port.
#include "metrics/metrics.h"

#include <httplib.h>

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
  ASSERT_EQ(c.size(), 5u);
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
