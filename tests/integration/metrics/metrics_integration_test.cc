// Metrics of a real 3-stage cluster on loopback (`pipeinfer up --detach` with the router, a few
// greedy completions through it):
//   * each stage's /metrics (scraped with an HTTP client) is well-formed Prometheus text
//     exposition, uses Prometheus naming, and holds exactly the values `pipeinfer stats --stage`
//     prints (one source of truth);
//   * `pipeinfer stats --router` lists the router, the draft service and every stage, in order;
//     `pipeinfer stats --stage <stage 0> --pipeline` lists every stage;
//   * a real `prometheus` server (Debian package) scrapes the stages and its HTTP API returns the
//     pipeinfer_stage_*_total series with the same values (skipped when the binary is missing).
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <httplib.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cluster/supervisor.h"
#include "testing/cluster_harness.h"
#include "testing/fixtures.h"
#include "testing/process.h"

namespace pipeinfer {
namespace {

namespace fs = std::filesystem;
using pipeinfer::testing::BinPath;
using pipeinfer::testing::ChildProcess;
using pipeinfer::testing::CommandResult;
using pipeinfer::testing::FreePortRange;
using pipeinfer::testing::ReadText;
using pipeinfer::testing::RunCmd;

// `name value` lines (as `pipeinfer stats --stage` prints them).
std::map<std::string, double> ParseStats(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    const size_t sp = line.find(' ');
    if (sp == std::string::npos) continue;
    out[line.substr(0, sp)] = std::strtod(line.c_str() + sp + 1, nullptr);
  }
  return out;
}

// Parses the Prometheus text exposition format (0.0.4) strictly enough to catch malformed output:
// every sample line is `name[{labels}] value`, every family has # HELP and # TYPE before its
// samples. Returns samples keyed by `name{labels}` (or `name`), and the TYPE of every family.
struct Exposition {
  std::map<std::string, double> samples;
  std::map<std::string, std::string> types;
  std::vector<std::string> errors;
};

Exposition ParseExposition(const std::string& text) {
  Exposition e;
  static const std::regex sample_re(
      R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})? ([-+0-9.eE]+|NaN|[+-]Inf)$)");
  static const std::regex type_re(
      R"(^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$)");
  static const std::regex help_re(R"(^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .*$)");
  std::set<std::string> helped;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    std::smatch m;
    if (std::regex_match(line, m, help_re)) {
      helped.insert(m[1]);
    } else if (std::regex_match(line, m, type_re)) {
      if (!helped.count(m[1])) e.errors.push_back("TYPE before HELP: " + line);
      e.types[m[1]] = m[2];
    } else if (std::regex_match(line, m, sample_re)) {
      std::string family = m[1];
      for (const char* suffix : {"_bucket", "_count", "_sum"}) {
        const std::string s = suffix;
        if (!e.types.count(family) && family.size() > s.size() &&
            family.compare(family.size() - s.size(), s.size(), s) == 0) {
          family = family.substr(0, family.size() - s.size());
        }
      }
      if (!e.types.count(family)) e.errors.push_back("sample without TYPE: " + line);
      e.samples[std::string(m[1]) + std::string(m[2])] = std::strtod(m[4].str().c_str(), nullptr);
    } else {
      e.errors.push_back("malformed line: " + line);
    }
  }
  return e;
}

bool Near(double a, double b) {
  return a == b || std::fabs(a - b) <= 1e-6 * std::max(std::fabs(a), std::fabs(b));
}

class MetricsIntegrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = std::string(PIPEINFER_MODELS_DIR) + "/demo-target-q8_0.gguf";
    if (!fs::exists(model_) || !fs::exists(BinPath("pipeinfer-router"))) return;
    dir_ = ::testing::TempDir() + "/metrics_integration_test." + std::to_string(getpid());
    fs::create_directories(dir_);
    state_ = dir_ + "/cluster.json";
    for (int attempt = 0; attempt < 3 && !up_; ++attempt) {
      // 3 stages, draft, router gRPC; router HTTP; 3 stage metrics ports.
      const int base = FreePortRange(9);
      const CommandResult r =
          RunCmd({BinPath("pipeinfer"), "up", "--model", model_, "--stages", "3", "--kv-tokens",
                  "1024", "--base-port", std::to_string(base), "--http-port",
                  std::to_string(base + 5), "--metrics-base-port", std::to_string(base + 6),
                  "--detach", "--state", state_, "--log-dir", dir_ + "/logs"},
                 std::chrono::seconds(120));
      up_output_ = r.output;
      up_ = r.exit_code == 0;
      if (!up_) std::fprintf(stderr, "up failed (attempt %d):\n%s\n", attempt, r.output.c_str());
    }
    if (!up_) return;
    auto st = cluster::ReadState(state_);
    if (!st.ok()) {
      up_ = false;
      return;
    }
    endpoints_ = st->endpoints;
    for (int i = 0; i < 3; ++i) {
      const CommandResult c =
          RunCmd({BinPath("pipeinfer"), "complete", "--router", endpoints_.router_grpc, "--prompt",
                  "It is a truth universally acknowledged, that", "--max-tokens", "8",
                  "--temperature", "0", "--ignore-eos", "--print-ids"},
                 std::chrono::seconds(60));
      if (c.exit_code != 0) std::fprintf(stderr, "complete failed:\n%s\n", c.output.c_str());
    }
  }

  static void TearDownTestSuite() {
    if (!state_.empty() && fs::exists(state_)) {
      RunCmd({BinPath("pipeinfer"), "down", "--state", state_}, std::chrono::seconds(60));
    }
  }

  void SetUp() override {
    if (!fs::exists(model_)) GTEST_SKIP() << model_ << " is missing";
    if (!fs::exists(BinPath("pipeinfer-router"))) GTEST_SKIP() << "pipeinfer-router is not built";
    ASSERT_TRUE(up_) << up_output_;
    ASSERT_EQ(endpoints_.stages.size(), 3u);
    ASSERT_EQ(endpoints_.stage_metrics.size(), 3u);
  }

  static std::string Scrape(const std::string& hostport) {
    const size_t colon = hostport.rfind(':');
    httplib::Client cli(hostport.substr(0, colon), std::stoi(hostport.substr(colon + 1)));
    cli.set_connection_timeout(5);
    auto r = cli.Get("/metrics");
    if (!r || r->status != 200) return "";
    return r->body;
  }

  // Waits until the stages are idle: two scrapes 300 ms apart are identical.
  static void WaitQuiescent() {
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < end) {
      std::vector<std::string> a, b;
      for (const auto& m : endpoints_.stage_metrics) a.push_back(Scrape(m));
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      for (const auto& m : endpoints_.stage_metrics) b.push_back(Scrape(m));
      if (a == b) return;
    }
  }

  static inline std::string model_, dir_, state_, up_output_;
  static inline bool up_ = false;
  static inline cluster::Endpoints endpoints_;
};

TEST_F(MetricsIntegrationTest, UpPrintsMetricsEndpoints) {
  for (const auto& m : endpoints_.stage_metrics) {
    EXPECT_NE(up_output_.find("http://" + m + "/metrics"), std::string::npos) << up_output_;
  }
  EXPECT_NE(up_output_.find("http://" + endpoints_.router_http + "/metrics"), std::string::npos)
      << up_output_;
}

