// `pipeinfer up --emulate-link-mbps` on real processes (docs/link-emulation.md): the bytes per
// second over the stage 0 -> stage 1 veth stay at or below the configured rate, `down` removes
// every namespace and veth, so do a foreground `up` stopped by SIGINT and `down` after `up` was
// killed, and a failing `up` cleans up; without root `up` refuses with a clear error and creates
// nothing. `--emulate-link-us` delays every hop and keeps the tokens; `--emulate-link-mbps` also
// adds each message's serialization delay (in-process pacing) and keeps the tokens.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "cluster/link_emulation.h"
#include "cluster/supervisor.h"
#include "testing/cluster_harness.h"
#include "testing/detached_cluster_test.h"
#include "testing/fixtures.h"
#include "testing/process.h"
#include "testing/time_scale.h"

namespace pipeinfer {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using pipeinfer::testing::BinPath;
using pipeinfer::testing::ChildProcess;
using pipeinfer::testing::CommandResult;
using pipeinfer::testing::FreePortRange;
using pipeinfer::testing::ReadText;
using pipeinfer::testing::RunCmd;

constexpr double kRateMbps = 10;

std::string DemoModel() { return std::string(PIPEINFER_MODELS_DIR) + "/demo-target-q8_0.gguf"; }

std::string Netns() {
  absl::StatusOr<std::string> out = cluster::RunNetTool({"ip", "netns", "list"});
  return out.ok() ? *out : "";
}

// The names in `ip netns list` ("NAME" or "NAME (id: N)" per line).
std::set<std::string> NetnsNames() {
  std::set<std::string> names;
  std::istringstream lines(Netns());
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty()) names.insert(line.substr(0, line.find(' ')));
  }
  return names;
}

std::string Links() {
  absl::StatusOr<std::string> out = cluster::RunNetTool({"ip", "-o", "link", "show"});
  return out.ok() ? *out : "";
}

// Nothing of `t` is left: no namespace, no device in the root namespace.
void ExpectRemoved(const cluster::LinkTopology& t) {
  const std::set<std::string> spaces = NetnsNames();
  const std::string links = Links();
  for (const std::string& ns : t.namespaces) EXPECT_EQ(spaces.count(ns), 0u) << ns << " is left";
  for (const std::string& dev : t.RootDevices()) {
    EXPECT_EQ(links.find(" " + dev + "@"), std::string::npos) << dev << " still exists";
  }
}

bool WaitFor(const std::function<bool()>& pred, std::chrono::seconds timeout) {
  const auto end = Clock::now() + timeout;
  while (Clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return pred();
}

class LinkEmulationTest : public testing::DetachedClusterTest {
 protected:
  LinkEmulationTest() : DetachedClusterTest("link_emulation_test") {}

  static bool Root() { return geteuid() == 0; }

  // `up` of the demo 2-stage cluster at 10 Mbit/s, plus `extra`.
  std::vector<std::string> UpArgv(const std::vector<std::string>& extra) {
    std::vector<std::string> argv = BaseArgv();
    argv.insert(argv.end(), {"--emulate-link-mbps", "10"});
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
  }

  std::string RouterGrpc() const { return "127.0.0.1:" + std::to_string(base_port_ + 3); }

  // `up --detach` of the demo 2-stage cluster, without link emulation unless `extra` asks for it.
  std::vector<std::string> ClusterArgv(const std::vector<std::string>& extra) {
    std::vector<std::string> argv = BaseArgv();
    argv.push_back("--detach");
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
  }

  // `pipeinfer up` of the demo 2-stage cluster on fresh ports, with this test's state and logs.
  std::vector<std::string> BaseArgv() {
    base_port_ = FreePortRange(8);
    http_port_ = FreePortRange(1);
    return {BinPath("pipeinfer"),
            "up",
            "--model",
            DemoModel(),
            "--stages",
            "2",
            "--kv-tokens",
            "4096",
            "--base-port",
            std::to_string(base_port_),
            "--http-port",
            std::to_string(http_port_),
            "--state",
            state_,
            "--log-dir",
            dir_ + "/logs"};
  }

  // The pipeline's counters from `pipeinfer stats` ("service.name value" lines).
  std::map<std::string, double> Stats() {
    std::map<std::string, double> out;
    const CommandResult r =
        RunCmd({BinPath("pipeinfer"), "stats", "--router", RouterGrpc()}, std::chrono::seconds(30));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::istringstream lines(r.output);
    for (std::string line; std::getline(lines, line);) {
      std::istringstream f(line);
      std::string name;
      double v = 0;
      if (f >> name >> v) out[name] = v;
    }
    return out;
  }

  int base_port_ = 0, http_port_ = 0;
};

TEST(LinkTopologyTest, JsonRoundTrip) {
  cluster::LinkTopology t;
  t.rate_mbps = 12.5;
  t.burst_bytes = 32768;
  t.prefix = "pil3";
  t.block = "198.18.12.0/22";
  t.namespaces = {"pil3-s0"};
  t.data = {{"", "pil3d0a", "198.18.12.1", "pil3-s0", "pil3d0b", "198.18.12.2", true},
            {"pil3-s0", "pil3d1a", "198.18.12.5", "", "pil3d1b", "198.18.12.6", true}};
  t.management = {{"", "pil3m0a", "198.18.14.1", "pil3-s0", "pil3m0b", "198.18.14.2", false}};
  absl::StatusOr<cluster::LinkTopology> back =
      cluster::LinkTopologyFromJson(cluster::LinkTopologyToJson(t));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->namespaces, t.namespaces);
  EXPECT_EQ(back->StageDataAddress(0), "198.18.12.2");
  EXPECT_EQ(back->LastStageResultsAddress(), "198.18.12.5");
  EXPECT_EQ(back->StageManagementAddress(0), "198.18.14.2");
  EXPECT_EQ(back->RootDevices(), (std::vector<std::string>{"pil3d0a", "pil3d1b", "pil3m0a"}));
  EXPECT_FALSE(back->management[0].limited);
  EXPECT_DOUBLE_EQ(back->rate_mbps, 12.5);
}

