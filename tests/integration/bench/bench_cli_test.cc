// `pipeinfer bench` against a real 2-stage cluster of the demo models: it exits 0, prints a table
// with one row per mode (and per ablation), finds greedy tokens identical across modes, and writes
// the same report to --out and a JSON file with every request. No timing assertions.
#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

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

class BenchCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/bench_cli_test." + std::to_string(getpid());
    fs::create_directories(dir_);
    state_ = dir_ + "/cluster.json";
  }
  void TearDown() override {
    // Never leave a detached cluster behind, even when an assertion failed half-way.
    if (fs::exists(state_)) {
      RunCmd({BinPath("pipeinfer"), "down", "--state", state_}, std::chrono::seconds(30));
    }
    if (!HasFailure()) fs::remove_all(dir_);
  }

  std::string dir_, state_;
};

TEST_F(BenchCliTest, AllModesGiveIdenticalGreedyTokensOnTwoStages) {
  if (!fs::exists(BinPath("pipeinfer-router"))) {
    GTEST_SKIP() << BinPath("pipeinfer-router") << " is not built";
  }
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
  ASSERT_EQ(up.exit_code, 0) << up.output;
  auto state = cluster::ReadState(state_);
  ASSERT_TRUE(state.ok()) << state.status();
  ASSERT_FALSE(state->endpoints.router_grpc.empty());

  const std::string prompts = dir_ + "/prompts.txt";
  std::ofstream(prompts) << "It is a truth universally acknowledged, that\n"
                         << "\n"  // blank lines are skipped
                         << "Emma Woodhouse, handsome, clever, and rich,\n";
  const std::string out = dir_ + "/bench.md";
  const std::string json_path = dir_ + "/bench.json";
  const CommandResult bench =
      RunCmd({BinPath("pipeinfer"), "bench", "--router", state->endpoints.router_grpc, "--draft",
              state->endpoints.draft, "--prompts", prompts, "--max-tokens", "16", "--ablations",
              "--stats", "--out", out, "--json", json_path},
             std::chrono::seconds(75));
  ASSERT_EQ(bench.exit_code, 0) << bench.output;
  EXPECT_NE(bench.output.find("identical tokens across modes: yes"), std::string::npos)
      << bench.output;
  // One table row per mode and ablation, each with 2 requests of 16 tokens.
  for (const std::string mode :
       {"plain", "sync", "pipeinfer", "pipeinfer --no-cancel", "pipeinfer --no-continuous"}) {
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
  EXPECT_EQ(j["rows"].size(), 5u);
  ASSERT_EQ(j["requests"].size(), 10u);
  for (const auto& r : j["requests"]) {
    EXPECT_EQ(r["completion_tokens"], 16) << r.dump();
    EXPECT_EQ(r["token_ids"].size(), 16u) << r.dump();
  }
  EXPECT_EQ(j["identical_tokens"], true);

  const CommandResult down =
      RunCmd({BinPath("pipeinfer"), "down", "--state", state_}, std::chrono::seconds(60));
  EXPECT_EQ(down.exit_code, 0) << down.output;
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