TEST_F(MetricsIntegrationTest, StageMetricsEqualStats) {
  WaitQuiescent();
  for (int i = 0; i < 3; ++i) {
    SCOPED_TRACE("stage " + std::to_string(i));
    const std::string text = Scrape(endpoints_.stage_metrics[i]);
    ASSERT_FALSE(text.empty()) << "no /metrics at " << endpoints_.stage_metrics[i];
    const Exposition e = ParseExposition(text);
    EXPECT_TRUE(e.errors.empty()) << e.errors.front() << "\n" << text;
    // Besides its own series, every process exposes pipeinfer_build_info and process_*.
    EXPECT_TRUE(e.types.count("pipeinfer_build_info")) << text;
    EXPECT_TRUE(e.types.count("process_resident_memory_bytes")) << text;
    EXPECT_TRUE(e.types.count("process_cpu_seconds_total")) << text;
    for (const auto& [name, type] : e.types) {
      const bool shared = name == "pipeinfer_build_info" || name.rfind("process_", 0) == 0;
      if (!shared) {
        EXPECT_EQ(name.rfind("pipeinfer_stage_", 0), 0u) << name;
      }
      const bool total = name.size() > 6 && name.compare(name.size() - 6, 6, "_total") == 0;
      EXPECT_EQ(type == "counter", total) << name << " is a " << type;
    }
    // Every stage series carries this stage's index (and the model) as labels; by name without
    // its labels (a stage series has one label set).
    const std::string stage_label = "stage=\"" + std::to_string(i) + "\"";
    std::map<std::string, double> by_name;
    for (const auto& [key, value] : e.samples) {
      const size_t brace = key.find('{');
      const std::string name = key.substr(0, brace);
      if (name.rfind("pipeinfer_", 0) != 0) continue;
      EXPECT_NE(key.find(stage_label), std::string::npos) << key;
      EXPECT_NE(key.find("model=\""), std::string::npos) << key;
      if (key.find("le=\"") == std::string::npos) by_name[name] += value;
    }
    for (const char* want :
         {"pipeinfer_stage_runs_computed_total", "pipeinfer_stage_runs_skipped_total",
          "pipeinfer_stage_runs_stopped_total", "pipeinfer_stage_tombstones_forwarded_total",
          "pipeinfer_stage_forward_seconds", "pipeinfer_stage_input_queue_depth",
          "pipeinfer_stage_kv_blocks_in_use", "pipeinfer_stage_kv_blocks_capacity",
          "pipeinfer_stage_sessions_open", "pipeinfer_stage_received_bytes_total",
          "pipeinfer_stage_sent_bytes_total", "pipeinfer_stage_cancels_received_total"}) {
      EXPECT_TRUE(e.types.count(want)) << want << " missing:\n" << text;
    }
    EXPECT_EQ(e.types.at("pipeinfer_stage_forward_seconds"), "histogram");

    const CommandResult stats = RunCmd(
        {BinPath("pipeinfer"), "stats", "--stage", endpoints_.stages[i]}, std::chrono::seconds(30));
    ASSERT_EQ(stats.exit_code, 0) << stats.output;
    const auto s = ParseStats(stats.output);
    // A message that arrives between the scrape and the stats call (the draft service's lease
    // keep-alive Barrier) moves the byte counters: a value counts as equal when it lies between
    // this scrape and one taken after the stats call.
    std::map<std::string, double> after;
    for (const auto& [key, value] : ParseExposition(Scrape(endpoints_.stage_metrics[i])).samples) {
      if (key.find("le=\"") == std::string::npos) after[key.substr(0, key.find('{'))] += value;
    }
    // Every stats line is a metric with the same value, and every metric is a stats line.
    std::set<std::string> covered;
    for (const auto& [name, value] : s) {
      const std::string full =
          name == "build_info" ? "pipeinfer_build_info" : "pipeinfer_stage_" + name;
      ASSERT_TRUE(by_name.count(full)) << full << " is not in /metrics:\n" << text;
      const bool between = by_name.at(full) <= value && after.count(full) && value <= after[full];
      EXPECT_TRUE(Near(by_name.at(full), value) || between)
          << name << ": /metrics " << by_name.at(full) << ", stats " << value;
      covered.insert(full);
    }
    for (const auto& [name, type] : e.types) {
      if (name.rfind("process_", 0) == 0) continue;  // read from /proc at scrape time only
      if (type == "histogram") {
        EXPECT_TRUE(covered.count(name + "_count") && covered.count(name + "_sum")) << name;
      } else {
        EXPECT_TRUE(covered.count(name)) << name << " is not in `pipeinfer stats`";
      }
    }
    EXPECT_GT(s.at("runs_computed_total"), 0);
    EXPECT_EQ(s.at("forward_seconds_count"), s.at("runs_computed_total"));
    EXPECT_GT(s.at("forward_seconds_sum"), 0);
    EXPECT_GT(s.at("kv_blocks_capacity"), 0);
    EXPECT_GT(s.at("received_bytes_total"), 0);
    EXPECT_GT(s.at("sent_bytes_total"), 0);
    EXPECT_EQ(s.at("input_queue_depth"), 0);
  }
}

