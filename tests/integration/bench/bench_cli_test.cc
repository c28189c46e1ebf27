// `pipeinfer bench` against a real 2-stage cluster of the demo models: it exits 0, prints a table
// with one row per mode (and per ablation), finds greedy tokens identical across modes, and writes
// the same report to --out and a JSON file with every request; with --concurrency one row per mode
// and level whose requests really overlapped. Against an in-process fake router: a full admission
// queue (RESOURCE_EXHAUSTED) under --concurrency is counted, other errors fail the run after the
// report. No speed assertions.
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "cluster/supervisor.h"
#include "pipeinfer/v1/router.grpc.pb.h"
#include "testing/cluster_harness.h"
#include "testing/detached_cluster_test.h"
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

class BenchCliTest : public testing::DetachedClusterTest {
 protected:
  BenchCliTest() : DetachedClusterTest("bench_cli_test") {}

  // A detached 2-stage demo cluster (pipeinfer mode by default; each request picks its own);
  // false (with a failure recorded) if `pipeinfer up` keeps failing.
  bool StartCluster(cluster::ClusterState* state) {
    const std::string models = PIPEINFER_MODELS_DIR;
    CommandResult up;
    for (int attempt = 0; attempt < 3 && up.exit_code != 0; ++attempt) {
      // Stages 0..1, the draft service, the router's gRPC port; then its HTTP port apart.
      const int base = FreePortRange(4);
      up = RunCmd({BinPath("pipeinfer"),
                   "up",
                   "--model",
                   models + "/demo-target-q8_0.gguf",
                   "--draft-model",
                   models + "/demo-draft-q8_0.gguf",
                   "--stages",
                   "2",
                   "--mode",
                   "pipeinfer",
                   "--base-port",
                   std::to_string(base),
                   "--http-port",
                   std::to_string(FreePortRange(1)),
                   "--metrics-base-port",
                   "-1",
                   "--detach",
                   "--state",
                   state_,
                   "--log-dir",
                   dir_ + "/logs"},
                  std::chrono::seconds(60));
      if (up.exit_code != 0)
        std::fprintf(stderr, "up failed (attempt %d):\n%s\n", attempt, up.output.c_str());
    }
    EXPECT_EQ(up.exit_code, 0) << up.output;
    if (up.exit_code != 0) return false;
    auto st = cluster::ReadState(state_);
    EXPECT_TRUE(st.ok()) << st.status();
    if (!st.ok() || st->endpoints.router_grpc.empty()) return false;
    *state = *std::move(st);
    return true;
  }

  std::string WritePrompts() {
    const std::string prompts = dir_ + "/prompts.txt";
    std::ofstream(prompts) << "It is a truth universally acknowledged, that\n"
                           << "\n"  // blank lines are skipped
                           << "Emma Woodhouse, handsome, clever, and rich,\n";
    return prompts;
  }
};

TEST_F(BenchCliTest, AllModesGiveIdenticalGreedyTokensOnTwoStages) {
  if (!fs::exists(BinPath("pipeinfer-router"))) {
    GTEST_SKIP() << BinPath("pipeinfer-router") << " is not built";
  }
  cluster::ClusterState state;
  ASSERT_TRUE(StartCluster(&state));
  const std::string prompts = WritePrompts();
  const std::string out = dir_ + "/bench.md";
  const std::string json_path = dir_ + "/bench.json";
  const CommandResult bench =
      RunCmd({BinPath("pipeinfer"), "bench", "--router", state.endpoints.router_grpc, "--draft",
              state.endpoints.draft, "--prompts", prompts, "--max-tokens", "16", "--ablations",
              "--stats", "--out", out, "--json", json_path},
             std::chrono::seconds(75));
  ASSERT_EQ(bench.exit_code, 0) << bench.output;
  EXPECT_NE(bench.output.find("identical tokens across modes: yes"), std::string::npos)
      << bench.output;
  // One table row per mode and ablation, each with 2 requests of 16 tokens.
  for (const std::string mode :
       {"plain", "sync", "pipeinfer", "pipeinfer --no-cancel", "pipeinfer --no-continuous",
        "sync --paper-tree", "pipeinfer --paper-tree"}) {
    EXPECT_TRUE(std::regex_search(bench.output, std::regex("\n\\| " + mode + " \\| 2 \\| 32 \\|")))
        << mode << "\n"
        << bench.output;
  }
  EXPECT_NE(bench.output.find("stages: 2"), std::string::npos) << bench.output;
  EXPECT_NE(bench.output.find("demo-target-q8_0"), std::string::npos) << bench.output;

  // --out holds the report printed on stdout; --json every request.
  const std::string md = ReadText(out);
  EXPECT_NE(md.find("identical tokens across modes: yes"), std::string::npos) << md;
  EXPECT_NE(bench.output.find(md), std::string::npos) << md;
  const auto j = nlohmann::json::parse(ReadText(json_path), nullptr, false);
  ASSERT_FALSE(j.is_discarded());
  EXPECT_EQ(j["rows"].size(), 7u);
  ASSERT_EQ(j["requests"].size(), 14u);
  for (const auto& r : j["requests"]) {
    EXPECT_EQ(r["completion_tokens"], 16) << r.dump();
    EXPECT_EQ(r["token_ids"].size(), 16u) << r.dump();
  }
  EXPECT_EQ(j["identical_tokens"], true);

  const CommandResult down =
      RunCmd({BinPath("pipeinfer"), "down", "--state", state_}, std::chrono::seconds(60));
  EXPECT_EQ(down.exit_code, 0) << down.output;
}

