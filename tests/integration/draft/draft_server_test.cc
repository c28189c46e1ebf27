// Two real pipeinfer-stage processes (tiny-f32 split in two) and one pipeinfer-draft process on
// loopback: greedy Generate reproduces llama.cpp's ids, concurrent calls each get their own
// correct answer, a call cancelled mid-stream frees the KV on every stage, and bad requests get
// the documented status codes.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "grpc/health/v1/health.grpc.pb.h"
#include "pipeinfer/v1/draft.grpc.pb.h"
#include "pipeinfer/v1/stage.grpc.pb.h"
#include "testing/fixtures.h"
#include "testing/grpc_health.h"
#include "testing/process.h"
#include "testing/service_group.h"

namespace pipeinfer {
namespace {

using pipeinfer::testing::BinPath;
using pipeinfer::testing::ChildProcess;
using pipeinfer::testing::DraftPipeline;
using pipeinfer::testing::FixturePath;
using pipeinfer::testing::FreeLoopbackAddress;
using pipeinfer::testing::FreePort;
using pipeinfer::testing::ReadText;
using pipeinfer::testing::ServiceGroup;
using pipeinfer::testing::StartDraftPipeline;
using pipeinfer::testing::StartServiceGroup;
using pipeinfer::testing::WaitServing;
using Clock = std::chrono::system_clock;

std::vector<uint32_t> ReadIds(const std::string& path) {
  std::istringstream in(ReadText(path));
  std::vector<uint32_t> ids;
  uint32_t v;
  while (in >> v) ids.push_back(v);
  return ids;
}

std::shared_ptr<grpc::Channel> ChannelFor(const std::string& addr) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  return grpc::CreateCustomChannel(addr, grpc::InsecureChannelCredentials(), args);
}

v1::StageInfo StageInfo(const std::string& addr) {
  auto stub = v1::Stage::NewStub(ChannelFor(addr));
  grpc::ClientContext ctx;
  ctx.set_deadline(Clock::now() + std::chrono::seconds(10));
  v1::StageInfoRequest req;
  v1::StageInfo info;
  EXPECT_TRUE(stub->GetInfo(&ctx, req, &info).ok());
  return info;
}

// The processes, started once for the suite.
struct Cluster {
  std::string addr0, addr1, draft;
  std::unique_ptr<ServiceGroup> services;
};

std::unique_ptr<Cluster> cluster;

// The outcome of one Generate call.
struct Generation {
  grpc::Status status;
  std::vector<uint32_t> ids;
  std::vector<v1::GenerateResponse> events;
};

v1::GenerateRequest GreedyRequest(const std::string& id, const std::vector<uint32_t>& prompt,
                                  uint32_t max_tokens) {
  v1::GenerateRequest req;
  req.set_request_id(id);
  for (uint32_t t : prompt) req.add_prompt_token_ids(t);
  req.set_max_tokens(max_tokens);
  req.mutable_sampling()->set_temperature(0.0f);
  return req;
}

Generation Generate(const v1::GenerateRequest& req) {
  auto stub = v1::Draft::NewStub(ChannelFor(cluster->draft));
  grpc::ClientContext ctx;
  ctx.set_deadline(Clock::now() + std::chrono::seconds(60));
  auto reader = stub->Generate(&ctx, req);
  Generation g;
  v1::GenerateResponse ev;
  while (reader->Read(&ev)) {
    if (ev.has_tokens()) {
      EXPECT_EQ(ev.tokens().index(), g.ids.size());
      for (uint32_t t : ev.tokens().token_ids()) g.ids.push_back(t);
    }
    g.events.push_back(ev);
  }
  g.status = reader->Finish();
  return g;
}

class DraftServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string model = FixturePath("models/tiny-f32.gguf");
    auto c = std::make_unique<Cluster>();
    c->services = StartServiceGroup("draft_server_test", [&](ServiceGroup& g) {
      DraftPipeline p;
      const bool ok = StartDraftPipeline(g, model, p, {"--max-run-tokens", "16"});
      c->addr0 = p.stage0;
      c->addr1 = p.stage1;
      c->draft = p.draft;
      return ok;
    });
    if (c->services) cluster = std::move(c);
  }
  static void TearDownTestSuite() {
    if (!cluster) return;
    EXPECT_EQ(cluster->services->Stop("draft"), 0) << cluster->services->Log("draft");
    EXPECT_EQ(cluster->services->Stop("stage0"), 0) << cluster->services->Log("stage0");
    EXPECT_EQ(cluster->services->Stop("stage1"), 0) << cluster->services->Log("stage1");
    cluster->services->Finish();
    cluster.reset();
  }
  void SetUp() override { ASSERT_NE(cluster, nullptr) << "the processes did not start"; }
};