// Without root: a clear error, a non-zero status, and no namespace. As root the command runs as
// user nobody (setpriv).
TEST_F(LinkEmulationTest, RefusedWithoutRoot) {
  std::vector<std::string> argv = UpArgv({"--detach"});
  if (Root()) {
    if (access("/usr/bin/setpriv", X_OK) != 0) GTEST_SKIP() << "setpriv is not installed";
    argv.insert(argv.begin(),
                {"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"});
  }
  const std::string before = Netns();
  const CommandResult r = RunCmd(argv, std::chrono::seconds(30));
  if (r.exit_code == 126 || r.exit_code == 127) {
    GTEST_SKIP() << "cannot run pipeinfer as nobody here: " << r.output;
  }
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("--emulate-link-mbps needs root (network namespaces and tc)"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(Netns(), before);
  EXPECT_FALSE(fs::exists(state_));
}

TEST_F(LinkEmulationTest, RateLimitedAndRemovedByDown) {
  if (!Root()) GTEST_SKIP() << "link emulation needs root (network namespaces and tc)";
  const CommandResult up =
      RunCmd(UpArgv({"--detach", "--emulate-link-us", "500"}), std::chrono::seconds(120));
  ASSERT_EQ(up.exit_code, 0) << up.output;
  absl::StatusOr<cluster::ClusterState> state = cluster::ReadState(state_);
  ASSERT_TRUE(state.ok()) << state.status();
  const cluster::LinkTopology t = state->links;
  ASSERT_EQ(t.stages(), 2);
  for (const std::string& ns : t.namespaces) EXPECT_EQ(NetnsNames().count(ns), 1u) << ns;
  // Every process is reachable from the root namespace: the pipeline's stats come back.
  const CommandResult stats =
      RunCmd({BinPath("pipeinfer"), "stats", "--router", RouterGrpc()}, std::chrono::seconds(30));
  EXPECT_EQ(stats.exit_code, 0) << stats.output;
  EXPECT_NE(stats.output.find("stage1"), std::string::npos) << stats.output;

  // Stage 0's end of the stage 0 -> stage 1 hop.
  const cluster::VethHop& hop = t.data[1];
  ASSERT_EQ(hop.ns_a, t.namespaces[0]);
  struct Sample {
    Clock::time_point before, after;
    int64_t bytes = 0, overlimits = 0;
  };
  auto sample = [&](Sample* s) {
    s->before = Clock::now();
    absl::StatusOr<std::string> out =
        cluster::RunNetTool({"tc", "-n", hop.ns_a, "-s", "-j", "qdisc", "show", "dev", hop.dev_a});
    s->after = Clock::now();
    if (!out.ok()) return false;
    const nlohmann::json j = nlohmann::json::parse(*out, nullptr, false);
    if (!j.is_array() || j.empty()) return false;
    s->bytes = j[0].value("bytes", int64_t{0});
    s->overlimits = j[0].value("overlimits", int64_t{0});
    return j[0].value("kind", "") == "tbf";
  };

  // Traffic: 20 completions of a ~190-token prompt, 4 at a time (each prefill carries ~190
  // hidden-state rows of 1 KiB from stage 0 to stage 1).
  std::string prompt;
  for (int i = 0; i < 6; ++i) {
    prompt +=
        "It is a truth universally acknowledged, that a single man in possession of a good "
        "fortune, must be in want of a wife. ";
  }
  std::vector<Sample> samples;
  Sample s0;
  ASSERT_TRUE(sample(&s0));
  samples.push_back(s0);
  std::vector<std::unique_ptr<ChildProcess>> clients;
  int started = 0, failed = 0;
  const auto deadline = Clock::now() + std::chrono::seconds(90);
  while ((started < 20 || !clients.empty()) && Clock::now() < deadline) {
    for (auto it = clients.begin(); it != clients.end();) {
      if ((*it)->Running()) {
        ++it;
        continue;
      }
      const int st = (*it)->Stop();
      if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) ++failed;
      it = clients.erase(it);
    }
    while (started < 20 && clients.size() < 4) {
      clients.push_back(std::make_unique<ChildProcess>(
          std::vector<std::string>{BinPath("pipeinfer"), "complete", "--router", RouterGrpc(),
                                   "--prompt", prompt, "--max-tokens", "16"},
          dir_ + "/client" + std::to_string(started) + ".log"));
      ++started;
    }
    Sample s;
    if (sample(&s)) samples.push_back(s);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(clients.empty()) << "the completions did not finish in time";
  EXPECT_EQ(failed, 0) << ReadText(dir_ + "/client0.log");
  Sample last;
  ASSERT_TRUE(sample(&last));
  samples.push_back(last);

  const double rate_bytes_per_s = kRateMbps * 1e6 / 8;
  const int64_t total = last.bytes - s0.bytes;
  EXPECT_GT(total, 3'000'000) << "too little traffic crossed the stage 0 -> stage 1 veth";
  EXPECT_GT(last.overlimits, 0) << "the token bucket never held a packet back";
  // Any window: bytes <= rate * (longest possible duration of the window) + the bucket.
  double worst = 0, busiest = 0;
  for (size_t i = 0; i < samples.size(); ++i) {
    for (size_t j = i + 1; j < samples.size(); ++j) {
      const double longest =
          std::chrono::duration<double>(samples[j].after - samples[i].before).count();
      const double bytes = static_cast<double>(samples[j].bytes - samples[i].bytes);
      // One full-size packet of slack for the bucket's accounting granularity.
      const double allowed = rate_bytes_per_s * longest + static_cast<double>(t.burst_bytes) + 1514;
      worst = std::max(worst, bytes / allowed);
      const double shortest =
          std::chrono::duration<double>(samples[j].before - samples[i].after).count();
      if (shortest >= 1.0) busiest = std::max(busiest, bytes / shortest);
    }
  }
  const double span = std::chrono::duration<double>(last.after - s0.before).count();
  std::printf(
      "link test: %lld bytes over stage0->stage1 in %.2f s (%.2f Mbit/s average), "
      "busiest >= 1 s window %.2f Mbit/s, configured %.1f Mbit/s, burst %lld B; "
      "worst window / allowance = %.3f; %zu samples\n",
      static_cast<long long>(total), span, total * 8 / span / 1e6, busiest * 8 / 1e6, kRateMbps,
      static_cast<long long>(t.burst_bytes), worst, samples.size());
  EXPECT_LE(worst, 1.0);
  EXPECT_LE(busiest, rate_bytes_per_s * 1.02);

  const CommandResult down =
      RunCmd({BinPath("pipeinfer"), "down", "--state", state_}, std::chrono::seconds(60));
  EXPECT_EQ(down.exit_code, 0) << down.output;
  EXPECT_NE(down.output.find("removed network namespace " + t.namespaces[0]), std::string::npos)
      << down.output;
  EXPECT_FALSE(fs::exists(state_));
  ExpectRemoved(t);
  for (const auto& p : state->processes) EXPECT_FALSE(cluster::ProcessAlive(p.pid, p.start_time));
}

// Latency alone (no namespaces, no root): each of the 3 hops a plain token crosses (draft -> stage
// 0 -> stage 1 -> draft) adds L, and the tokens stay the same, in pipeinfer mode too (delayed
// credits and cancels).
TEST_F(LinkEmulationTest, LatencyDelaysEveryHopAndKeepsTokens) {
  const std::string draft = std::string(PIPEINFER_MODELS_DIR) + "/demo-draft-q8_0.gguf";
  struct Run {
    std::vector<std::string> up;
    double seconds = 0;
    std::vector<int32_t> ids;
  };
  std::vector<Run> runs(3);
  runs[0].up = {"--mode", "plain"};
  runs[1].up = {"--mode", "plain", "--emulate-link-us", "20000"};
  runs[2].up = {"--mode", "pipeinfer", "--draft-model", draft, "--emulate-link-us", "2000"};
  for (Run& r : runs) {
    std::vector<std::string> argv = ClusterArgv(r.up);
    const CommandResult up = RunCmd(argv, std::chrono::seconds(120));
    ASSERT_EQ(up.exit_code, 0) << up.output;
    const auto start = Clock::now();
    const CommandResult c =
        RunCmd({BinPath("pipeinfer"), "complete", "--router", RouterGrpc(), "--prompt",
                "It is a truth", "--max-tokens", "16", "--print-ids"},
               std::chrono::seconds(60));
    r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    EXPECT_EQ(c.exit_code, 0) << c.output;
    r.ids = pipeinfer::testing::LastIdsLine(c.output);
    const CommandResult down =
        RunCmd({BinPath("pipeinfer"), "down", "--state", state_}, std::chrono::seconds(60));
    ASSERT_EQ(down.exit_code, 0) << down.output;
  }
  ASSERT_EQ(runs[0].ids.size(), 16u);
  EXPECT_EQ(runs[1].ids, runs[0].ids);
  EXPECT_EQ(runs[2].ids, runs[0].ids);
  std::printf("latency test: 16 plain tokens in %.3f s at L = 0, %.3f s at L = 20 ms\n",
              runs[0].seconds, runs[1].seconds);
  EXPECT_GE(runs[1].seconds, 16 * 3 * 0.020);
}

// Rate pacing (docs/link-emulation.md): at 1 Mbit/s every plain token waits for the serialization
// of its three messages (the run to stage 0, the hidden state to stage 1, the result back to the
// draft service). Each completion is short (~18 KB on the busiest hop) and starts after an idle
// gap, so tbf alone would let all of it through its 32 KiB burst at once and add nothing. The
// slowdown against no emulation must be about the serialization time computed from the bytes the
// stages counted, and the tokens must not change.
TEST_F(LinkEmulationTest, RatePacesEveryMessageAndKeepsTokens) {
  if (!Root()) GTEST_SKIP() << "link emulation needs root (network namespaces and tc)";
  // The pacing shows as ~0.14 s added to a completion; in a sanitizer build the completion's
  // own time (CLI start included) varies by more than that.
  if (pipeinfer::testing::TimeScale() > 1)
    GTEST_SKIP() << "a timing comparison: release builds only";
  constexpr double kSlowMbps = 1;
  constexpr int kTokens = 8;
  constexpr int kCompletions = 3;
  constexpr double kFramingBytes = 14;  // kLinkFramingBytes (common/link_pacer.h)
  struct Run {
    std::vector<std::string> up;
    double seconds = 0;
    std::vector<int32_t> ids;
    std::map<std::string, double> stats;
  };
  std::vector<Run> runs(2);
  runs[0].up = {"--mode", "plain"};
  runs[1].up = {"--mode", "plain", "--emulate-link-mbps", "1"};
  for (Run& r : runs) {
    const CommandResult up = RunCmd(ClusterArgv(r.up), std::chrono::seconds(120));
    ASSERT_EQ(up.exit_code, 0) << up.output;
    // Best of kCompletions, so that a one-off stall of the host does not decide the comparison.
    r.seconds = 1e9;
    for (int i = 0; i < kCompletions; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(500));  // tbf's bucket refills
      const auto start = Clock::now();
      const CommandResult c =
          RunCmd({BinPath("pipeinfer"), "complete", "--router", RouterGrpc(), "--prompt",
                  "It is a truth", "--max-tokens", std::to_string(kTokens), "--print-ids"},
                 std::chrono::seconds(60));
      r.seconds = std::min(r.seconds, std::chrono::duration<double>(Clock::now() - start).count());
      EXPECT_EQ(c.exit_code, 0) << c.output;
      if (i == 0) r.ids = pipeinfer::testing::LastIdsLine(c.output);
      EXPECT_EQ(pipeinfer::testing::LastIdsLine(c.output), r.ids);
    }
    r.stats = Stats();
    const CommandResult down =
        RunCmd({BinPath("pipeinfer"), "down", "--state", state_}, std::chrono::seconds(60));
    ASSERT_EQ(down.exit_code, 0) << down.output;
  }
  ASSERT_EQ(runs[0].ids.size(), static_cast<size_t>(kTokens));
  EXPECT_EQ(runs[1].ids, runs[0].ids);

  // What one completion put on the three hops of the paced cluster.
  std::map<std::string, double>& st = runs[1].stats;
  const double messages = st["draft.runs_launched_total"] / kCompletions;
  const double bytes = (st["stage0.received_bytes_total"] + st["stage0.sent_bytes_total"] +
                        st["stage1.sent_bytes_total"]) /
                       kCompletions;
  ASSERT_GE(messages, kTokens);
  ASSERT_GT(bytes, 0);
  const double expected = (bytes + 3 * messages * kFramingBytes) * 8 / (kSlowMbps * 1e6);
  const double added = runs[1].seconds - runs[0].seconds;
  std::printf(
      "rate test: %d plain tokens in %.3f s without emulation, %.3f s at %.0f Mbit/s (+%.3f s); "
      "%.0f bytes in %.0f runs per completion -> %.3f s of serialization expected\n",
      kTokens, runs[0].seconds, runs[1].seconds, kSlowMbps, added, bytes, messages, expected);
  EXPECT_GE(added, 0.6 * expected) << "the messages were not paced at the rate";
  EXPECT_LE(added, 2 * expected + 0.2) << "the pacing is much slower than the rate";
}