// The draft service: its /metrics and `pipeinfer stats --draft` read the same registry.
TEST_F(MetricsIntegrationTest, DraftMetricsEqualStats) {
  WaitQuiescent();
  ASSERT_FALSE(endpoints_.draft_metrics.empty());
  const std::string text = Scrape(endpoints_.draft_metrics);
  ASSERT_FALSE(text.empty()) << "no /metrics at " << endpoints_.draft_metrics;
  const Exposition e = ParseExposition(text);
  EXPECT_TRUE(e.errors.empty()) << e.errors.front() << "\n" << text;
  for (const char* want :
       {"pipeinfer_draft_requests_total", "pipeinfer_draft_tokens_generated_total",
        "pipeinfer_draft_runs_plain_total", "pipeinfer_draft_runs_speculative_total",
        "pipeinfer_draft_runs_cancelled_total", "pipeinfer_draft_tokens_drafted_total",
        "pipeinfer_draft_tokens_accepted_total", "pipeinfer_draft_sessions_open",
        "pipeinfer_draft_time_to_first_token_seconds"}) {
    EXPECT_TRUE(e.types.count(want)) << want << " missing:\n" << text;
  }
  const CommandResult stats = RunCmd({BinPath("pipeinfer"), "stats", "--draft", endpoints_.draft},
                                     std::chrono::seconds(30));
  ASSERT_EQ(stats.exit_code, 0) << stats.output;
  const auto s = ParseStats(stats.output);
  // By family name, summed over label sets (as stats lists them); histogram buckets left out.
  std::map<std::string, double> by_name;
  for (const auto& [key, value] : e.samples) {
    if (key.find("le=\"") == std::string::npos) by_name[key.substr(0, key.find('{'))] += value;
  }
  for (const auto& [name, value] : s) {
    // The draft's own series, or a top-level one (pipeinfer_spec_decode_*, pipeinfer_build_info).
    const std::string full =
        by_name.count("pipeinfer_draft_" + name) ? "pipeinfer_draft_" + name : "pipeinfer_" + name;
    ASSERT_TRUE(by_name.count(full)) << full << " is not in /metrics:\n" << text;
    EXPECT_TRUE(Near(by_name.at(full), value))
        << name << ": /metrics " << by_name.at(full) << ", stats " << value;
  }
  EXPECT_EQ(s.at("spec_decode_num_draft_tokens_total"), s.at("tokens_drafted_total"));
  EXPECT_EQ(s.at("spec_decode_num_accepted_tokens_total"), s.at("tokens_accepted_total"));
  EXPECT_GT(s.at("requests_total"), 0);
  EXPECT_GT(s.at("tokens_generated_total"), 0);
}

TEST_F(MetricsIntegrationTest, RouterStatsListEveryService) {
  WaitQuiescent();
  const CommandResult r =
      RunCmd({BinPath("pipeinfer"), "stats", "--router", endpoints_.router_grpc},
             std::chrono::seconds(30));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // `service.counter value` lines; services in order: router, draft, stage0, stage1, stage2.
  std::vector<std::string> order;
  std::map<std::string, double> values;
  static const std::regex line_re(R"(^([a-z0-9/]+)\.([a-z0-9_]+) ([-+0-9.e]+)$)");
  std::istringstream in(r.output);
  for (std::string line; std::getline(in, line);) {
    std::smatch m;
    ASSERT_TRUE(std::regex_match(line, m, line_re)) << "bad line '" << line << "' in\n" << r.output;
    if (order.empty() || order.back() != m[1]) order.push_back(m[1]);
    values[std::string(m[1]) + "." + std::string(m[2])] = std::strtod(m[3].str().c_str(), nullptr);
  }
  ASSERT_EQ(order.size(), 5u) << r.output;
  EXPECT_EQ(order[0], "router");
  EXPECT_EQ(order[1].rfind("draft", 0), 0u) << order[1];
  EXPECT_EQ(order[2], "stage0");
  EXPECT_EQ(order[3], "stage1");
  EXPECT_EQ(order[4], "stage2");
  EXPECT_GE(values["router.http_requests_total"] + values["router.grpc_requests_total"], 3)
      << r.output;
  EXPECT_GE(values["router.generation_tokens_total"], 24) << r.output;
  EXPECT_EQ(values["router.time_to_first_token_seconds_count"], 3) << r.output;
  for (int i = 0; i < 3; ++i) {
    const std::string svc = "stage" + std::to_string(i);
    const auto s =
        ParseStats(RunCmd({BinPath("pipeinfer"), "stats", "--stage", endpoints_.stages[i]},
                          std::chrono::seconds(30))
                       .output);
    for (const char* n : {"runs_computed_total", "runs_skipped_total", "tokens_computed_total"}) {
      ASSERT_TRUE(values.count(svc + "." + n)) << svc << "." << n << " missing in\n" << r.output;
      EXPECT_EQ(values[svc + "." + n], s.at(n)) << svc << "." << n;
    }
    EXPECT_GT(values[svc + ".runs_computed_total"], 0);
  }
}