// --concurrency 1,3: one row per mode and level, the same greedy tokens for a prompt in every mode
// and level (the stages batch runs of different requests bit-exactly per row), and at N=3 the
// requests really ran at the same time.
TEST_F(BenchCliTest, ConcurrencyLevelsOverlapAndKeepGreedyTokens) {
  if (!fs::exists(BinPath("pipeinfer-router"))) {
    GTEST_SKIP() << BinPath("pipeinfer-router") << " is not built";
  }
  cluster::ClusterState state;
  ASSERT_TRUE(StartCluster(&state));
  const std::string prompts = WritePrompts();
  const std::string out = dir_ + "/bench.md";
  const std::string json_path = dir_ + "/bench.json";
  const CommandResult bench =
      RunCmd({BinPath("pipeinfer"), "bench", "--router", state.endpoints.router_grpc, "--draft",
              state.endpoints.draft, "--prompts", prompts, "-n", "8", "--concurrency", "1,3",
              "--stats", "--out", out, "--json", json_path},
             std::chrono::seconds(75));
  ASSERT_EQ(bench.exit_code, 0) << bench.output;
  EXPECT_NE(bench.output.find("identical tokens across modes: yes"), std::string::npos)
      << bench.output;
  EXPECT_NE(bench.output.find("stages: 2"), std::string::npos) << bench.output;
  EXPECT_NE(bench.output.find("- commit: "), std::string::npos) << bench.output;
  // Requests per level: max(2N, 2 prompts) = 2 at N=1 and 6 at N=3, none failed, 8 tokens each.
  for (const std::string mode : {"plain", "sync", "pipeinfer"}) {
    EXPECT_TRUE(std::regex_search(bench.output,
                                  std::regex("\n\\| " + mode + " \\| 1 \\| 2 \\| 0 \\| 16 \\|")))
        << mode << "\n"
        << bench.output;
    EXPECT_TRUE(std::regex_search(bench.output,
                                  std::regex("\n\\| " + mode + " \\| 3 \\| 6 \\| 0 \\| 48 \\|")))
        << mode << "\n"
        << bench.output;
  }
  // --out holds the report printed on stdout.
  const std::string md = ReadText(out);
  EXPECT_NE(md.find("| mode | N |"), std::string::npos) << md;
  EXPECT_NE(bench.output.find(md), std::string::npos) << md;

  const auto j = nlohmann::json::parse(ReadText(json_path), nullptr, false);
  ASSERT_FALSE(j.is_discarded());
  EXPECT_EQ(j["identical_tokens"], true);
  ASSERT_EQ(j["rows"].size(), 6u);
  for (const auto& row : j["rows"]) {
    EXPECT_EQ(row["errors"], 0) << row.dump();
    // At N=3 the level took less than its requests' summed time: they overlapped.
    if (row["concurrency"] == 3) {
      EXPECT_LT(row["wall_s"].get<double>(), row["busy_s"].get<double>()) << row.dump();
      EXPECT_GT(row["in_flight"].get<double>(), 1.0) << row.dump();
    }
  }
  ASSERT_EQ(j["requests"].size(), 3u * (2 + 6));
  // The same tokens for a prompt everywhere; per (mode, N=3) two requests whose
  // [start_s, end_s] intervals intersect.
  std::map<int, std::vector<int>> ids_of_prompt;
  std::map<std::string, std::vector<std::pair<double, double>>> spans;
  for (const auto& r : j["requests"]) {
    EXPECT_EQ(r["status"], "OK") << r.dump();
    EXPECT_EQ(r["token_ids"].size(), 8u) << r.dump();
    auto ids = r["token_ids"].get<std::vector<int>>();
    auto [it, fresh] = ids_of_prompt.emplace(r["prompt"].get<int>(), ids);
    if (!fresh) {
      EXPECT_EQ(it->second, ids) << r.dump();
    }
    if (r["concurrency"] == 3) {
      spans[r["mode"].get<std::string>()].push_back(
          {r["start_s"].get<double>(), r["end_s"].get<double>()});
    }
  }
  EXPECT_EQ(ids_of_prompt.size(), 2u);
  ASSERT_EQ(spans.size(), 3u);
  for (const auto& [mode, s] : spans) {
    bool overlap = false;
    for (size_t a = 0; a < s.size(); ++a) {
      for (size_t b = a + 1; b < s.size(); ++b) {
        overlap |= s[a].first < s[b].second && s[b].first < s[a].second;
      }
    }
    EXPECT_TRUE(overlap) << mode;
  }

  const CommandResult down =
      RunCmd({BinPath("pipeinfer"), "down", "--state", state_}, std::chrono::seconds(60));
  EXPECT_EQ(down.exit_code, 0) << down.output;
}

