// Batched execution equals unbatched execution, end to end: for each fixture model (tiny-q8_0,
// tiny-q4_k_m: Q8_0 and Q4_K/Q6_K kernels), two pipeinfer-stage processes, pipeinfer-draft (the
// model as its own draft) and pipeinfer-router. Eight different prompts (2 to ~190 tokens, so
// that prefill chunks and single-token runs share passes) generate 32 greedy tokens each with
// ignore_eos through Router.Complete, first one at a time, then all eight at once.
//
// References, each produced differently from what it is compared with:
//   * `pipeinfer generate`, the single-process path with no pipeline and no batching;
//   * the requests one at a time, where the stages never batch (checked: every forward pass of
//     that phase held one run, batch_runs sum == count);
//   * the same eight at once, where they do (checked: batch_runs sum > count on both stages).
// Plain mode must equal `generate`, be equal alone and together; pipeinfer mode (speculation,
// cancellation, KV partitions) likewise, and greedy pipeinfer equals plain (a documented
// property). Bit-identical logits are covered by the unit tests (stage_batch_test,
// engine_batch_test); this checks the assembled system: ordering, per-session positions and KV,
// the controller and the router, under real concurrency.
//
// How it can fail: a batched pass that mixes up rows, positions, KV slots or partitions between
// sessions changes some token ids; results routed to the wrong session swap whole answers; a
// kernel whose result depends on the other rows of the batch changes some logits and, sooner or
// later, an argmax.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "integration/load/load_testing.h"
#include "pipeinfer/v1/router.grpc.pb.h"
#include "testing/cluster_harness.h"
#include "testing/fixtures.h"
#include "testing/service_group.h"

