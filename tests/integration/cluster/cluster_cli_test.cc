// The `pipeinfer` cluster commands against real processes on loopback: `up --detach` brings every
// process to SERVING and `down` stops exactly those; a foreground `up` stopped by SIGTERM (or
// killed) leaves no process behind; bad configurations fail with a readable error; and, when the
// router binary is built, `chat` streams text and `complete --print-ids` reproduces llama.cpp's
// greedy ids.
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "cluster/supervisor.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "testing/cluster_harness.h"
#include "testing/detached_cluster_test.h"
#include "testing/fixtures.h"
#include "testing/grpc_health.h"
#include "testing/process.h"

namespace pipeinfer {
namespace {

namespace fs = std::filesystem;
using pipeinfer::testing::BinPath;
using pipeinfer::testing::ChildProcess;
using pipeinfer::testing::CommandResult;
using pipeinfer::testing::FixturePath;
using pipeinfer::testing::FreePortRange;
using pipeinfer::testing::ReadText;
using pipeinfer::testing::RunCmd;

bool Serving(const std::string& addr) {
  return pipeinfer::testing::HealthServing(addr, std::chrono::seconds(2));
}

// Waits until none of `pids` is a live (non-zombie) process.
bool AllGone(const std::vector<pid_t>& pids, std::chrono::seconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (true) {
    bool gone = true;
    for (pid_t p : pids) gone = gone && !cluster::ProcessAlive(p, 0);
    if (gone) return true;
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

class ClusterCliTest : public testing::DetachedClusterTest {
 protected:
  ClusterCliTest() : DetachedClusterTest("cluster_cli_test") {}

  // `pipeinfer up --detach` for the tiny model on 2 stages (retrying on a port race).
  CommandResult UpDetached(const std::vector<std::string>& extra, int ports) {
    return UpModel(FixturePath("models/tiny-f32.gguf"), 2, extra, ports);
  }

  CommandResult UpModel(const std::string& model, int stages, const std::vector<std::string>& extra,
                        int ports) {
    CommandResult r;
    for (int attempt = 0; attempt < 3; ++attempt) {
      base_port_ = FreePortRange(ports);
      std::vector<std::string> argv = {BinPath("pipeinfer"),
                                       "up",
                                       "--model",
                                       model,
                                       "--stages",
                                       std::to_string(stages),
                                       "--kv-tokens",
                                       "2048",
                                       "--base-port",
                                       std::to_string(base_port_),
                                       "--detach",
                                       "--state",
                                       state_,
                                       "--log-dir",
                                       dir_ + "/logs"};
      argv.insert(argv.end(), extra.begin(), extra.end());
      r = RunCmd(argv, std::chrono::seconds(90));
      if (r.exit_code == 0) return r;
      std::fprintf(stderr, "up failed (attempt %d):\n%s\n", attempt, r.output.c_str());
    }
    return r;
  }

  int base_port_ = 0;
};

TEST_F(ClusterCliTest, DetachedUpStatsDown) {
  const CommandResult up = UpDetached({"--no-router"}, 3);
  ASSERT_EQ(up.exit_code, 0) << up.output;
  EXPECT_NE(up.output.find("cluster is up"), std::string::npos) << up.output;
  auto state = cluster::ReadState(state_);
  ASSERT_TRUE(state.ok()) << state.status();
  ASSERT_EQ(state->processes.size(), 3u);
  ASSERT_EQ(state->endpoints.stages.size(), 2u);
  EXPECT_TRUE(state->endpoints.router_http.empty());
  std::vector<pid_t> pids;
  for (const auto& p : state->processes) {
    pids.push_back(p.pid);
    EXPECT_TRUE(cluster::ProcessAlive(p.pid, p.start_time)) << p.name;
    EXPECT_TRUE(Serving(p.address)) << p.name << " at " << p.address;
  }

  for (const auto& addr : state->endpoints.stages) {
    const CommandResult stats =
        RunCmd({BinPath("pipeinfer"), "stats", "--stage", addr}, std::chrono::seconds(30));
    EXPECT_EQ(stats.exit_code, 0) << stats.output;
    EXPECT_TRUE(std::regex_search(stats.output, std::regex("(^|\n)runs_computed_total [0-9]+\n")))
        << stats.output;
  }
  const CommandResult dstats = RunCmd(
      {BinPath("pipeinfer"), "stats", "--draft", state->endpoints.draft}, std::chrono::seconds(30));
  EXPECT_EQ(dstats.exit_code, 0) << dstats.output;
  EXPECT_TRUE(std::regex_search(dstats.output, std::regex("(^|\n)[a-z_]+ [0-9.e+-]+\n")))
      << dstats.output;

  // A second detached cluster on the same state file is refused.
  const CommandResult again =
      RunCmd({BinPath("pipeinfer"), "up", "--model", FixturePath("models/tiny-f32.gguf"),
              "--no-router", "--detach", "--state", state_},
             std::chrono::seconds(30));
  EXPECT_EQ(again.exit_code, 1) << again.output;
  EXPECT_NE(again.output.find("already running"), std::string::npos) << again.output;

  const CommandResult down =
      RunCmd({BinPath("pipeinfer"), "down", "--state", state_}, std::chrono::seconds(60));
  EXPECT_EQ(down.exit_code, 0) << down.output;
  EXPECT_TRUE(AllGone(pids, std::chrono::seconds(10)));
  EXPECT_FALSE(fs::exists(state_));

  // Nothing left to stop.
  const CommandResult down2 =
      RunCmd({BinPath("pipeinfer"), "down", "--state", state_}, std::chrono::seconds(30));
  EXPECT_EQ(down2.exit_code, 1) << down2.output;
  EXPECT_NE(down2.output.find("no cluster state file"), std::string::npos) << down2.output;
}

// Starts a foreground `up` and returns the pids it reports once the cluster is up.
std::vector<pid_t> StartForeground(ChildProcess& up, const std::string& log) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(90);
  while (ReadText(log).find("running in the foreground") == std::string::npos) {
    if (!up.Running() || std::chrono::steady_clock::now() > end) {
      ADD_FAILURE() << "foreground up did not come up:\n" << ReadText(log);
      return {};
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::vector<pid_t> pids;
  const std::string text = ReadText(log);
  const std::regex re("started [a-z0-9 ]+ \\(pid ([0-9]+)\\)");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator();
       ++it) {
    pids.push_back(std::stoi((*it)[1]));
  }
  return pids;
}

TEST_F(ClusterCliTest, ForegroundStopsChildrenOnSigterm) {
  for (int sig : {SIGTERM, SIGKILL}) {
    SCOPED_TRACE(sig == SIGTERM ? "SIGTERM" : "SIGKILL");
    const std::string log = dir_ + "/up." + std::to_string(sig) + ".log";
    ChildProcess up({BinPath("pipeinfer"), "up", "--model", FixturePath("models/tiny-f32.gguf"),
                     "--stages", "2", "--no-router", "--base-port",
                     std::to_string(FreePortRange(3)), "--log-dir", dir_ + "/logs"},
                    log);
    const std::vector<pid_t> pids = StartForeground(up, log);
    ASSERT_EQ(pids.size(), 3u) << ReadText(log);
    for (pid_t p : pids) EXPECT_TRUE(cluster::ProcessAlive(p, 0));
    kill(up.pid(), sig);
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (up.Running() && std::chrono::steady_clock::now() < end) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    const int status = up.Stop();
    if (sig == SIGTERM) {
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << ReadText(log);
      EXPECT_NE(ReadText(log).find("stopped"), std::string::npos) << ReadText(log);
    }
    // With SIGTERM the supervisor stops them; with SIGKILL their parent-death signal does.
    EXPECT_TRUE(AllGone(pids, std::chrono::seconds(15))) << ReadText(log);
  }
}

// `up --detach` killed before the cluster is up: the state file already names every process it
// had started (it is written as each one starts), so `down` stops them.
TEST_F(ClusterCliTest, DetachedUpKilledEarlyLeavesAStateFileForDown) {
  const std::string log = dir_ + "/up.killed.log";
  ChildProcess up({BinPath("pipeinfer"), "up", "--model", FixturePath("models/tiny-f32.gguf"),
                   "--stages", "2", "--no-router", "--base-port", std::to_string(FreePortRange(3)),
                   "--detach", "--state", state_, "--log-dir", dir_ + "/logs"},
                  log);
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (ReadText(log).find("started ") == std::string::npos) {
    ASSERT_TRUE(up.Running() && std::chrono::steady_clock::now() < end) << ReadText(log);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  kill(up.pid(), SIGKILL);
  up.Stop();
  auto state = cluster::ReadState(state_);
  ASSERT_TRUE(state.ok()) << state.status() << "\n" << ReadText(log);
  ASSERT_GE(state->processes.size(), 1u) << ReadText(log);
  std::vector<pid_t> pids;
  for (const auto& p : state->processes) pids.push_back(p.pid);
  EXPECT_TRUE(cluster::ProcessAlive(pids[0], 0));  // detached: it outlives the killed `up`
  const CommandResult down =
      RunCmd({BinPath("pipeinfer"), "down", "--state", state_}, std::chrono::seconds(60));
  EXPECT_EQ(down.exit_code, 0) << down.output;
  EXPECT_TRUE(AllGone(pids, std::chrono::seconds(15))) << down.output;
}

TEST_F(ClusterCliTest, BadConfigurationsFailReadably) {
  const std::string model = FixturePath("models/tiny-f32.gguf");
  {
    const std::string cfg = dir_ + "/sync.yaml";
    std::ofstream(cfg) << "model: " << model << "\nstages: 2\nmode: sync\n";
    const CommandResult r = RunCmd({BinPath("pipeinfer"), "up", "--config", cfg, "--no-router"},
                                   std::chrono::seconds(30));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("error: mode 'sync' needs a draft model"), std::string::npos)
        << r.output;
  }
  {
    // The flag overrides the config key, so the mode error comes from the flag here.
    const CommandResult r =
        RunCmd({BinPath("pipeinfer"), "up", "--model", model, "--mode", "pipeinfer", "--no-router"},
               std::chrono::seconds(30));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("mode 'pipeinfer' needs a draft model"), std::string::npos) << r.output;
  }
  {
    const std::string cfg = dir_ + "/spec.yaml";
    std::ofstream(cfg) << "model: " << model << "\ndraft_model: " << dir_
                       << "/none.gguf\nmode: sync\nspec:\n  draft_max: 4\n";
    const CommandResult r = RunCmd({BinPath("pipeinfer"), "up", "--config", cfg, "--no-router"},
                                   std::chrono::seconds(30));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("draft model file not found"), std::string::npos) << r.output;
  }
  {
    const std::string cfg = dir_ + "/badspec.yaml";
    std::ofstream(cfg) << "model: " << model << "\nspec:\n  p_acept: 0.2\n";
    const CommandResult r = RunCmd({BinPath("pipeinfer"), "up", "--config", cfg, "--no-router"},
                                   std::chrono::seconds(30));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("unknown spec key 'p_acept'"), std::string::npos) << r.output;
  }
  {
    const CommandResult r = RunCmd({BinPath("pipeinfer"), "up", "--model", dir_ + "/missing.gguf",
                                    "--stages", "2", "--no-router"},
                                   std::chrono::seconds(30));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("error: model file not found: " + dir_ + "/missing.gguf"),
              std::string::npos)
        << r.output;
  }
  {
    const CommandResult r = RunCmd({BinPath("pipeinfer"), "up", "--config", dir_ + "/none.yaml"},
                                   std::chrono::seconds(30));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("error: cannot read config file " + dir_ + "/none.yaml"),
              std::string::npos)
        << r.output;
  }
  {
    const std::string cfg = dir_ + "/badyaml.yaml";
    std::ofstream(cfg) << "model: [unclosed\n";
    const CommandResult r = RunCmd({BinPath("pipeinfer"), "up", "--config", cfg, "--no-router"},
                                   std::chrono::seconds(30));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("error: " + cfg), std::string::npos) << r.output;
  }
  {
    const std::string cfg = dir_ + "/nomodel.yaml";
    std::ofstream(cfg) << "stages: 2\nmode: plain\n";
    const CommandResult r = RunCmd({BinPath("pipeinfer"), "up", "--config", cfg, "--no-router"},
                                   std::chrono::seconds(30));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("error: no model given"), std::string::npos) << r.output;
  }
  {
    const std::string cfg = dir_ + "/typo.yaml";
    std::ofstream(cfg) << "model: " << model << "\nstagez: 2\n";
    const CommandResult r = RunCmd({BinPath("pipeinfer"), "up", "--config", cfg, "--no-router"},
                                   std::chrono::seconds(30));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("unknown key 'stagez'"), std::string::npos) << r.output;
  }
  {
    // A process that cannot start is named together with its log file.
    const std::string cfg = dir_ + "/toomany.yaml";
    std::ofstream(cfg) << "model: " << model << "\nstages: 40\nbase_port: " << FreePortRange(42)
                       << "\n";
    const CommandResult r = RunCmd({BinPath("pipeinfer"), "up", "--config", cfg, "--no-router",
                                    "--log-dir", dir_ + "/logs", "--health-timeout", "20"},
                                   std::chrono::seconds(60));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("error: stage 39 (pid "), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(dir_ + "/logs/stage-39.log"), std::string::npos) << r.output;
  }
}

