// No takeover (stage.proto section 2a) with real processes: a two-stage pipeline and its draft
// service, with a 2 s ownership lease on stage 0, and a rogue gRPC client that opens Stage.Pipeline
// on stage 0 with epoch 2^64-1. While the draft service holds the pipeline, a single such open is
// refused; a rogue that keeps asking gets the pipeline after about a lease; and however the rogue
// then behaves (disconnects, stays idle, keeps its link busy), greedy Generate through the draft
// service works again, with the reference ids, within the documented bound L + B (+ 1 s of
// slack for opening the chain and this machine's scheduling), B = the draft's 2 s longest backoff.
// A draft service that starts while the rogue owns stage 0 does not give up either: it retries its
// first open and serves within the same bound (+ its own start-up).
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "pipeinfer/v1/draft.grpc.pb.h"
#include "pipeinfer/v1/stage.grpc.pb.h"
#include "testing/fixtures.h"
#include "testing/service_group.h"

namespace pipeinfer {
namespace {

using pipeinfer::testing::DraftPipeline;
using pipeinfer::testing::FixturePath;
using pipeinfer::testing::ServiceGroup;
using pipeinfer::testing::StartDraftPipeline;
using pipeinfer::testing::StartServiceGroup;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds kLease{2000};
constexpr milliseconds kDraftMaxBackoff{2000};
constexpr milliseconds kBound = kLease + kDraftMaxBackoff + milliseconds(1000);
constexpr uint64_t kMaxEpoch = std::numeric_limits<uint64_t>::max();

// The fixture's ids (testing::ReadIds) as the proto's unsigned ids.
std::vector<uint32_t> ReadIds(const std::string& path) {
  const std::vector<int32_t> ids = pipeinfer::testing::ReadIds(path);
  return {ids.begin(), ids.end()};
}

std::shared_ptr<grpc::Channel> ChannelFor(const std::string& addr) {
  // A channel of its own (no shared subchannel), as a separate client would have.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(addr, grpc::InsecureChannelCredentials(), args);
}

struct Cluster {
  DraftPipeline p;
  std::unique_ptr<ServiceGroup> services;
};
std::unique_ptr<Cluster> cluster;

v1::StageInfo Info(const std::string& addr) {
  auto stub = v1::Stage::NewStub(ChannelFor(addr));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::StageInfo info;
  EXPECT_TRUE(stub->GetInfo(&ctx, v1::StageInfoRequest(), &info).ok());
  return info;
}

// One greedy Generate of 8 tokens; the ids, or empty when it failed.
std::vector<uint32_t> Greedy(const std::shared_ptr<grpc::Channel>& ch, grpc::Status* status) {
  static const std::vector<uint32_t> prompt =
      ReadIds(FixturePath("refs/tiny-f32.p1.prompt_ids.txt"));
  auto stub = v1::Draft::NewStub(ch);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::GenerateRequest req;
  req.set_request_id("takeover");
  for (uint32_t t : prompt) req.add_prompt_token_ids(t);
  req.set_max_tokens(8);
  req.mutable_sampling()->set_temperature(0.0f);
  auto reader = stub->Generate(&ctx, req);
  std::vector<uint32_t> ids;
  v1::GenerateResponse ev;
  while (reader->Read(&ev)) {
    if (ev.has_tokens())
      ids.insert(ids.end(), ev.tokens().token_ids().begin(), ev.tokens().token_ids().end());
  }
  *status = reader->Finish();
  if (!status->ok()) ids.clear();
  return ids;
}

// Polls Generate until it succeeds with the reference ids; how long that took (or `limit`+).
milliseconds TimeUntilServing(milliseconds limit) {
  static const std::vector<uint32_t> want = [] {
    auto all = ReadIds(FixturePath("refs/tiny-f32.p1.greedy_ids.txt"));
    all.resize(8);
    return all;
  }();
  auto ch = ChannelFor(cluster->p.draft);
  const auto start = Clock::now();
  grpc::Status st;
  while (Clock::now() - start < limit + milliseconds(5000)) {
    std::vector<uint32_t> ids = Greedy(ch, &st);
    if (st.ok()) {
      EXPECT_EQ(ids, want);
      return std::chrono::duration_cast<milliseconds>(Clock::now() - start);
    }
    std::this_thread::sleep_for(milliseconds(50));
  }
  ADD_FAILURE() << "the draft service never served again; last status " << st.error_code() << " "
                << st.error_message();
  return limit + milliseconds(5000);
}

// A rogue controller's Pipeline stream to stage 0: opens with epoch 2^64-1, then reads whatever
// comes back (credits) on a thread; optionally sends a Barrier every 200 ms within its credit.
class Rogue {
 public:
  // One open; true once the stage granted the first credit and PipelineReady.
  bool Open() {
    stub_ = v1::Stage::NewStub(ChannelFor(cluster->p.stage0));
    ctx_ = std::make_unique<grpc::ClientContext>();
    stream_ = stub_->Pipeline(ctx_.get());
    v1::StageDownstream po;
    po.mutable_open()->set_controller_id("rogue");
    po.mutable_open()->set_epoch(kMaxEpoch);
    po.mutable_open()->set_receiver_stage_index(0);
    po.mutable_open()->set_n_stages(2);
    v1::StageUpstream c, r;
    if (!stream_->Write(po) || !stream_->Read(&c) || !c.has_credit() || !stream_->Read(&r) ||
        !r.has_ready()) {
      status_ = stream_->Finish();
      stream_.reset();
      return false;
    }
    credit_ = c.credit().messages();
    reader_ = std::thread([this] {
      v1::StageUpstream m;
      while (stream_->Read(&m)) {
        if (m.has_credit()) credit_ += m.credit().messages();
      }
      ended_ = true;
    });
    return true;
  }
  void KeepBusy() {
    busy_ = std::thread([this] {
      uint64_t id = 1;
      while (!ended_ && !stop_) {
        if (credit_ > 0) {
          --credit_;
          v1::StageDownstream b;
          b.mutable_barrier()->set_barrier_id(id++);
          if (!stream_->Write(b)) break;
        }
        std::this_thread::sleep_for(milliseconds(200));
      }
    });
  }
  // Cancels the stream (a disconnect) and returns how it ended.
  grpc::Status Drop() {
    stop_ = true;
    if (busy_.joinable()) busy_.join();
    if (!stream_) return status_;
    ctx_->TryCancel();
    if (reader_.joinable()) reader_.join();
    status_ = stream_->Finish();
    stream_.reset();
    return status_;
  }
  // Whether the stage ended the stream (waits up to 3 s for it).
  bool EndedByTheStage() const {
    for (int i = 0; i < 60 && !ended_; ++i) std::this_thread::sleep_for(milliseconds(50));
    return ended_;
  }
  const grpc::Status& refusal() const { return status_; }
  ~Rogue() { (void)Drop(); }

