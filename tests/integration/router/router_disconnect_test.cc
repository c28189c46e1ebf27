// A client that goes away frees what its request holds within 1 s, on real processes (two tiny-f32
// stages, stage 0 slowed to 20 ms per run + 5 ms per token so that a generation lasts seconds, the
// draft service and a router):
//   * a non-streamed request whose client closes mid-generation: nothing is ever written to the
//     client before the end, so only the router's connection watch can notice;
//   * a streamed request whose client closes during a long prefill (no token written yet);
//   * a request waiting in the admission queue gives up its place.
// "Freed" is read from the services themselves: the draft service's active_sessions and the
// stages' kv_blocks_in_use / sessions_open back to 0. The router counts each one as cancelled
// (requests_cancelled_total) and with code 499, never as 200.
#include <httplib.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "router_cluster.h"
#include "testing/time_scale.h"

namespace pipeinfer {
namespace {

using json = nlohmann::json;
using pipeinfer::testing::BinPath;
using pipeinfer::testing::ChildProcess;
using pipeinfer::testing::ConnectLoopback;
using pipeinfer::testing::FixturePath;
using pipeinfer::testing::FreePort;
using pipeinfer::testing::GetDraftInfo;
using pipeinfer::testing::GetStageInfo;
using pipeinfer::testing::PostRequest;
using pipeinfer::testing::ReadText;
using pipeinfer::testing::RouterCluster;
using pipeinfer::testing::SendAll;
using pipeinfer::testing::WaitServing;
using Clock = std::chrono::steady_clock;

std::unique_ptr<RouterCluster> cluster;

// The value of the sample `series` (name with labels, exactly as exposed) in a /metrics text.
double Metric(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return 0;
}

// The sum over the series of family `name` whose labels include every `key="value"` of `labels`.
double SumMetric(const std::string& text, const std::string& name,
                 const std::vector<std::string>& labels) {
  double sum = 0;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(name + "{", 0) != 0) continue;
    const size_t close = line.find("} ");
    if (close == std::string::npos) continue;
    const std::string set = line.substr(name.size(), close - name.size() + 1);
    bool all = true;
    for (const std::string& l : labels) {
      all = all && (set.find("{" + l + ",") != std::string::npos ||
                    set.find("," + l + ",") != std::string::npos ||
                    set.find("," + l + "}") != std::string::npos ||
                    set.find("{" + l + "}") != std::string::npos);
    }
    if (all) sum += std::stod(line.substr(close + 2));
  }
  return sum;
}

std::string Scrape(int http_port) {
  httplib::Client c("127.0.0.1", http_port);
  auto r = c.Get("/metrics");
  return r && r->status == 200 ? r->body : "";
}

bool PipelineIdle() {
  const v1::StageInfo s0 = GetStageInfo(cluster->pipeline.stage0);
  const v1::StageInfo s1 = GetStageInfo(cluster->pipeline.stage1);
  return GetDraftInfo(cluster->pipeline.draft).active_sessions() == 0 &&
         s0.kv_blocks_in_use() == 0 && s1.kv_blocks_in_use() == 0 && s0.sessions_open() == 0 &&
         s1.sessions_open() == 0;
}

// Waits until `pred` holds (up to `limit`); the time it took, or limit + 1 s when it never did.
template <typename Pred>
std::chrono::milliseconds TimeUntil(Pred pred, std::chrono::milliseconds limit) {
  const auto t0 = Clock::now();
  while (Clock::now() - t0 < limit) {
    if (pred()) {
      return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return limit + std::chrono::seconds(1);
}

class RouterDisconnectTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cluster = pipeinfer::testing::StartRouterCluster(
        "router_disconnect_test", {"--emulate-run-us", "20000", "--emulate-token-us", "5000"}, {});
  }
  static void TearDownTestSuite() {
    if (!cluster) return;
    EXPECT_EQ(cluster->services->Stop("router"), 0) << cluster->services->Log("router");
    cluster->services->Finish();
    cluster.reset();
  }
  void SetUp() override {
    ASSERT_NE(cluster, nullptr) << "the processes did not start";
    ASSERT_LT(TimeUntil(PipelineIdle, std::chrono::seconds(10)), std::chrono::seconds(10))
        << "the pipeline is not idle before the test";
  }

  // Opens a connection and sends `body` to `path`; waits until the draft service is generating
  // for it. -1 on failure.
  static int StartRequest(int port, const std::string& path, const json& body) {
    const int fd = ConnectLoopback(port);
    if (fd < 0 || !SendAll(fd, PostRequest(path, body.dump()))) return -1;
    const auto waited =
        TimeUntil([] { return GetDraftInfo(cluster->pipeline.draft).active_sessions() >= 1; },
                  std::chrono::seconds(10));
    if (waited > std::chrono::seconds(10)) {
      close(fd);
      return -1;
    }
    return fd;
  }
};