// `--stage-devices` overrides the config's `devices:`, is checked before anything starts, and
// reaches each stage as --device / --devices (here a CPU stage split in two: "cpu,cpu").
TEST_F(ClusterCliTest, StageDevicesFlagOverridesTheConfig) {
  const std::string model = FixturePath("models/tiny-f32.gguf");
  const std::string cfg = dir_ + "/devices.yaml";
  std::ofstream(cfg) << "model: " << model << "\nstages: 2\ndevices: [cpu, cpu, cpu]\n";
  {
    const CommandResult r = RunCmd({BinPath("pipeinfer"), "up", "--config", cfg, "--no-router"},
                                   std::chrono::seconds(30));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("error: devices has 3 entries but stages is 2"), std::string::npos)
        << r.output;
  }
  {
    const CommandResult r = RunCmd({BinPath("pipeinfer"), "up", "--config", cfg, "--no-router",
                                    "--stage-devices", "cpu;gpu:1"},
                                   std::chrono::seconds(30));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("error: devices 'gpu:1' of stage 1: unknown device 'gpu:1'"),
              std::string::npos)
        << r.output;
  }
  const CommandResult up =
      UpDetached({"--config", cfg, "--no-router", "--stage-devices", "cpu; cpu,cpu"}, 7);
  ASSERT_EQ(up.exit_code, 0) << up.output;
  EXPECT_NE(up.output.find("(cpu,cpu)"), std::string::npos) << up.output;
  auto state = cluster::ReadState(state_);
  ASSERT_TRUE(state.ok()) << state.status();
  std::map<std::string, std::string> cmdlines;  // process name -> its command line, spaced
  for (const cluster::ProcessInfo& p : state->processes) {
    std::string line = ReadText("/proc/" + std::to_string(p.pid) + "/cmdline");
    std::replace(line.begin(), line.end(), '\0', ' ');
    cmdlines[p.name] = line;
  }
  EXPECT_NE(cmdlines["stage 0"].find(" --device cpu "), std::string::npos) << cmdlines["stage 0"];
  EXPECT_EQ(cmdlines["stage 0"].find("--devices"), std::string::npos) << cmdlines["stage 0"];
  EXPECT_NE(cmdlines["stage 1"].find(" --devices cpu,cpu "), std::string::npos)
      << cmdlines["stage 1"];
  EXPECT_NE(ReadText(dir_ + "/logs/stage-1.log").find("stage 1 computes on 2 x"), std::string::npos)
      << ReadText(dir_ + "/logs/stage-1.log");
}