TEST_F(DraftServerTest, GreedyMatchesReference) {
  const auto prompt = ReadIds(FixturePath("refs/tiny-f32.p1.prompt_ids.txt"));
  const auto want = ReadIds(FixturePath("refs/tiny-f32.p1.greedy_ids.txt"));
  ASSERT_EQ(want.size(), 32u);
  // The reference path holds no EOS (id 2), so the request runs to max_tokens.
  ASSERT_EQ(std::count(want.begin(), want.end(), 2u), 0);
  // The prompt (64 tokens) is prefilled in 4 chunks of stage 0's --max-run-tokens 16.
  Generation g = Generate(GreedyRequest("greedy-1", prompt, 32));
  ASSERT_TRUE(g.status.ok()) << g.status.error_message() << "\n" << cluster->services->Log("draft");
  EXPECT_EQ(g.ids, want);
  ASSERT_FALSE(g.events.empty());
  ASSERT_TRUE(g.events.back().has_finished());
  const auto& f = g.events.back().finished();
  EXPECT_EQ(f.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(f.usage().prompt_tokens(), prompt.size());
  EXPECT_EQ(f.usage().completion_tokens(), 32u);
  EXPECT_EQ(f.usage().total_tokens(), prompt.size() + 32);
  EXPECT_GT(f.timings().total_us(), 0u);
  EXPECT_EQ(f.counters().mode(), v1::SPEC_MODE_PLAIN);
  EXPECT_EQ(f.counters().runs_plain(), 4u + 31u);

  // A stop token id ends the generation there, the stop token included.
  auto req = GreedyRequest("greedy-stop", prompt, 32);
  req.add_stop_token_ids(want[5]);
  g = Generate(req);
  ASSERT_TRUE(g.status.ok()) << g.status.error_message();
  const size_t stop_at = std::find(want.begin(), want.end(), want[5]) - want.begin();
  EXPECT_EQ(g.ids, std::vector<uint32_t>(want.begin(), want.begin() + stop_at + 1));
  EXPECT_EQ(g.events.back().finished().finish_reason(), v1::FINISH_REASON_STOP);

  // The draft service's counters and info.
  auto stub = v1::Draft::NewStub(ChannelFor(cluster->draft));
  grpc::ClientContext ctx;
  ctx.set_deadline(Clock::now() + std::chrono::seconds(10));
  v1::StatsRequest sreq;
  sreq.set_include_pipeline(true);
  v1::StatsResponse sresp;
  ASSERT_TRUE(stub->GetStats(&ctx, sreq, &sresp).ok());
  ASSERT_EQ(sresp.services_size(), 3);
  std::map<std::string, double> counters;
  for (const auto& c : sresp.services(0).counters()) counters[c.name()] = c.value();
  EXPECT_GE(counters["requests_total"], 2);
  EXPECT_GE(counters["tokens_generated_total"], 32 + stop_at + 1);
  EXPECT_GE(counters["runs_launched_total"], 35);
  EXPECT_EQ(counters["sessions_open"], 0);
  EXPECT_EQ(sresp.services(1).service(), "stage0");
  EXPECT_EQ(sresp.services(2).service(), "stage1");

  grpc::ClientContext ictx;
  ictx.set_deadline(Clock::now() + std::chrono::seconds(10));
  v1::DraftInfo info;
  ASSERT_TRUE(stub->GetInfo(&ictx, v1::DraftInfoRequest(), &info).ok());
  EXPECT_EQ(info.model().id(), "tiny-f32");
  EXPECT_EQ(info.model().n_vocab(), 259u);
  EXPECT_EQ(info.model().n_stages(), 2u);
  EXPECT_TRUE(info.pipeline_ready());
  EXPECT_GT(info.epoch(), 0u);
}

TEST_F(DraftServerTest, ConcurrentRequestsGetTheirOwnAnswers) {
  const auto prompt = ReadIds(FixturePath("refs/tiny-f32.p1.prompt_ids.txt"));
  const auto want = ReadIds(FixturePath("refs/tiny-f32.p1.greedy_ids.txt"));
  // A second prompt: the first 20 tokens, whose answer is computed alone first.
  const std::vector<uint32_t> short_prompt(prompt.begin(), prompt.begin() + 20);
  Generation alone = Generate(GreedyRequest("short-alone", short_prompt, 24));
  ASSERT_TRUE(alone.status.ok()) << alone.status.error_message();
  ASSERT_EQ(alone.ids.size(), 24u);

  std::vector<Generation> out(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      out[i] = i % 2 == 0 ? Generate(GreedyRequest("long-" + std::to_string(i), prompt, 32))
                          : Generate(GreedyRequest("short-" + std::to_string(i), short_prompt, 24));
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(out[i].status.ok()) << i << ": " << out[i].status.error_message();
    EXPECT_EQ(out[i].ids, i % 2 == 0 ? want : alone.ids) << "request " << i;
  }
}

TEST_F(DraftServerTest, CancellationFreesKvOnEveryStage) {
  const auto prompt = ReadIds(FixturePath("refs/tiny-f32.p1.prompt_ids.txt"));
  {
    auto stub = v1::Draft::NewStub(ChannelFor(cluster->draft));
    grpc::ClientContext ctx;
    ctx.set_deadline(Clock::now() + std::chrono::seconds(60));
    // No max_tokens: it would run to the end of the context.
    auto req = GreedyRequest("to-cancel", prompt, 1);
    req.clear_max_tokens();
    req.set_ignore_eos(true);
    auto reader = stub->Generate(&ctx, req);
    v1::GenerateResponse ev;
    int tokens = 0;
    while (tokens < 3 && reader->Read(&ev)) {
      if (ev.has_tokens()) ++tokens;
    }
    ASSERT_EQ(tokens, 3);
    EXPECT_GT(StageInfo(cluster->addr0).kv_blocks_in_use(), 0u);
    ctx.TryCancel();
    while (reader->Read(&ev)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  v1::StageInfo i0, i1;
  while (std::chrono::steady_clock::now() < end) {
    i0 = StageInfo(cluster->addr0);
    i1 = StageInfo(cluster->addr1);
    if (i0.kv_blocks_in_use() == 0 && i1.kv_blocks_in_use() == 0 && i0.sessions_open() == 0 &&
        i1.sessions_open() == 0) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(i0.kv_blocks_in_use(), 0u);
  EXPECT_EQ(i1.kv_blocks_in_use(), 0u);
  EXPECT_EQ(i0.sessions_open(), 0u);
  EXPECT_EQ(i1.sessions_open(), 0u);

  // The pipeline still works afterwards.
  const auto want = ReadIds(FixturePath("refs/tiny-f32.p1.greedy_ids.txt"));
  Generation g = Generate(GreedyRequest("after-cancel", prompt, 32));
  ASSERT_TRUE(g.status.ok()) << g.status.error_message();
  EXPECT_EQ(g.ids, want);
}

TEST_F(DraftServerTest, BadRequestsAreRefused) {
  const auto prompt = ReadIds(FixturePath("refs/tiny-f32.p1.prompt_ids.txt"));
  auto req = GreedyRequest("bad-token", prompt, 4);
  req.set_prompt_token_ids(3, 999);
  Generation g = Generate(req);
  EXPECT_EQ(g.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(g.status.error_message().find("999"), std::string::npos) << g.status.error_message();
  EXPECT_TRUE(g.events.empty());

  req = GreedyRequest("empty", {}, 4);
  EXPECT_EQ(Generate(req).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  req = GreedyRequest("too-long", prompt, 100000);
  EXPECT_EQ(Generate(req).status.error_code(), grpc::StatusCode::OUT_OF_RANGE);

  req = GreedyRequest("bad-top-p", prompt, 4);
  req.mutable_sampling()->set_top_p(1.5f);
  EXPECT_EQ(Generate(req).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  req = GreedyRequest("bad-model", prompt, 4);
  req.set_model("no-such-model");
  EXPECT_EQ(Generate(req).status.error_code(), grpc::StatusCode::NOT_FOUND);

  // This service has no draft model: the speculative modes are refused with a precise reason.
  req = GreedyRequest("no-draft", prompt, 4);
  req.mutable_spec()->set_mode(v1::SPEC_MODE_PIPEINFER);
  Generation nd = Generate(req);
  EXPECT_EQ(nd.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(nd.status.error_message().find("draft model"), std::string::npos)
      << nd.status.error_message();

  req = GreedyRequest("bad-draft-max", prompt, 4);
  req.mutable_spec()->set_draft_max(0);
  EXPECT_EQ(Generate(req).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  req = GreedyRequest("bad-p-accept", prompt, 4);
  req.mutable_spec()->set_p_accept(2.0f);
  EXPECT_EQ(Generate(req).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  req = GreedyRequest("bad-max-branches", prompt, 4);
  req.mutable_spec()->set_max_branches(17);
  EXPECT_EQ(Generate(req).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// Sampling with a seed is reproducible (SPARSE rows through the pipeline: top_k > 0, no penalty),
// and a repetition penalty (FULL logits, filtered at the draft) is reproducible too.
TEST_F(DraftServerTest, SeededSamplingIsReproducible) {
  const auto prompt = ReadIds(FixturePath("refs/tiny-f32.p1.prompt_ids.txt"));
  auto req = GreedyRequest("sample", prompt, 16);
  req.mutable_sampling()->set_temperature(0.8f);
  req.mutable_sampling()->set_top_k(20);
  req.mutable_sampling()->set_seed(1234);
  req.set_ignore_eos(true);
  Generation a = Generate(req);
  Generation b = Generate(req);
  ASSERT_TRUE(a.status.ok()) << a.status.error_message();
  ASSERT_TRUE(b.status.ok()) << b.status.error_message();
  EXPECT_EQ(a.ids.size(), 16u);
  EXPECT_EQ(a.ids, b.ids);
  for (int32_t id : a.ids) EXPECT_LT(id, 259);
  req.mutable_sampling()->set_repetition_penalty(1.3f);
  Generation c = Generate(req);
  Generation d = Generate(req);
  ASSERT_TRUE(c.status.ok()) << c.status.error_message();
  EXPECT_EQ(c.ids.size(), 16u);
  EXPECT_EQ(c.ids, d.ids);
}

bool DraftServing() {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto stub = grpc::health::v1::Health::NewStub(
      grpc::CreateCustomChannel(cluster->draft, grpc::InsecureChannelCredentials(), args));
  grpc::ClientContext ctx;
  ctx.set_deadline(Clock::now() + std::chrono::seconds(2));
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  return stub->Check(&ctx, req, &resp).ok() &&
         resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
}

// Runs last: losing the last stage turns the draft service NOT_SERVING and new requests get
// UNAVAILABLE; once the stage is back (same port), the draft service reconnects with a new epoch
// and serves correct answers again.
TEST_F(DraftServerTest, PipelineLossAndReconnect) {
  const auto prompt = ReadIds(FixturePath("refs/tiny-f32.p1.prompt_ids.txt"));
  const auto want = ReadIds(FixturePath("refs/tiny-f32.p1.greedy_ids.txt"));
  const uint64_t old_epoch = StageInfo(cluster->addr0).epoch();
  EXPECT_EQ(cluster->services->Stop("stage1"), 0) << cluster->services->Log("stage1");

  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (DraftServing() && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_FALSE(DraftServing());
  Generation g = Generate(GreedyRequest("no-pipeline", prompt, 4));
  EXPECT_EQ(g.status.error_code(), grpc::StatusCode::UNAVAILABLE) << g.status.error_message();

  // Restart stage 1 on the same address.
  ASSERT_TRUE(cluster->services->Restart("stage1")) << cluster->services->Log("stage1");
  end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!DraftServing() && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(DraftServing()) << cluster->services->Log("draft");
  EXPECT_GT(StageInfo(cluster->addr0).epoch(), old_epoch);
  g = Generate(GreedyRequest("reconnected", prompt, 32));
  ASSERT_TRUE(g.status.ok()) << g.status.error_message();
  EXPECT_EQ(g.ids, want);
}

// With one stage, stage 0 is also the last stage (--stage0 and --last name the same process).
TEST(DraftServerSingleStageTest, GreedyMatchesReference) {
  const auto prompt = ReadIds(FixturePath("refs/tiny-f32.p1.prompt_ids.txt"));
  const auto want = ReadIds(FixturePath("refs/tiny-f32.p1.greedy_ids.txt"));
  const std::string model = FixturePath("models/tiny-f32.gguf");
  const std::string dir = ::testing::TempDir();
  const std::string tag = std::to_string(getpid());
  const std::string log_s = dir + "/draft_server_test." + tag + ".single.stage.log";
  const std::string log_d = dir + "/draft_server_test." + tag + ".single.draft.log";
  bool ran = false;
  for (int attempt = 0; attempt < 3 && !ran; ++attempt) {
    const std::string addr_s = "127.0.0.1:" + std::to_string(FreePort());
    const std::string addr_d = "127.0.0.1:" + std::to_string(FreePort());
    ChildProcess stage({BinPath("pipeinfer-stage"), "--model", model, "--listen", addr_s, "--stage",
                        "0", "--stages", "1"},
                       log_s);
    if (!WaitServing(addr_s, log_s, stage, std::chrono::seconds(30))) continue;
    ChildProcess draft({BinPath("pipeinfer-draft"), "--listen", addr_d, "--stage0", addr_s,
                        "--last", addr_s, "--model", model},
                       log_d);
    if (!WaitServing(addr_d, log_d, draft, std::chrono::seconds(30))) continue;
    ran = true;
    auto stub = v1::Draft::NewStub(ChannelFor(addr_d));
    grpc::ClientContext ctx;
    ctx.set_deadline(Clock::now() + std::chrono::seconds(60));
    auto reader = stub->Generate(&ctx, GreedyRequest("single", prompt, 32));
    std::vector<uint32_t> ids;
    v1::GenerateResponse ev;
    while (reader->Read(&ev)) {
      for (uint32_t t : ev.tokens().token_ids()) ids.push_back(t);
    }
    const grpc::Status st = reader->Finish();
    ASSERT_TRUE(st.ok()) << st.error_message() << "\n" << ReadText(log_d);
    EXPECT_EQ(ids, want);
    EXPECT_EQ(draft.Stop(), 0) << ReadText(log_d);
    EXPECT_EQ(stage.Stop(), 0) << ReadText(log_s);
  }
  ASSERT_TRUE(ran) << "stage:\n" << ReadText(log_s) << "\ndraft:\n" << ReadText(log_d);
  std::remove(log_s.c_str());
  std::remove(log_d.c_str());
}

}  // namespace
}  // namespace pipeinfer