TEST_F(RouterDisconnectTest, DroppedWholeAnswerFreesSessionAndKvWithinOneSecond) {
  const std::string before = Scrape(cluster->http_port);
  const int fd = StartRequest(cluster->http_port, "/v1/completions",
                              json{{"prompt", "Hello"}, {"max_tokens", 400}, {"temperature", 0}});
  ASSERT_GE(fd, 0) << cluster->services->Logs();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // mid-generation (~25 ms/token)
  ASSERT_EQ(GetDraftInfo(cluster->pipeline.draft).active_sessions(), 1u);
  ASSERT_GT(GetStageInfo(cluster->pipeline.stage0).kv_blocks_in_use(), 0u);
  close(fd);
  const auto freed = TimeUntil(PipelineIdle, std::chrono::seconds(15));
  EXPECT_LT(freed, std::chrono::seconds(1) * pipeinfer::testing::TimeScale())
      << "freed after " << freed.count() << " ms";
  std::printf("whole answer: draft session and KV freed %lld ms after the client closed\n",
              static_cast<long long>(freed.count()));

  const std::string after = Scrape(cluster->http_port);
  const std::string cancelled =
      "pipeinfer_router_requests_cancelled_total{endpoint=\"/v1/completions\"}";
  const auto by_code = [](const std::string& text, const char* code) {
    return SumMetric(text, "pipeinfer_router_http_requests_total",
                     {"endpoint=\"/v1/completions\"", std::string("http_code=\"") + code + "\""});
  };
  const auto aborted = [](const std::string& text) {
    return SumMetric(text, "pipeinfer_request_success_total", {"finished_reason=\"abort\""});
  };
  EXPECT_EQ(Metric(after, cancelled) - Metric(before, cancelled), 1) << after;
  EXPECT_EQ(by_code(after, "499") - by_code(before, "499"), 1) << after;
  EXPECT_EQ(by_code(after, "200"), by_code(before, "200")) << after;
  EXPECT_EQ(aborted(after) - aborted(before), 1) << after;
}

TEST_F(RouterDisconnectTest, StreamDroppedDuringPrefillFreesWithinOneSecond) {
  // ~350 prompt tokens: stage 0 spends ~1.8 s on the prefill, writing nothing to the client.
  const std::string prompt = [] {
    std::string t = ReadText(FixturePath("prompts/p1.txt")), s;
    while (s.size() < 250) s += t;
    return s.substr(0, 250);
  }();
  const std::string before = Scrape(cluster->http_port);
  const int fd = StartRequest(cluster->http_port, "/v1/chat/completions",
                              json{{"messages", {{{"role", "user"}, {"content", prompt}}}},
                                   {"max_tokens", 40},
                                   {"stream", true}});
  ASSERT_GE(fd, 0) << cluster->services->Logs();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  char c;
  ASSERT_LT(recv(fd, &c, 1, MSG_DONTWAIT), 0) << "the router answered before the prefill ended";
  close(fd);
  const auto freed = TimeUntil(PipelineIdle, std::chrono::seconds(15));
  EXPECT_LT(freed, std::chrono::seconds(1) * pipeinfer::testing::TimeScale())
      << "freed after " << freed.count() << " ms";
  std::printf("stream in prefill: draft session and KV freed %lld ms after the client closed\n",
              static_cast<long long>(freed.count()));
  const std::string cancelled =
      "pipeinfer_router_requests_cancelled_total{endpoint=\"/v1/chat/completions\"}";
  EXPECT_EQ(Metric(Scrape(cluster->http_port), cancelled) - Metric(before, cancelled), 1);
}

// A router with one slot: a queued request whose client leaves gives up its place at once, and
// the one generating is freed when its client leaves too.
TEST_F(RouterDisconnectTest, QueuedRequestGivesUpItsPlace) {
  const int http_port = FreePort();
  const std::string grpc_addr = "127.0.0.1:" + std::to_string(FreePort());
  const std::string log =
      ::testing::TempDir() + "/router_disconnect_test." + std::to_string(getpid()) + ".router2.log";
  ChildProcess router(
      {BinPath("pipeinfer-router"), "--http", "127.0.0.1:" + std::to_string(http_port), "--grpc",
       grpc_addr, "--draft", cluster->pipeline.draft, "--model",
       FixturePath("models/tiny-f32.gguf"), "--max-inflight", "1", "--max-queue", "4"},
      log);
  ASSERT_TRUE(WaitServing(grpc_addr, log, router, std::chrono::seconds(30))) << ReadText(log);
  const json long_request{{"prompt", "Hello"}, {"max_tokens", 400}, {"temperature", 0}};
  const int running = StartRequest(http_port, "/v1/completions", long_request);
  ASSERT_GE(running, 0) << ReadText(log);
  const int queued = ConnectLoopback(http_port);
  ASSERT_TRUE(SendAll(queued, PostRequest("/v1/completions", long_request.dump())));
  const auto depth = [&] {
    return SumMetric(Scrape(http_port), "pipeinfer_num_requests_waiting", {});
  };
  ASSERT_LT(TimeUntil([&] { return depth() == 1; }, std::chrono::seconds(5)),
            std::chrono::seconds(5));
  close(queued);
  const auto left = TimeUntil([&] { return depth() == 0; }, std::chrono::seconds(5));
  EXPECT_LT(left, std::chrono::seconds(1) * pipeinfer::testing::TimeScale())
      << "left the queue after " << left.count() << " ms";
  EXPECT_EQ(GetDraftInfo(cluster->pipeline.draft).active_sessions(), 1u);  // still generating
  close(running);
  EXPECT_LT(TimeUntil(PipelineIdle, std::chrono::seconds(15)),
            std::chrono::seconds(1) * pipeinfer::testing::TimeScale());
  const std::string m = Scrape(http_port);
  EXPECT_EQ(Metric(m, "pipeinfer_router_requests_cancelled_total{endpoint=\"/v1/completions\"}"), 2)
      << m;
  EXPECT_EQ(router.Stop(), 0) << ReadText(log);
  std::remove(log.c_str());
}

}  // namespace
}  // namespace pipeinfer