TEST_F(ClusterCliTest, RouterChatAndComplete) {
  if (!fs::exists(BinPath("pipeinfer-router"))) {
    GTEST_SKIP() << BinPath("pipeinfer-router") << " is not built; the router path is not tested";
  }
  const int http_port = FreePortRange(1);
  const CommandResult up = UpDetached({"--http-port", std::to_string(http_port)}, 4);
  ASSERT_EQ(up.exit_code, 0) << up.output;
  auto state = cluster::ReadState(state_);
  ASSERT_TRUE(state.ok()) << state.status();
  ASSERT_EQ(state->processes.size(), 4u);
  EXPECT_EQ(state->endpoints.router_http, "127.0.0.1:" + std::to_string(http_port));
  EXPECT_TRUE(Serving(state->endpoints.router_grpc));

  const CommandResult chat = RunCmd({BinPath("pipeinfer"), "chat", "Hello there.", "--state",
                                     state_, "--max-tokens", "16", "--temperature", "0"},
                                    std::chrono::seconds(60));
  ASSERT_EQ(chat.exit_code, 0) << chat.output;
  EXPECT_NE(chat.output.find("tokens/s, TTFT"), std::string::npos) << chat.output;
  const std::string text = chat.output.substr(0, chat.output.rfind("\n["));
  EXPECT_GT(text.size(), 1u) << chat.output;  // more than the final newline

  const std::string meta = ReadText(FixturePath("refs/tiny-f32.p1.meta.txt"));
  const std::string key = "prompt_bytes ";
  const size_t at = meta.find(key);
  ASSERT_NE(at, std::string::npos);
  const std::string prompt = meta.substr(at + key.size(), meta.find('\n', at) - at - key.size());
  ASSERT_EQ(prompt, "The quick brown fox jumps over the lazy dog.");
  const CommandResult complete =
      RunCmd({BinPath("pipeinfer"), "complete", "--router", state->endpoints.router_grpc,
              "--prompt", prompt, "--max-tokens", "32", "--temperature", "0", "--print-ids"},
             std::chrono::seconds(60));
  ASSERT_EQ(complete.exit_code, 0) << complete.output;
  const auto want = pipeinfer::testing::ReadIds(FixturePath("refs/tiny-f32.p1.greedy_ids.txt"));
  ASSERT_EQ(want.size(), 32u);
  EXPECT_EQ(pipeinfer::testing::ParseIds(complete.output), want) << complete.output;

  std::vector<pid_t> pids;
  for (const auto& p : state->processes) pids.push_back(p.pid);
  const CommandResult down =
      RunCmd({BinPath("pipeinfer"), "down", "--state", state_}, std::chrono::seconds(60));
  EXPECT_EQ(down.exit_code, 0) << down.output;
  EXPECT_TRUE(AllGone(pids, std::chrono::seconds(10)));
}

