// Speculation modes on real processes (stages, draft service with a draft model, router) on
// loopback:
//  * greedy output is token-for-token identical to the single-process reference path
//    (`pipeinfer generate`) in plain, sync and pipeinfer mode, with and without the ablations, for
//    1, 2 and 3 stages, with the demo pair (a weak draft, ~60 % agreement, drafting aggressively so
//    that many runs are invalidated) and with a quantized copy of the target as the draft (high
//    agreement);
//  * cancellation is real: the stages report runs skipped (and the controller tombstoned
//    outcomes) while the output stays identical;
//  * a draft with another vocabulary is refused with a readable message.
#include <filesystem>
#include <regex>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "testing/cluster_harness.h"
#include "testing/fixtures.h"

namespace pipeinfer {
namespace {

namespace fs = std::filesystem;
using testing::BinPath;
using testing::CommandResult;
using testing::FixturePath;
using testing::LastIdsLine;
using testing::LocalCluster;
using testing::RunCmd;

const std::string kModels = PIPEINFER_MODELS_DIR;

std::string TestDir() {
  return ::testing::TempDir() + "/spec_modes_test." + std::to_string(getpid()) + "." +
         ::testing::UnitTest::GetInstance()->current_test_info()->name();
}

std::vector<int32_t> Reference(const std::string& model, const std::string& prompt, int n) {
  const CommandResult r = RunCmd({BinPath("pipeinfer"), "generate", "-m", model, "-p", prompt, "-n",
                                  std::to_string(n), "--ignore-eos", "--print-ids"},
                                 std::chrono::seconds(120));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return LastIdsLine(r.output);
}

// Sum of the counters whose name contains `needle` in `pipeinfer stats` output.
double SumCounter(const std::string& stats, const std::string& needle) {
  double sum = 0;
  std::istringstream lines(stats);
  for (std::string line; std::getline(lines, line);) {
    const size_t sp = line.rfind(' ');
    if (sp == std::string::npos || line.substr(0, sp).find(needle) == std::string::npos) continue;
    sum += std::stod(line.substr(sp + 1));
  }
  return sum;
}

struct ModeRun {
  std::string name;
  std::vector<std::string> flags;
};

const std::vector<ModeRun>& Modes() {
  static const std::vector<ModeRun> kModes = {
      {"plain", {"--mode", "plain"}},
      {"sync", {"--mode", "sync"}},
      {"pipeinfer", {"--mode", "pipeinfer"}},
      {"pipeinfer --no-cancel", {"--mode", "pipeinfer", "--no-cancel"}},
      {"pipeinfer --no-continuous", {"--mode", "pipeinfer", "--no-continuous"}},
      // The paper's algorithm, chains and sibling-leaf trees (the rows above run the dynamic tree).
      {"sync --paper-tree", {"--mode", "sync", "--paper-tree"}},
      {"pipeinfer --paper-tree", {"--mode", "pipeinfer", "--paper-tree"}},
      {"sync --paper-tree trees",
       {"--mode", "sync", "--paper-tree", "--max-branches", "3", "--p-split", "0.05"}},
      {"pipeinfer --paper-tree trees",
       {"--mode", "pipeinfer", "--paper-tree", "--max-branches", "3", "--p-split", "0.05"}},
  };
  return kModes;
}

// Runs every mode for `prompt` against the cluster; returns the tombstoned outcomes counted by the
// controller (from --show-counters). Every run must give `want`. A speculative mode must also
// speculate; verified work has priority, so on a loaded machine (sanitizers, parallel tests) a
// request can legitimately finish before any draft does: such a mode gets up to 3 requests to
// show a speculative run (each one still checked token for token).
uint64_t ExpectModesIdentical(const LocalCluster& c, const std::string& prompt, int n,
                              const std::vector<int32_t>& want,
                              const std::vector<std::string>& knobs) {
  constexpr int kAttempts = 3;
  uint64_t tombstoned = 0;
  for (const ModeRun& m : Modes()) {
    SCOPED_TRACE(m.name);
    std::vector<std::string> argv = {
        BinPath("pipeinfer"), "complete", "--router",     c.RouterGrpcAddress(),
        "--prompt",           prompt,     "--max-tokens", std::to_string(n),
        "--temperature",      "0",        "--ignore-eos", "--print-ids",
        "--show-counters"};
    argv.insert(argv.end(), m.flags.begin(), m.flags.end());
    argv.insert(argv.end(), knobs.begin(), knobs.end());
    std::string last_output;
    bool speculated = false;
    for (int attempt = 0; attempt < kAttempts && !speculated; ++attempt) {
      const CommandResult r = RunCmd(argv, std::chrono::seconds(120));
      EXPECT_EQ(r.exit_code, 0) << r.output;
      EXPECT_EQ(LastIdsLine(r.output), want) << r.output;
      std::smatch sm;
      if (std::regex_search(r.output, sm, std::regex("tombstoned ([0-9]+)"))) {
        tombstoned += std::stoull(sm[1]);
      }
      speculated =
          m.name == "plain" || std::regex_search(r.output, std::regex("speculative [1-9]"));
      last_output = r.output;
    }
    EXPECT_TRUE(speculated) << "no speculative run in " << kAttempts << " requests; last:\n"
                            << last_output;
  }
  return tombstoned;
}

TEST(SpecModes, DemoPairGreedyIdenticalForOneTwoThreeStagesAndCancellationIsReal) {
  const std::string target = kModels + "/demo-target-q8_0.gguf";
  const std::string draft = kModels + "/demo-draft-q8_0.gguf";
  const std::string prompt = "It is a truth universally acknowledged, that";
  constexpr int kTokens = 48;
  const std::vector<int32_t> want = Reference(target, prompt, kTokens);
  ASSERT_EQ(want.size(), static_cast<size_t>(kTokens));
  // A low cutoff and long micro-batches: the weak draft is wrong often, so many runs are
  // invalidated while later ones are still queued or computing.
  const std::vector<std::string> knobs = {"--p-accept", "0.02", "--draft-max", "6"};
  double skipped = 0, stopped = 0;
  uint64_t tombstoned = 0;
  for (int stages : {1, 2, 3}) {
    SCOPED_TRACE(stages);
    LocalCluster c(TestDir() + "." + std::to_string(stages));
    const CommandResult up = c.Up(stages, {"--model", target, "--draft-model", draft, "--mode",
                                           "pipeinfer", "--kv-tokens", "4096"});
    ASSERT_EQ(up.exit_code, 0) << up.output;
    tombstoned += ExpectModesIdentical(c, prompt, kTokens, want, knobs);
    for (int i = 0; i < stages; ++i) {
      const CommandResult st = RunCmd({BinPath("pipeinfer"), "stats", "--stage", c.StageAddress(i)},
                                      std::chrono::seconds(30));
      ASSERT_EQ(st.exit_code, 0) << st.output;
      skipped += SumCounter(st.output, "runs_skipped");
      stopped += SumCounter(st.output, "runs_stopped");
    }
  }
  // Cancelled runs were skipped by stages (as tombstones) at dequeue, or stopped between layers
  // when the cancel landed during their compute (10-23 of each over 5 runs of this test here).
  EXPECT_GT(skipped, 0) << "stopped mid-run: " << stopped;
  EXPECT_GT(stopped, 0) << "skipped: " << skipped;
  EXPECT_GT(tombstoned, 0u);
  std::printf("stages skipped %g runs, stopped %g mid-run; controller saw %llu tombstones\n",
              skipped, stopped, static_cast<unsigned long long>(tombstoned));
}

TEST(SpecModes, QuantizedCopyAsDraftGreedyIdentical) {
  const std::string target = FixturePath("models/tiny-f32.gguf");
  const std::string draft = FixturePath("models/tiny-q4_0.gguf");
  const std::string prompt = "Once upon a time";
  constexpr int kTokens = 32;
  const std::vector<int32_t> want = Reference(target, prompt, kTokens);
  ASSERT_EQ(want.size(), static_cast<size_t>(kTokens));
  LocalCluster c(TestDir());
  const CommandResult up =
      c.Up(2, {"--model", target, "--draft-model", draft, "--kv-tokens", "2048"});
  ASSERT_EQ(up.exit_code, 0) << up.output;
  // A draft as costly as its target: the self-tuned tree would rightly not speculate, so the run
  // budget is fixed (draft_max) to exercise every mode.
  ExpectModesIdentical(c, prompt, kTokens, want, {"--p-accept", "0.1", "--draft-max", "4"});
}

TEST(SpecModes, DraftWithAnotherVocabularyIsRefused) {
  LocalCluster c(TestDir());
  const CommandResult up = c.Up(1, {"--model", FixturePath("models/tiny-f32.gguf"), "--draft-model",
                                    kModels + "/demo-draft-q8_0.gguf", "--mode", "sync"});
  EXPECT_NE(up.exit_code, 0);
  EXPECT_NE(up.output.find("vocabular"), std::string::npos) << up.output;
}

}  // namespace
}  // namespace pipeinfer
