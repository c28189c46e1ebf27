// Crash recovery (issue 17): a 3-stage pipeline of the demo target (real pipeinfer-stage processes)
// and a pipeinfer-draft on loopback. A 200-token greedy stream (ignore_eos) loses a stage to
// SIGKILL mid-stream; the test restarts the stage with the same command line, and the stream must
// complete with ids identical to an undisturbed run, in plain and in pipeinfer mode, for each of
// the three stages. The undisturbed run itself starts with the demo target's reference ids (the
// PyTorch fixture), and pipeinfer equals plain. A stage that stays dead ends the stream with a
// retryable UNAVAILABLE within --recovery-seconds. /metrics counts every recovery.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>

#include <chrono>
#include <memory>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "pipeinfer/v1/draft.grpc.pb.h"
#include "testing/fixtures.h"
#include "testing/grpc_health.h"
#include "testing/process.h"
#include "testing/service_group.h"

namespace pipeinfer {
namespace {

using pipeinfer::testing::BinPath;
using pipeinfer::testing::ChildProcess;
using pipeinfer::testing::FixturePath;
using pipeinfer::testing::FreeLoopbackAddress;
using pipeinfer::testing::ReadIds;
using pipeinfer::testing::ReadText;
using pipeinfer::testing::StageArgv;
using pipeinfer::testing::WaitServing;
using Clock = std::chrono::steady_clock;

constexpr int kStages = 3;
constexpr uint32_t kTokens = 200;
constexpr int kRecoverySeconds = 8;
constexpr uint32_t kKillAfter = 30;  // tokens received before the SIGKILL

const std::string kModels = PIPEINFER_MODELS_DIR;

// One service process that the test can SIGKILL and start again with the same command line.
struct Proc {
  std::string name, address, log;
  std::vector<std::string> argv;
  std::unique_ptr<ChildProcess> process;

  // Starts the process (from the test's main thread: a child dies with the thread that forked
  // it, PR_SET_PDEATHSIG); then waits until it is SERVING.
  void Spawn() { process = std::make_unique<ChildProcess>(argv, log); }
  bool Serving() { return WaitServing(address, log, *process, std::chrono::seconds(30)); }
  bool Launch() {
    Spawn();
    return Serving();
  }
  void Kill() {
    ASSERT_GT(process->pid(), 0);
    ::kill(process->pid(), SIGKILL);
    process->Stop();  // reaps it
  }
};

struct Cluster {
  std::vector<Proc> stages;  // index order
  Proc draft;
  std::string metrics;  // the draft's /metrics address
  std::string Logs() const {
    std::string out;
    for (const Proc& p : stages) out += p.name + ":\n" + ReadText(p.log) + "\n";
    return out + "draft:\n" + ReadText(draft.log);
  }
};

std::unique_ptr<Cluster> cluster;

bool StartCluster(Cluster& c, int attempt) {
  const std::string prefix = ::testing::TempDir() + "/crash_recovery_test." +
                             std::to_string(getpid()) + "." + std::to_string(attempt) + ".";
  const std::string target = kModels + "/demo-target-f16.gguf";
  c.stages.clear();
  c.stages.resize(kStages);
  for (int i = 0; i < kStages; ++i) {
    c.stages[i].name = "stage" + std::to_string(i);
    c.stages[i].address = FreeLoopbackAddress();
    c.stages[i].log = prefix + c.stages[i].name + ".log";
  }
  for (int i = kStages - 1; i >= 0; --i) {
    // A padded pass (2 ms) keeps the 200 tokens streaming for long enough to kill mid-stream.
    std::vector<std::string> extra = {"--kv-tokens",      "2048", "--max-run-tokens", "32",
                                      "--emulate-run-us", "2000"};
    if (i + 1 < kStages) {
      extra.insert(extra.end(),
                   {"--downstream", c.stages[i + 1].address, "--connect-timeout-ms", "500"});
    }
    c.stages[i].argv = StageArgv(target, c.stages[i].address, std::to_string(i), kStages, extra);
    if (!c.stages[i].Launch()) return false;
  }
  c.metrics = FreeLoopbackAddress();
  c.draft.name = "draft";
  c.draft.address = FreeLoopbackAddress();
  c.draft.log = prefix + "draft.log";
  c.draft.argv = {BinPath("pipeinfer-draft"),
                  "--listen",
                  c.draft.address,
                  "--stage0",
                  c.stages[0].address,
                  "--last",
                  c.stages[kStages - 1].address,
                  "--model",
                  target,
                  "--draft-model",
                  kModels + "/demo-draft-f16.gguf",
                  "--recovery-seconds",
                  std::to_string(kRecoverySeconds),
                  "--metrics-listen",
                  c.metrics};
  return c.draft.Launch();
}

class CrashRecoveryTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    for (int attempt = 0; attempt < 3 && !cluster; ++attempt) {
      auto c = std::make_unique<Cluster>();
      if (StartCluster(*c, attempt)) {
        cluster = std::move(c);
      } else {
        std::fprintf(stderr, "cluster did not start (attempt %d)\n%s", attempt, c->Logs().c_str());
      }
    }
  }
  static void TearDownTestSuite() {
    if (!cluster) return;
    cluster->draft.process->Stop();
    for (auto it = cluster->stages.rbegin(); it != cluster->stages.rend(); ++it) {
      it->process->Stop();
    }
    cluster.reset();
  }
  void SetUp() override { ASSERT_NE(cluster, nullptr) << "the cluster did not start"; }
};

