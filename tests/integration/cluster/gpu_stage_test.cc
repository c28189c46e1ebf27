// A GPU stage computes what the CPU computes: a 2-stage plain cluster on the tiny f16 model with
// stage 1 on cuda:0 (`pipeinfer up --stage-devices "cpu;cuda:0"`) gives the same greedy token ids
// as the same cluster on the CPU alone, for a few prompts (the CPU cluster is the reference;
// cluster_cli_test checks that one against `pipeinfer generate`). Skipped where no CUDA device
// exists (/dev/nvidia0), and where the GPU stage cannot start for want of one ("no CUDA device":
// a build without the CUDA backend, or no usable device).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "cluster/supervisor.h"
#include "testing/cluster_harness.h"
#include "testing/detached_cluster_test.h"
#include "testing/fixtures.h"

namespace pipeinfer {
namespace {

namespace fs = std::filesystem;
using pipeinfer::testing::BinPath;
using pipeinfer::testing::CommandResult;
using pipeinfer::testing::FixturePath;
using pipeinfer::testing::FreePortRange;
using pipeinfer::testing::ReadText;
using pipeinfer::testing::RunCmd;

constexpr char kNoCuda[] = "no CUDA device";

// The NUL-separated command line of a running process, as a vector.
std::vector<std::string> CommandLine(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
  const std::string raw((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<std::string> argv;
  std::string arg;
  for (char ch : raw) {
    if (ch == '\0') {
      argv.push_back(arg);
      arg.clear();
    } else {
      arg += ch;
    }
  }
  return argv;
}

class GpuStageTest : public testing::DetachedClusterTest {
 protected:
  GpuStageTest() : DetachedClusterTest("gpu_stage_test") {}

  // `pipeinfer up --detach` of the 2-stage plain cluster with `extra` flags on free ports (7: two
  // stages, the draft service, router gRPC and three /metrics); retried on a port race, but not
  // when a stage found no CUDA device (that fails the same way every time).
  CommandResult Up(const std::vector<std::string>& extra) {
    std::vector<std::string> args = {"--model",     FixturePath("models/tiny-f16.gguf"),
                                     "--stages",    "2",
                                     "--mode",      "plain",
                                     "--kv-tokens", "1024"};
    args.insert(args.end(), extra.begin(), extra.end());
    return UpOnFreePorts(args, 7, [this](const CommandResult& r) { return NoCuda(r); });
  }

  // Whether `up` failed because a stage found no CUDA device (its error, or stage 1's log).
  bool NoCuda(const CommandResult& r) const {
    return r.output.find(kNoCuda) != std::string::npos ||
           ReadText(dir_ + "/logs/stage-1.log").find(kNoCuda) != std::string::npos;
  }

  // The greedy ids of each prompt from the running cluster's router, then `pipeinfer down`.
  std::vector<std::vector<int32_t>> CompleteAndDown(const std::vector<std::string>& prompts) {
    std::vector<std::vector<int32_t>> ids;
    auto state = cluster::ReadState(state_);
    EXPECT_TRUE(state.ok()) << state.status();
    if (!state.ok()) return ids;
    for (const std::string& prompt : prompts) {
      const CommandResult got = RunCmd(
          {BinPath("pipeinfer"), "complete", "--router", state->endpoints.router_grpc, "--prompt",
           prompt, "--max-tokens", "16", "--temperature", "0", "--ignore-eos", "--print-ids"},
          std::chrono::seconds(60));
      EXPECT_EQ(got.exit_code, 0) << got.output;
      ids.push_back(pipeinfer::testing::ParseIds(got.output));
      EXPECT_EQ(ids.back().size(), 16u) << prompt << ":\n" << got.output;
    }
    const CommandResult down =
        RunCmd({BinPath("pipeinfer"), "down", "--state", state_}, std::chrono::seconds(60));
    EXPECT_EQ(down.exit_code, 0) << down.output;
    return ids;
  }

  // Stage `i`'s command line, from the state file's pid.
  std::vector<std::string> StageCommandLine(int i) {
    auto state = cluster::ReadState(state_);
    if (!state.ok()) return {};
    for (const cluster::ProcessInfo& p : state->processes) {
      if (p.name == "stage " + std::to_string(i)) return CommandLine(p.pid);
    }
    return {};
  }
};

TEST_F(GpuStageTest, GreedyTokensEqualTheCpuCluster) {
  if (!fs::exists("/dev/nvidia0")) {
    GTEST_SKIP() << "no CUDA device (/dev/nvidia0 absent): the GPU stage is not tested";
  }
  const std::vector<std::string> prompts = {
      "Once upon a time", "The quick brown fox jumps over",
      "It is a truth universally acknowledged, that a single man"};

  const CommandResult gpu_up = Up({"--stage-devices", "cpu;cuda:0"});
  if (gpu_up.exit_code != 0 && NoCuda(gpu_up)) {
    GTEST_SKIP() << "the GPU stage cannot start (\"" << kNoCuda
                 << "\": a build without the CUDA backend, or no usable device):\n"
                 << gpu_up.output;
  }
  ASSERT_EQ(gpu_up.exit_code, 0) << gpu_up.output;
  // The supervisor gave stage 1 the GPU and left stage 0 on the CPU.
  const std::vector<std::string> gpu_stage = StageCommandLine(1);
  EXPECT_NE(std::find(gpu_stage.begin(), gpu_stage.end(), "cuda:0"), gpu_stage.end());
  EXPECT_NE(ReadText(dir_ + "/logs/stage-1.log").find("stage 1 computes on cuda:0"),
            std::string::npos)
      << ReadText(dir_ + "/logs/stage-1.log");
  const std::vector<std::vector<int32_t>> gpu = CompleteAndDown(prompts);
  ASSERT_FALSE(HasFailure());

  const CommandResult cpu_up = Up({});
  ASSERT_EQ(cpu_up.exit_code, 0) << cpu_up.output;
  const std::vector<std::vector<int32_t>> cpu = CompleteAndDown(prompts);
  ASSERT_FALSE(HasFailure());

  ASSERT_EQ(gpu.size(), prompts.size());
  ASSERT_EQ(cpu.size(), prompts.size());
  for (size_t p = 0; p < prompts.size(); ++p) {
    EXPECT_EQ(gpu[p], cpu[p]) << "prompt '" << prompts[p] << "': stage 1 on cuda:0 differs";
  }
}

}  // namespace
}  // namespace pipeinfer