// A Router that admits one request at a time and refuses the others with RESOURCE_EXHAUSTED, like
// the real router with --max-inflight 1 --max-queue 0. The admitted request waits for a refusal
// (at most 5 s), so that every run sees at least one. The prompt "boom" fails with INTERNAL.
class OneSlotRouter final : public v1::Router::Service {
 public:
  grpc::Status Complete(grpc::ServerContext*, const v1::CompletionRequest* req,
                        grpc::ServerWriter<v1::GenerateEvent>* writer) override {
    std::unique_lock lock(mu_);
    if (busy_) {
      ++refused_;
      cv_.notify_all();
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "too many requests");
    }
    busy_ = true;
    cv_.wait_for(lock, std::chrono::seconds(5), [&] { return refused_ > 0; });
    busy_ = false;
    lock.unlock();
    if (req->text() == "boom") return grpc::Status(grpc::StatusCode::INTERNAL, "boom");
    v1::GenerateEvent ev;
    for (uint32_t id : {5u, 6u, 7u}) ev.mutable_delta()->add_token_ids(id);
    writer->Write(ev);
    v1::GenerateEvent fin;
    fin.mutable_finished()->mutable_usage()->set_completion_tokens(3);
    fin.mutable_finished()->mutable_spec()->set_mode(req->options().spec().mode());
    writer->Write(fin);
    return grpc::Status::OK;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool busy_ = false;
  int refused_ = 0;
};

class FakeRouter {
 public:
  FakeRouter() {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    b.RegisterService(&service_);
    server_ = b.BuildAndStart();
  }
  ~FakeRouter() { server_->Shutdown(std::chrono::system_clock::now()); }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  OneSlotRouter service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

// A full admission queue under --concurrency is counted per code in the table and the JSON, and
// the run still succeeds; any other error is counted too but fails the run (after the report).
TEST_F(BenchCliTest, ConcurrencyCountsRefusedRequests) {
  FakeRouter router;
  const std::string json_path = dir_ + "/bench.json";
  const CommandResult bench = RunCmd(
      {BinPath("pipeinfer"), "bench", "--router", router.address(), "--modes", "plain", "--warmup",
       "0", "--concurrency", "3", "--requests-per-level", "9", "--json", json_path},
      std::chrono::seconds(60));
  ASSERT_EQ(bench.exit_code, 0) << bench.output;
  EXPECT_TRUE(std::regex_search(bench.output, std::regex("\n\\| plain \\| 3 \\| [1-8] \\| [1-8] "
                                                         "\\(RESOURCE_EXHAUSTED [1-8]\\) \\|")))
      << bench.output;
  const auto j = nlohmann::json::parse(ReadText(json_path), nullptr, false);
  ASSERT_FALSE(j.is_discarded());
  ASSERT_EQ(j["rows"].size(), 1u);
  const auto& row = j["rows"][0];
  EXPECT_EQ(row["requests"].get<int>() + row["errors"].get<int>(), 9) << row.dump();
  EXPECT_EQ(row["errors_by_code"]["RESOURCE_EXHAUSTED"], row["errors"]) << row.dump();
  EXPECT_EQ(row["completion_tokens"].get<int>(), 3 * row["requests"].get<int>()) << row.dump();

  const std::string prompts = dir_ + "/boom.txt";
  std::ofstream(prompts) << "fine\nboom\n";
  const CommandResult failing = RunCmd(
      {BinPath("pipeinfer"), "bench", "--router", router.address(), "--modes", "plain", "--warmup",
       "0", "--concurrency", "3", "--requests-per-level", "6", "--prompts", prompts},
      std::chrono::seconds(60));
  EXPECT_EQ(failing.exit_code, 1) << failing.output;
  EXPECT_NE(failing.output.find("INTERNAL"), std::string::npos) << failing.output;
  EXPECT_NE(failing.output.find("| plain | 3 |"), std::string::npos) << failing.output;
}

// Without a reachable router the command fails readably instead of hanging or printing a table.
TEST_F(BenchCliTest, UnreachableRouterFails) {
  const CommandResult r = RunCmd(
      {BinPath("pipeinfer"), "bench", "--router", "127.0.0.1:" + std::to_string(FreePortRange(1)),
       "--warmup", "0", "--max-tokens", "4", "--modes", "plain"},
      std::chrono::seconds(60));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("error:"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("| plain |"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace pipeinfer