// For 1, 2 and 3 stages (the demo target has 6 layers), the cluster's greedy tokens equal the
// single-process reference path `pipeinfer generate`.
TEST_F(ClusterCliTest, GreedyTokensEqualGenerateForOneTwoThreeStages) {
  if (!fs::exists(BinPath("pipeinfer-router"))) {
    GTEST_SKIP() << BinPath("pipeinfer-router") << " is not built";
  }
  const std::string model = std::string(PIPEINFER_MODELS_DIR) + "/demo-target-q8_0.gguf";
  const std::string prompt = "It is a truth universally acknowledged, that";
  const CommandResult ref = RunCmd({BinPath("pipeinfer"), "generate", "-m", model, "-p", prompt,
                                    "-n", "24", "--ignore-eos", "--print-ids"},
                                   std::chrono::seconds(60));
  ASSERT_EQ(ref.exit_code, 0) << ref.output;
  // stdout (the ids) and stderr (a timing summary) share the capture: keep the ids line.
  std::vector<int32_t> want;
  std::istringstream lines(ref.output);
  for (std::string line; std::getline(lines, line);) {
    if (line.find("prompt") == std::string::npos && !line.empty()) {
      want = pipeinfer::testing::ParseIds(line);
    }
  }
  ASSERT_EQ(want.size(), 24u) << ref.output;
  for (int stages : {1, 2, 3}) {
    SCOPED_TRACE(stages);
    const int http_port = FreePortRange(1);
    const CommandResult up =
        UpModel(model, stages, {"--http-port", std::to_string(http_port)}, stages + 2);
    ASSERT_EQ(up.exit_code, 0) << up.output;
    auto state = cluster::ReadState(state_);
    ASSERT_TRUE(state.ok()) << state.status();
    const CommandResult got = RunCmd(
        {BinPath("pipeinfer"), "complete", "--router", state->endpoints.router_grpc, "--prompt",
         prompt, "--max-tokens", "24", "--temperature", "0", "--ignore-eos", "--print-ids"},
        std::chrono::seconds(60));
    ASSERT_EQ(got.exit_code, 0) << got.output;
    EXPECT_EQ(pipeinfer::testing::ParseIds(got.output), want) << got.output;
    const CommandResult down =
        RunCmd({BinPath("pipeinfer"), "down", "--state", state_}, std::chrono::seconds(60));
    ASSERT_EQ(down.exit_code, 0) << down.output;
  }
}

}  // namespace
}  // namespace pipeinfer