 private:
  std::unique_ptr<v1::Stage::Stub> stub_;
  std::unique_ptr<grpc::ClientContext> ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::StageDownstream, v1::StageUpstream>> stream_;
  grpc::Status status_;
  std::atomic<int64_t> credit_{0};
  std::atomic<bool> ended_{false}, stop_{false};
  std::thread reader_, busy_;
};

// The rogue keeps asking until stage 0 accepts it; returns how long that took.
milliseconds RogueTakesOver(Rogue& rogue) {
  const auto start = Clock::now();
  while (!rogue.Open()) {
    EXPECT_EQ(rogue.refusal().error_code(), grpc::StatusCode::FAILED_PRECONDITION)
        << rogue.refusal().error_message();
    if (Clock::now() - start > milliseconds(30000)) {
      ADD_FAILURE() << "the rogue never got the pipeline";
      break;
    }
  }
  return std::chrono::duration_cast<milliseconds>(Clock::now() - start);
}

class TakeoverTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string model = FixturePath("models/tiny-f32.gguf");
    auto c = std::make_unique<Cluster>();
    c->services = StartServiceGroup("takeover_test", [&](ServiceGroup& g) {
      return StartDraftPipeline(g, model, c->p,
                                {"--owner-lease-ms", std::to_string(kLease.count())});
    });
    if (c->services) cluster = std::move(c);
  }
  static void TearDownTestSuite() {
    if (!cluster) return;
    cluster->services->Finish();
    cluster.reset();
  }
  void SetUp() override {
    ASSERT_NE(cluster, nullptr) << "the processes did not start";
    // The draft service serves, and has held the pipeline for a lease (its tenure).
    ASSERT_LT(TimeUntilServing(milliseconds(15000)), milliseconds(15000));
    std::this_thread::sleep_for(kLease);
    ASSERT_LT(TimeUntilServing(milliseconds(1000)), milliseconds(1000));
  }
  void TearDown() override {
    if (HasFailure() && cluster) std::fprintf(stderr, "%s", cluster->services->Logs().c_str());
  }
};