TEST_F(MetricsIntegrationTest, StageStatsWithPipelineListTheChain) {
  const CommandResult r =
      RunCmd({BinPath("pipeinfer"), "stats", "--stage", endpoints_.stages[0], "--pipeline"},
             std::chrono::seconds(30));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(std::regex_search(r.output, std::regex("(^|\n)stage" + std::to_string(i) +
                                                       "\\.runs_computed_total [0-9]+\n")))
        << r.output;
  }
  EXPECT_LT(r.output.find("stage0."), r.output.find("stage1."));
  EXPECT_LT(r.output.find("stage1."), r.output.find("stage2."));
}

std::string FindInPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::istringstream in(path ? path : "/usr/bin:/bin");
  for (std::string dir; std::getline(in, dir, ':');) {
    const std::string p = dir + "/" + name;
    if (access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

TEST_F(MetricsIntegrationTest, PrometheusServerScrapesTheStages) {
  const std::string prom = FindInPath("prometheus");
  if (prom.empty()) {
    GTEST_SKIP() << "the prometheus binary is not installed (Debian package `prometheus`)";
  }
  WaitQuiescent();
  const std::string pdir = dir_ + "/prometheus";
  fs::create_directories(pdir + "/data");
  {
    std::ofstream cfg(pdir + "/prometheus.yml");
    cfg << "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        << "scrape_configs:\n  - job_name: pipeinfer-stages\n    static_configs:\n"
        << "      - targets: [";
    for (size_t i = 0; i < endpoints_.stage_metrics.size(); ++i) {
      cfg << (i ? ", " : "") << "'" << endpoints_.stage_metrics[i] << "'";
    }
    cfg << "]\n";
  }
  int port = 0;
  std::unique_ptr<ChildProcess> p;
  for (int attempt = 0; attempt < 3; ++attempt) {
    port = FreePortRange(1);
    p = std::make_unique<ChildProcess>(
        std::vector<std::string>{prom, "--config.file=" + pdir + "/prometheus.yml",
                                 "--storage.tsdb.path=" + pdir + "/data",
                                 "--web.listen-address=127.0.0.1:" + std::to_string(port)},
        pdir + "/prometheus.log");
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    if (p->Running()) break;
  }
  ASSERT_TRUE(p->Running()) << ReadText(pdir + "/prometheus.log");

  httplib::Client cli("127.0.0.1", port);
  cli.set_connection_timeout(2);
  std::map<std::string, double> by_instance;
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(90);
  while (std::chrono::steady_clock::now() < end && p->Running()) {
    auto r = cli.Get("/api/v1/query?query=pipeinfer_stage_runs_computed_total");
    if (r && r->status == 200) {
      const auto j = nlohmann::json::parse(r->body, nullptr, false);
      if (!j.is_discarded() && j.value("status", "") == "success" &&
          j["data"]["result"].size() == 3) {
        for (const auto& s : j["data"]["result"]) {
          by_instance[s["metric"]["instance"].get<std::string>()] =
              std::stod(s["value"][1].get<std::string>());
        }
        break;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  ASSERT_EQ(by_instance.size(), 3u) << ReadText(pdir + "/prometheus.log");
  for (int i = 0; i < 3; ++i) {
    const auto s =
        ParseStats(RunCmd({BinPath("pipeinfer"), "stats", "--stage", endpoints_.stages[i]},
                          std::chrono::seconds(30))
                       .output);
    ASSERT_TRUE(by_instance.count(endpoints_.stage_metrics[i]));
    EXPECT_EQ(by_instance[endpoints_.stage_metrics[i]], s.at("runs_computed_total"));
  }
  // Every stage counter is a series; `up` is 1 for every target.
  auto names = cli.Get("/api/v1/label/__name__/values");
  ASSERT_TRUE(names && names->status == 200);
  const auto nj = nlohmann::json::parse(names->body);
  std::set<std::string> series(nj["data"].begin(), nj["data"].end());
  for (const char* want :
       {"pipeinfer_stage_runs_skipped_total", "pipeinfer_stage_tombstones_forwarded_total",
        "pipeinfer_stage_forward_seconds_bucket"}) {
    EXPECT_TRUE(series.count(want)) << want;
  }
  auto up = cli.Get("/api/v1/query?query=sum(up%7Bjob%3D%22pipeinfer-stages%22%7D)");
  ASSERT_TRUE(up && up->status == 200);
  const auto uj = nlohmann::json::parse(up->body);
  EXPECT_EQ(uj["data"]["result"][0]["value"][1], "3") << up->body;
}

}  // namespace
}  // namespace pipeinfer
