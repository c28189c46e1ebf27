// Eight users at once on a cluster with the defaults: `pipeinfer up` on the bundled demo pair (2
// stages, pipeinfer mode) with no --kv-tokens, so each stage sizes its KV cache itself
// (docs/architecture.md section 5: --concurrency = 8 full-context requests). Eight simultaneous
// streaming chat requests without max_tokens (each may run to the end of the 256-token context),
// greedy and sampled, must all be answered completely: 200, content, a finish chunk, [DONE], no
// error event. Afterwards the stages hold no KV and no session, no session used more KV than its
// reservation (kv_reservation_overruns_total 0), and the forward passes batched runs of
// different requests.
//
// How it can fail: a default KV size below 8 full-context reservations refuses or delays users
// (429, or the stream never starts); a controller that uses more KV than admission reserved shows
// up as an overrun (or, without spare blocks, as an error event mid-stream); a leaked session or
// reservation keeps blocks in use; a stage that never batches leaves batch_runs sum == count.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cluster/supervisor.h"
#include "integration/load/load_testing.h"
#include "kv/kv_cache.h"
#include "spec/kv_demand.h"
#include "testing/cluster_harness.h"
#include "testing/fixtures.h"

namespace pipeinfer {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace pipeinfer::testing;

constexpr int kUsers = 8;
constexpr uint32_t kDemoContext = 256;  // the demo target's n_ctx_train (models/README.md)

const char* const kPrompts[kUsers] = {
    "Tell me about Mr. Darcy.",
    "What do you think of Mrs. Bennet's nerves?",
    "Shall we walk to Meryton this morning?",
    "Is it true that Mr. Bingley has taken Netherfield Park?",
    "Describe the ball at Netherfield, and who danced with whom.",
    "Write a letter to your sister about the weather in Bath.",
    "Tell me of the whale.",
    "Pray, sit down and tell me everything that happened at Rosings.",
};

// "service.name value" lines of `pipeinfer stats --router` -> value of "service.name".
double StatsValue(const std::string& out, const std::string& key) {
  std::smatch m;
  const std::regex re("(^|\n)" + std::regex_replace(key, std::regex("\\."), "\\.") +
                      " ([-0-9.e+]+)(\n|$)");
  if (!std::regex_search(out, m, re)) return -1;
  return std::stod(m[2]);
}

TEST(EightUsersTest, DefaultClusterStreamsEightFullContextChatsAtOnce) {
  const std::string models = PIPEINFER_MODELS_DIR;
  const std::string dir =
      ::testing::TempDir() + "/load_eight_users_test." + std::to_string(getpid());
  LocalCluster cluster(dir);
  // No --kv-tokens, --concurrency, --threads or knob: the defaults, in the demo's mode.
  const CommandResult up =
      cluster.Up(2, {"--model", models + "/demo-target-q8_0.gguf", "--draft-model",
                     models + "/demo-draft-q8_0.gguf", "--mode", "pipeinfer"});
  ASSERT_EQ(up.exit_code, 0) << up.output;
  auto state = cluster::ReadState(cluster.state());
  ASSERT_TRUE(state.ok()) << state.status();
  ASSERT_EQ(state->endpoints.stages.size(), 2u);
  const std::string http = state->endpoints.router_http;
  const int http_port = std::stoi(http.substr(http.rfind(':') + 1));
  const std::vector<std::string> stages = state->endpoints.stages;
  auto logs = [&] {
    std::string out;
    for (const char* n : {"stage-0", "stage-1", "draft", "router"}) {
      out += std::string(n) + ":\n" + ReadText(dir + "/logs/" + n + ".log") + "\n";
    }
    return out;
  };

  // The documented default size holds 8 full-context requests of this mode: each reserves
  // kv::ReservationBlocks of spec::KvDemandOf (default knobs, 2 stages). Computed here from the
  // formula, not read back from the processes.
  spec::SpecParams defaults;
  defaults.mode = spec::Mode::kPipeInfer;
  const spec::KvDemand full = spec::KvDemandOf(defaults, kDemoContext, 2);
  for (const std::string& s : stages) {
    const v1::StageInfo info = StageInfoOf(s);
    ASSERT_EQ(info.n_ctx(), kDemoContext);
    const int64_t per_request =
        kv::ReservationBlocks(full.reserve_tokens, full.partitions, info.kv_block_size());
    EXPECT_GE(static_cast<int64_t>(info.kv_blocks_total()), kUsers * per_request)
        << "stage " << info.stage_index() << " cannot hold " << kUsers
        << " full-context requests of " << per_request << " blocks";
  }

  // Eight users at once: half greedy, half sampled (seeded, so a failure can be replayed).
  std::vector<HttpResult> results(kUsers);
  std::vector<std::thread> users;
  std::atomic<int> ready{0};
  for (int i = 0; i < kUsers; ++i) {
    users.emplace_back([&, i] {
      json body{{"messages", {{{"role", "user"}, {"content", kPrompts[i]}}}}, {"stream", true}};
      if (i % 2 == 0) {
        body["temperature"] = 0;
      } else {
        body["temperature"] = 0.4 + 0.2 * (i / 2);
        body["seed"] = 1000 + i;
      }
      // Start together, so that the requests overlap even on a loaded machine.
      ready.fetch_add(1);
      while (ready.load() < kUsers) std::this_thread::yield();
      results[i] = HttpRequest(http_port, "POST", "/v1/chat/completions", body.dump());
    });
  }
  for (auto& t : users) t.join();

  int length_finishes = 0;
  for (int i = 0; i < kUsers; ++i) {
    SCOPED_TRACE(std::string("user ") + std::to_string(i) + ": " + kPrompts[i]);
    const StreamedAnswer a = CheckStreamedAnswer(results[i], /*chat=*/true);
    EXPECT_EQ(a.problem, "");
    EXPECT_GE(a.content_deltas, 1) << Clip(results[i].raw);
    EXPECT_GT(a.completion_tokens, 0);
    // Without max_tokens the router fills the context: a "length" finish ends exactly there.
    if (a.finish_reason == "length") {
      ++length_finishes;
      EXPECT_EQ(a.prompt_tokens + a.completion_tokens, static_cast<int>(kDemoContext));
    }
    std::printf("user %d: HTTP %d, %d content deltas, finish %s, %d+%d tokens, %.2f s\n", i,
                results[i].status, a.content_deltas, a.finish_reason.c_str(), a.prompt_tokens,
                a.completion_tokens, results[i].seconds);
  }
  std::printf("%d of %d answers ran to the end of the context\n", length_finishes, kUsers);

  // Everything let go: the last closes travel down the pipeline asynchronously, hence the poll.
  for (const std::string& s : stages) {
    std::string why;
    EXPECT_TRUE(PollUntil([&] { return StageIdle(s, &why); }, std::chrono::seconds(20))) << why;
  }
  EXPECT_TRUE(PollUntil([&] { return DraftInfoOf(state->endpoints.draft).active_sessions() == 0; },
                        std::chrono::seconds(20)));

  // The counters, as the operator sees them.
  const CommandResult stats =
      RunCmd({BinPath("pipeinfer"), "stats", "--router", state->endpoints.router_grpc},
             std::chrono::seconds(30));
  ASSERT_EQ(stats.exit_code, 0) << stats.output;
  EXPECT_EQ(StatsValue(stats.output, "draft.kv_refused_total"), 0) << stats.output;
  for (const char* s : {"stage0", "stage1"}) {
    SCOPED_TRACE(s);
    const std::string p = std::string(s) + ".";
    EXPECT_EQ(StatsValue(stats.output, p + "kv_reservation_overruns_total"), 0) << stats.output;
    EXPECT_EQ(StatsValue(stats.output, p + "kv_blocks_in_use"), 0) << stats.output;
    EXPECT_EQ(StatsValue(stats.output, p + "kv_blocks_reserved"), 0) << stats.output;
    EXPECT_EQ(StatsValue(stats.output, p + "sessions_open"), 0) << stats.output;
    // The cluster is fresh, so every pass belongs to this load: more runs than passes means some
    // passes carried runs of several requests.
    const double passes = StatsValue(stats.output, p + "batch_runs_count");
    const double runs = StatsValue(stats.output, p + "batch_runs_sum");
    EXPECT_GT(passes, 0) << stats.output;
    EXPECT_GT(runs, passes) << "no forward pass batched two runs\n" << stats.output;
    std::printf("%s: %.0f runs in %.0f forward passes (%.2f per pass)\n", s, runs, passes,
                passes > 0 ? runs / passes : 0.0);
  }
  std::fflush(stdout);

  cluster.Down();
  if (::testing::Test::HasFailure()) {
    std::fprintf(stderr, "%s", logs().c_str());
  } else {
    fs::remove_all(dir);
  }
}

}  // namespace
}  // namespace pipeinfer