struct Stream {
  grpc::Status status;
  std::vector<uint32_t> ids;
  bool in_band_error = false;
  bool retryable = false;
  bool finished = false;
  double seconds_after_kill = 0;
};

v1::GenerateRequest Request(v1::SpecMode mode) {
  v1::GenerateRequest req;
  req.set_request_id("crash-recovery");
  for (int32_t t : ReadIds(FixturePath("demo/demo-target.prompt_ids.txt"))) {
    req.add_prompt_token_ids(static_cast<uint32_t>(t));
  }
  req.set_max_tokens(kTokens);
  req.set_ignore_eos(true);
  req.mutable_sampling()->set_temperature(0.0f);
  req.mutable_spec()->set_mode(mode);
  return req;
}

// Streams a request; with `kill` >= 0, SIGKILLs that stage after kKillAfter tokens and (with
// `restart`) starts it again 300 ms later with the same command line while the stream waits.
Stream RunStream(v1::SpecMode mode, int kill = -1, bool restart = true) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto stub = v1::Draft::NewStub(
      grpc::CreateCustomChannel(cluster->draft.address, grpc::InsecureChannelCredentials(), args));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto reader = stub->Generate(&ctx, Request(mode));
  Stream s;
  Clock::time_point killed_at{};
  v1::GenerateResponse ev;
  while (reader->Read(&ev)) {
    if (ev.has_tokens()) {
      EXPECT_EQ(ev.tokens().index(), s.ids.size());  // nothing streamed twice, nothing skipped
      for (uint32_t t : ev.tokens().token_ids()) s.ids.push_back(t);
      if (kill >= 0 && killed_at == Clock::time_point{} && s.ids.size() >= kKillAfter) {
        cluster->stages[kill].Kill();
        killed_at = Clock::now();
        if (restart) {
          std::this_thread::sleep_for(std::chrono::milliseconds(300));
          cluster->stages[kill].Spawn();
        }
      }
    } else if (ev.has_error()) {
      s.in_band_error = true;
      s.retryable = ev.error().retryable();
    } else if (ev.has_finished()) {
      s.finished = true;
    }
  }
  s.status = reader->Finish();
  if (killed_at != Clock::time_point{}) {
    s.seconds_after_kill = std::chrono::duration<double>(Clock::now() - killed_at).count();
  }
  if (restart && kill >= 0) {
    EXPECT_TRUE(cluster->stages[kill].Serving()) << cluster->Logs();
  }
  return s;
}