namespace pipeinfer {
namespace {

using namespace pipeinfer::testing;

constexpr int kTokens = 32;

const char* const kPrompts[] = {
    "The quick brown fox jumps over the lazy dog.",
    "Hi",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife. However little known the feelings or views of such a man may be "
    "on his first entering a neighbourhood",
    "0123456789",
    "Call me Ishmael.",
    "In the beginning God created the heaven and the earth. And the earth was without form",
    "ZZZZ zzzz ZZZZ",
    "Emma Woodhouse, handsome, clever, and rich, with a comfortable home",
};
constexpr int kPromptCount = sizeof(kPrompts) / sizeof(kPrompts[0]);

using Ids = std::vector<int32_t>;

// 32 greedy ids of `prompt` through Router.Complete in `mode`; empty (and a failure) on error.
// Adds the request's accepted draft tokens to `*accepted`.
Ids Complete(const std::string& router, const std::string& prompt, v1::SpecMode mode,
             std::atomic<uint64_t>* accepted) {
  auto stub = v1::Router::NewStub(grpc::CreateChannel(router, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  v1::CompletionRequest req;
  req.set_text(prompt);
  v1::GenerationOptions* o = req.mutable_options();
  o->set_max_tokens(kTokens);
  o->set_ignore_eos(true);
  o->mutable_sampling()->set_temperature(0);
  o->mutable_spec()->set_mode(mode);
  auto reader = stub->Complete(&ctx, req);
  v1::GenerateEvent ev;
  Ids ids;
  bool finished = false;
  while (reader->Read(&ev)) {
    if (ev.has_delta()) {
      for (uint32_t id : ev.delta().token_ids()) ids.push_back(static_cast<int32_t>(id));
    }
    if (ev.has_finished()) {
      finished = true;
      EXPECT_EQ(ev.finished().spec().mode(), mode);
      accepted->fetch_add(ev.finished().spec().tokens_accepted());
    }
  }
  const grpc::Status st = reader->Finish();
  EXPECT_TRUE(st.ok() && finished) << st.error_message() << " for \"" << prompt << "\"";
  if (!st.ok()) return {};
  return ids;
}

// batch_runs {count, sum} of a stage: forward passes and the runs they held.
std::pair<double, double> BatchRuns(const std::string& stage) {
  const Counters c = StageCounters(stage);
  auto get = [&](const char* k) { return c.count(k) ? c.at(k) : -1.0; };
  return {get("batch_runs_count"), get("batch_runs_sum")};
}

std::string Join(const Ids& ids) {
  std::ostringstream o;
  for (int32_t id : ids) o << id << ' ';
  return o.str();
}

class BatchEquivalenceTest : public ::testing::TestWithParam<const char*> {};

TEST_P(BatchEquivalenceTest, EightPromptsTogetherEqualOneAtATime) {
  const std::string model = FixturePath(std::string("models/") + GetParam() + ".gguf");
  std::string stage0, stage1, draft, router;
  // --spec-budget 0: no pipeline-wide speculation budget, which would (by design, section 6 of
  // docs/architecture.md) make the eight concurrent pipeinfer requests nearly plain; without it
  // their speculative runs are batched as well.
  auto services = StartServiceGroup(
      std::string("load_batch_equivalence_test.") + GetParam(), [&](ServiceGroup& g) {
        stage0 = FreeLoopbackAddress();
        stage1 = FreeLoopbackAddress();
        draft = FreeLoopbackAddress();
        router = FreeLoopbackAddress();
        auto stage = [&](const std::string& listen, const std::string& index) {
          return StageArgv(model, listen, index, 2);
        };
        std::vector<std::string> argv0 = stage(stage0, "0");
        argv0.insert(argv0.end(), {"--downstream", stage1});
        return g.Start("stage1", stage(stage1, "1"), stage1) && g.Start("stage0", argv0, stage0) &&
               g.Start("draft",
                       {BinPath("pipeinfer-draft"), "--listen", draft, "--stage0", stage0, "--last",
                        stage1, "--model", model, "--draft-model", model, "--spec-budget", "0"},
                       draft) &&
               g.Start("router",
                       {BinPath("pipeinfer-router"), "--http",
                        "127.0.0.1:" + std::to_string(FreePort()), "--grpc", router, "--draft",
                        draft, "--model", model},
                       router);
      });
  ASSERT_NE(services, nullptr) << "the processes did not start";

  // The single-process reference.
  std::vector<Ids> reference(kPromptCount);
  for (int p = 0; p < kPromptCount; ++p) {
    const CommandResult r =
        RunCmd({BinPath("pipeinfer"), "generate", "-m", model, "-p", kPrompts[p], "-n",
                std::to_string(kTokens), "--ignore-eos", "--print-ids"},
               std::chrono::seconds(60));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    reference[p] = LastIdsLine(r.output);
    ASSERT_EQ(reference[p].size(), static_cast<size_t>(kTokens)) << r.output;
  }

  for (v1::SpecMode mode : {v1::SPEC_MODE_PLAIN, v1::SPEC_MODE_PIPEINFER}) {
    SCOPED_TRACE(v1::SpecMode_Name(mode));
    // One at a time: nothing to batch with.
    const auto before_alone0 = BatchRuns(stage0), before_alone1 = BatchRuns(stage1);
    std::vector<Ids> alone(kPromptCount);
    std::atomic<uint64_t> accepted_alone{0}, accepted_together{0};
    for (int p = 0; p < kPromptCount; ++p) {
      alone[p] = Complete(router, kPrompts[p], mode, &accepted_alone);
      // A finished pipeinfer request may still have cancelled speculative runs on their way; its
      // SessionClose follows them, so once no session is open on either stage, none of its runs
      // can share a pass with the next request.
      std::string why;
      for (const std::string& st : {stage0, stage1}) {
        EXPECT_TRUE(PollUntil([&] { return StageIdle(st, &why); }, std::chrono::seconds(20)))
            << why;
      }
    }
    const auto after_alone0 = BatchRuns(stage0), after_alone1 = BatchRuns(stage1);
    for (const auto& [before, after] :
         {std::pair{before_alone0, after_alone0}, std::pair{before_alone1, after_alone1}}) {
      EXPECT_GT(after.first, before.first);
      EXPECT_EQ(after.second - before.second, after.first - before.first)
          << "a forward pass batched runs while the requests ran one at a time";
    }

    // All at once, released together so that their runs meet in the stages' queues.
    std::vector<Ids> together(kPromptCount);
    std::vector<std::thread> threads;
    std::atomic<int> ready{0};
    for (int p = 0; p < kPromptCount; ++p) {
      threads.emplace_back([&, p] {
        ready.fetch_add(1);
        while (ready.load() < kPromptCount) std::this_thread::yield();
        together[p] = Complete(router, kPrompts[p], mode, &accepted_together);
      });
    }
    for (auto& t : threads) t.join();
    const auto after_together0 = BatchRuns(stage0), after_together1 = BatchRuns(stage1);
    int s = 0;
    for (const auto& [before, after] :
         {std::pair{after_alone0, after_together0}, std::pair{after_alone1, after_together1}}) {
      const double passes = after.first - before.first, runs = after.second - before.second;
      std::printf("%s %s stage %d: %.0f runs in %.0f forward passes (%.2f per pass)\n", GetParam(),
                  v1::SpecMode_Name(mode).c_str(), s++, runs, passes,
                  passes > 0 ? runs / passes : 0.0);
      EXPECT_GT(runs, passes) << "the concurrent requests were never batched: the check is void";
    }

    // The model is its own draft, so pipeinfer mode really speculates: its tokens went through
    // verification of drafted runs, not only through plain runs. Together it drafts less (a
    // session does not draft while an outcome waits for it, docs/architecture.md section 6), so
    // only the count alone is required.
    std::printf("%s %s: %llu draft tokens accepted alone, %llu together\n", GetParam(),
                v1::SpecMode_Name(mode).c_str(),
                static_cast<unsigned long long>(accepted_alone.load()),
                static_cast<unsigned long long>(accepted_together.load()));
    if (mode == v1::SPEC_MODE_PIPEINFER) {
      EXPECT_GT(accepted_alone.load(), 0u);
    }
    for (int p = 0; p < kPromptCount; ++p) {
      SCOPED_TRACE(std::string("prompt \"") + kPrompts[p] + "\"");
      EXPECT_EQ(alone[p], reference[p])
          << "alone:     " << Join(alone[p]) << "\nreference: " << Join(reference[p]);
      EXPECT_EQ(together[p], alone[p])
          << "together: " << Join(together[p]) << "\nalone:    " << Join(alone[p]);
    }
  }

  std::string why;
  for (const std::string& s : {stage0, stage1}) {
    EXPECT_TRUE(PollUntil([&] { return StageIdle(s, &why); }, std::chrono::seconds(20))) << why;
    const Counters c = StageCounters(s);
    EXPECT_EQ(c.count("kv_reservation_overruns_total") ? c.at("kv_reservation_overruns_total") : -1,
              0);
  }
  if (::testing::Test::HasFailure()) std::fprintf(stderr, "%s", services->Logs().c_str());
  services->Finish();
}

INSTANTIATE_TEST_SUITE_P(Models, BatchEquivalenceTest,
                         ::testing::Values("tiny-q8_0", "tiny-q4_k_m"), [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n) {
                             if (ch == '-') ch = '_';
                           }
                           return n;
                         });

}  // namespace
}  // namespace pipeinfer