// An `up` that fails after the stages started (the draft model is not a GGUF file) stops them and
// removes the namespaces and the state file.
TEST_F(LinkEmulationTest, FailedUpRemovesLinks) {
  if (!Root()) GTEST_SKIP() << "link emulation needs root (network namespaces and tc)";
  const std::set<std::string> before = NetnsNames();
  const std::string not_gguf = dir_ + "/not-a-model.gguf";
  {
    std::ofstream f(not_gguf);
    f << "not a model\n";
  }
  const CommandResult up = RunCmd(UpArgv({"--detach", "--mode", "sync", "--draft-model", not_gguf}),
                                  std::chrono::seconds(120));
  EXPECT_NE(up.exit_code, 0) << up.output;
  EXPECT_NE(up.output.find("started stage 0"), std::string::npos) << up.output;
  EXPECT_NE(up.output.find("removed link emulation"), std::string::npos) << up.output;
  EXPECT_EQ(NetnsNames(), before);
  EXPECT_FALSE(fs::exists(state_));
}

// A foreground `up` removes its namespaces when interrupted; a killed `up` leaves them in the
// state file, and `down` removes them.
TEST_F(LinkEmulationTest, ForegroundInterruptAndCrash) {
  if (!Root()) GTEST_SKIP() << "link emulation needs root (network namespaces and tc)";
  for (const int sig : {SIGINT, SIGKILL}) {
    SCOPED_TRACE(sig == SIGINT ? "SIGINT" : "SIGKILL");
    const std::string log = dir_ + "/up-" + std::to_string(sig) + ".log";
    ChildProcess up(UpArgv({"--no-router"}), log);
    ASSERT_TRUE(WaitFor(
        [&] { return ReadText(log).find("running in the foreground") != std::string::npos; },
        std::chrono::seconds(90)))
        << ReadText(log);
    absl::StatusOr<cluster::ClusterState> state = cluster::ReadState(state_);
    ASSERT_TRUE(state.ok()) << state.status();
    const cluster::LinkTopology t = state->links;
    ASSERT_EQ(t.stages(), 2);
    EXPECT_EQ(NetnsNames().count(t.namespaces[1]), 1u);
    kill(up.pid(), sig);
    ASSERT_TRUE(WaitFor([&] { return !up.Running(); }, std::chrono::seconds(30)));
    if (sig == SIGKILL) {
      ASSERT_TRUE(fs::exists(state_));
      const CommandResult down =
          RunCmd({BinPath("pipeinfer"), "down", "--state", state_}, std::chrono::seconds(60));
      EXPECT_EQ(down.exit_code, 0) << down.output;
    }
    EXPECT_FALSE(fs::exists(state_)) << ReadText(log);
    ExpectRemoved(t);
  }
}

}  // namespace
}  // namespace pipeinfer