double Recoveries() {
  httplib::Client http("http://" + cluster->metrics);
  auto res = http.Get("/metrics");
  if (!res || res->status != 200) return -1;
  std::smatch m;
  if (!std::regex_search(
          res->body, m,
          std::regex(R"(\npipeinfer_draft_recoveries_total(\{[^}]*\})? ([0-9.e+]+))"))) {
    return -1;
  }
  return std::stod(m[2]);
}

void ExpectRecovers(v1::SpecMode mode) {
  const Stream undisturbed = RunStream(mode);
  ASSERT_TRUE(undisturbed.status.ok()) << undisturbed.status.error_message() << cluster->Logs();
  ASSERT_EQ(undisturbed.ids.size(), kTokens);
  // Anchored on the reference: the target's first greedy ids from the PyTorch fixture.
  const std::vector<int32_t> ref = ReadIds(FixturePath("demo/demo-target.greedy_ids.txt"));
  ASSERT_FALSE(ref.empty());
  for (size_t i = 0; i < ref.size(); ++i) {
    EXPECT_EQ(undisturbed.ids[i], static_cast<uint32_t>(ref[i])) << "token " << i;
  }
  for (int k = 0; k < kStages; ++k) {
    SCOPED_TRACE("SIGKILL stage " + std::to_string(k));
    const double before = Recoveries();
    const Stream s = RunStream(mode, k);
    EXPECT_TRUE(s.status.ok()) << s.status.error_message() << "\n" << cluster->Logs();
    EXPECT_FALSE(s.in_band_error);
    EXPECT_TRUE(s.finished);
    EXPECT_EQ(s.ids, undisturbed.ids);
    EXPECT_GE(Recoveries(), before + 1) << "the stream finished before the stage died?";
    // Back to a healthy pipeline for the next round.
    ASSERT_TRUE(WaitServing(cluster->draft.address, cluster->draft.log, *cluster->draft.process,
                            std::chrono::seconds(30)));
  }
}

TEST_F(CrashRecoveryTest, PlainGreedyStreamSurvivesEachStageCrash) {
  ExpectRecovers(v1::SPEC_MODE_PLAIN);
}

TEST_F(CrashRecoveryTest, PipeinferGreedyStreamSurvivesEachStageCrash) {
  ExpectRecovers(v1::SPEC_MODE_PIPEINFER);
  // Speculation is lossless: the same ids as plain (a different path through the controller).
  const Stream plain = RunStream(v1::SPEC_MODE_PLAIN);
  const Stream spec = RunStream(v1::SPEC_MODE_PIPEINFER);
  EXPECT_EQ(plain.ids, spec.ids);
}

// Runs last: stage 1 stays dead, so the stream ends with a retryable UNAVAILABLE (an in-band error
// event after the tokens already sent) within --recovery-seconds of the crash.
TEST_F(CrashRecoveryTest, AStageThatStaysDeadEndsWithUnavailable) {
  const Stream s = RunStream(v1::SPEC_MODE_PLAIN, /*kill=*/1, /*restart=*/false);
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::UNAVAILABLE) << s.status.error_message();
  EXPECT_TRUE(s.in_band_error);
  EXPECT_TRUE(s.retryable);
  EXPECT_FALSE(s.finished);
  EXPECT_GE(s.ids.size(), kKillAfter);
  EXPECT_LT(s.ids.size(), kTokens);
  EXPECT_GE(s.seconds_after_kill, kRecoverySeconds - 1.0);
  EXPECT_LT(s.seconds_after_kill, kRecoverySeconds + 5.0);
  // Start it again so that teardown finds every process.
  EXPECT_TRUE(cluster->stages[1].Launch()) << cluster->Logs();
}

}  // namespace
}  // namespace pipeinfer