// The message of the issue: one maximum-epoch open while the draft service is active is refused,
// and the draft service keeps serving. A rogue that keeps asking takes over after about a lease
// (the epoch travels down), then disconnects: the draft service is back well within the bound.
TEST_F(TakeoverTest, MaxEpochOpenIsRefusedAndADisconnectedRogueFreesThePipeline) {
  const uint64_t draft_epoch = Info(cluster->p.stage0).epoch();
  const auto first_ask = Clock::now();
  {
    Rogue once;
    ASSERT_FALSE(once.Open());
    EXPECT_EQ(once.refusal().error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_NE(once.refusal().error_message().find("held by"), std::string::npos)
        << once.refusal().error_message();
  }
  EXPECT_EQ(Info(cluster->p.stage0).epoch(), draft_epoch);
  EXPECT_EQ(Info(cluster->p.stage1).epoch(), draft_epoch);
  ASSERT_LT(TimeUntilServing(milliseconds(1000)), milliseconds(1000));

  Rogue rogue;
  RogueTakesOver(rogue);
  // It got in only after asking for a lease (its first, refused, open included).
  const auto took = std::chrono::duration_cast<milliseconds>(Clock::now() - first_ask);
  EXPECT_GE(took, kLease - milliseconds(300));
  EXPECT_EQ(Info(cluster->p.stage0).epoch(), kMaxEpoch);
  EXPECT_EQ(Info(cluster->p.stage1).epoch(), kMaxEpoch);
  (void)rogue.Drop();
  const milliseconds back = TimeUntilServing(kBound);
  EXPECT_LE(back, kBound);
  std::printf("rogue took over after %lld ms; draft back %lld ms after the disconnect\n",
              static_cast<long long>(took.count()), static_cast<long long>(back.count()));
  // The pipeline carries the draft service's own epoch again, on both stages.
  const uint64_t e0 = Info(cluster->p.stage0).epoch();
  EXPECT_NE(e0, kMaxEpoch);
  EXPECT_EQ(Info(cluster->p.stage1).epoch(), e0);
}

// A rogue that keeps its link open but sends nothing is displaced once it was idle for the lease.
TEST_F(TakeoverTest, AnIdleRogueIsDisplacedWithinTheBound) {
  Rogue rogue;
  RogueTakesOver(rogue);
  const milliseconds back = TimeUntilServing(kBound);
  EXPECT_LE(back, kBound);
  EXPECT_GE(back, kLease - milliseconds(300));  // it held the pipeline for a lease
  std::printf("idle rogue displaced after %lld ms\n", static_cast<long long>(back.count()));
  EXPECT_TRUE(rogue.EndedByTheStage());
  (void)rogue.Drop();
  EXPECT_NE(Info(cluster->p.stage0).epoch(), kMaxEpoch);
}

// A rogue that keeps its link busy (a Barrier every 200 ms) is displaced by the draft service's
// contest: after the rogue has held it for a lease and the draft service has asked for a lease.
TEST_F(TakeoverTest, ABusyRogueIsDisplacedWithinTheBound) {
  Rogue rogue;
  RogueTakesOver(rogue);
  rogue.KeepBusy();
  const milliseconds back = TimeUntilServing(kBound);
  EXPECT_LE(back, kBound);
  EXPECT_GE(back, kLease - milliseconds(300));
  std::printf("busy rogue displaced after %lld ms\n", static_cast<long long>(back.count()));
  EXPECT_TRUE(rogue.EndedByTheStage());
  (void)rogue.Drop();
  EXPECT_NE(Info(cluster->p.stage0).epoch(), kMaxEpoch);
}

// The draft service stops; a rogue takes the free pipeline and keeps its link busy; a draft service
// started now finds stage 0 owned. It keeps asking (PipelineLink::Start retries with backoff up to
// --connect-timeout-ms) instead of exiting, and becomes SERVING after the contest: no sooner than a
// lease, and within the bound plus its own start-up.
TEST_F(TakeoverTest, ADraftServiceStartedWhileARogueOwnsStageZeroServesWithinTheBound) {
  constexpr milliseconds kStartup{2000};  // the process starting, loading the model, GetInfo
  ASSERT_EQ(cluster->services->Stop("draft"), 0);
  Rogue rogue;
  // Its link ended with the draft service, so the rogue gets in at once (R1).
  EXPECT_LT(RogueTakesOver(rogue), milliseconds(3000));
  rogue.KeepBusy();
  EXPECT_EQ(Info(cluster->p.stage0).epoch(), kMaxEpoch);
  const auto start = Clock::now();
  ASSERT_TRUE(cluster->services->Restart("draft")) << cluster->services->Log("draft");
  const auto took = std::chrono::duration_cast<milliseconds>(Clock::now() - start);
  std::printf("draft service started under a busy rogue: SERVING after %lld ms\n",
              static_cast<long long>(took.count()));
  EXPECT_GE(took, kLease - milliseconds(300));  // it had to contest the rogue's lease
  EXPECT_LE(took, kBound + kStartup);
  const std::string log = cluster->services->Log("draft");
  EXPECT_NE(log.find("retrying"), std::string::npos) << log;  // its first opens were refused
  ASSERT_LT(TimeUntilServing(milliseconds(1000)), milliseconds(1000));
  EXPECT_TRUE(rogue.EndedByTheStage());
  (void)rogue.Drop();
  const uint64_t e0 = Info(cluster->p.stage0).epoch();
  EXPECT_NE(e0, kMaxEpoch);
  EXPECT_EQ(Info(cluster->p.stage1).epoch(), e0);
}

}  // namespace
}  // namespace pipeinfer
