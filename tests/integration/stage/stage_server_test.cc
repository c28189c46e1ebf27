// Two real pipeinfer-stage processes on loopback (tiny-f32: stage 0 = layer 0 + embedding, stage
// 1 = layer 1 + head), driven by the test acting as the controller: greedy decoding through the
// pipeline reproduces llama.cpp's ids, a run cancelled before it is sent comes back as a tombstone
// and is skipped at stage 0, closing the session frees the KV on both stages, and bad opens are
// refused with FAILED_PRECONDITION.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "grpc/health/v1/health.grpc.pb.h"
#include "integration/stage/stage_controller.h"
#include "pipeinfer/v1/stage.grpc.pb.h"
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
using pipeinfer::testing::FreePort;
using pipeinfer::testing::ReadIds;
using pipeinfer::testing::ReadText;
using pipeinfer::testing::ServiceGroup;
using pipeinfer::testing::StartServiceGroup;
using Clock = std::chrono::system_clock;
using stage_testing::Controller;
using stage_testing::Info;
using stage_testing::PlainRun;
using stage_testing::Stats;
using stage_testing::StubFor;

// The two stage processes, started once for the suite.
struct Cluster {
  std::string addr0, addr1;
  std::unique_ptr<ServiceGroup> services;
};

std::unique_ptr<Cluster> cluster;

class StageServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string bin = BinPath("pipeinfer-stage");
    const std::string model = FixturePath("models/tiny-f32.gguf");
    auto c = std::make_unique<Cluster>();
    c->services = StartServiceGroup("stage_server_test", [&](ServiceGroup& g) {
      c->addr0 = FreeLoopbackAddress();
      c->addr1 = FreeLoopbackAddress();
      return g.Start("stage1",
                     {bin, "--model", model, "--listen", c->addr1, "--layers", "1:2", "--stage",
                      "1", "--stages", "2", "--kv-tokens", "1024"},
                     c->addr1) &&
             g.Start("stage0",
                     {bin, "--model", model, "--listen", c->addr0, "--layers", "0:1", "--stage",
                      "0", "--stages", "2", "--kv-tokens", "1024", "--downstream", c->addr1,
                      "--connect-timeout-ms", "500"},
                     c->addr0);
    });
    if (c->services) cluster = std::move(c);
  }
  static void TearDownTestSuite() {
    if (!cluster) return;
    // Both stages must exit cleanly on SIGTERM.
    EXPECT_EQ(cluster->services->Stop("stage0"), 0) << cluster->services->Log("stage0");
    EXPECT_EQ(cluster->services->Stop("stage1"), 0) << cluster->services->Log("stage1");
    cluster->services->Finish();
    cluster.reset();
  }
  void SetUp() override { ASSERT_NE(cluster, nullptr) << "the stage processes did not start"; }
};

TEST_F(StageServerTest, BadOpensAreRefused) {
  // A Pipeline stream whose first message is `first` ends with FAILED_PRECONDITION.
  auto expect_refused = [](const std::string& addr, const v1::StageDownstream& first) {
    auto stub = StubFor(addr);
    grpc::ClientContext ctx;
    ctx.set_deadline(Clock::now() + std::chrono::seconds(10));
    auto s = stub->Pipeline(&ctx);
    s->Write(first);
    v1::StageUpstream up;
    EXPECT_FALSE(s->Read(&up));
    EXPECT_EQ(s->Finish().error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  };
  auto open = [](uint32_t receiver, uint32_t n_stages) {
    v1::StageDownstream m;
    m.mutable_open()->set_epoch(1000);
    m.mutable_open()->set_receiver_stage_index(receiver);
    m.mutable_open()->set_n_stages(n_stages);
    return m;
  };
  {
    SCOPED_TRACE("wrong receiver index: stage 1 is told it is stage 0");
    expect_refused(cluster->addr1, open(0, 2));
  }
  {
    SCOPED_TRACE("n_stages inconsistent with stage 0 not being last");
    expect_refused(cluster->addr0, open(0, 1));
  }
  {
    SCOPED_TRACE("a run before the open");
    expect_refused(cluster->addr0, PlainRun(1, 1, {1}, 0));
  }
  {  // Results on a stage that is not last.
    auto stub = StubFor(cluster->addr0);
    grpc::ClientContext ctx;
    ctx.set_deadline(Clock::now() + std::chrono::seconds(10));
    auto s = stub->Results(&ctx);
    v1::ResultsUpstream results_open;
    results_open.mutable_open()->set_epoch(1);
    s->Write(results_open);
    v1::ResultsDownstream down;
    EXPECT_FALSE(s->Read(&down));
    EXPECT_EQ(s->Finish().error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }
  // None of this was accepted.
  EXPECT_EQ(Info(*StubFor(cluster->addr0)).epoch(), 0u);
  EXPECT_EQ(Info(*StubFor(cluster->addr1)).epoch(), 0u);
}

// Server reflection lists the Stage service (raw call: ServerReflectionRequest{list_services: ""}).
TEST_F(StageServerTest, ReflectionListsTheStageService) {
  grpc::GenericStub stub(grpc::CreateChannel(cluster->addr0, grpc::InsecureChannelCredentials()));
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(Clock::now() + std::chrono::seconds(10));
  auto call =
      stub.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* tag = nullptr;
  bool ok = false;
  auto step = [&](intptr_t want) {
    return cq.Next(&tag, &ok) && ok && reinterpret_cast<intptr_t>(tag) == want;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(step(1));
  const char request[] = {0x3a, 0x00};  // field 7 (list_services), empty string
  grpc::Slice slice(request, sizeof(request));
  grpc::ByteBuffer out(&slice, 1);
  call->Write(out, reinterpret_cast<void*>(2));
  ASSERT_TRUE(step(2));
  grpc::ByteBuffer in;
  call->Read(&in, reinterpret_cast<void*>(3));
  ASSERT_TRUE(step(3));
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(in.Dump(&slices).ok());
  std::string bytes;
  for (const auto& sl : slices) bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  EXPECT_NE(bytes.find("pipeinfer.v1.Stage"), std::string::npos);
  EXPECT_NE(bytes.find("grpc.health.v1.Health"), std::string::npos);
  call->WritesDone(reinterpret_cast<void*>(4));
  ASSERT_TRUE(step(4));
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  ASSERT_TRUE(step(5));
  EXPECT_TRUE(status.ok()) << status.error_message();
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
}

TEST_F(StageServerTest, GreedyDecodingCancellationAndKvRelease) {
  const auto prompt = ReadIds(FixturePath("refs/tiny-f32.p1.prompt_ids.txt"));
  const auto want = ReadIds(FixturePath("refs/tiny-f32.p1.greedy_ids.txt"));
  ASSERT_EQ(want.size(), 32u);
  auto stub0 = StubFor(cluster->addr0);
  auto stub1 = StubFor(cluster->addr1);

  const uint64_t epoch = Info(*stub0).epoch() + 1;
  Controller c(cluster->addr0, cluster->addr1, epoch);
  ASSERT_TRUE(c.WaitCredit()) << cluster->services->Log("stage0");

  constexpr uint64_t kSession = 1;
  v1::StageDownstream open;
  open.mutable_session_open()->set_session_id(kSession);
  open.mutable_session_open()->set_max_context(512);
  open.mutable_session_open()->mutable_result()->set_kind(v1::RESULT_KIND_ARGMAX);
  ASSERT_TRUE(c.Send(open));

  // Prefill, then 32 greedy single-token runs feeding back the argmax.
  ASSERT_TRUE(c.Send(PlainRun(1, kSession, prompt, 0)));
  auto r = c.Next();
  ASSERT_TRUE(r && r->has_result()) << (r ? r->DebugString() : "no outcome");
  ASSERT_EQ(r->result().run_id(), 1u);
  ASSERT_EQ(r->result().rows_size(), 1);
  EXPECT_EQ(r->result().trace_size(), 2);
  int32_t tok = static_cast<int32_t>(r->result().rows(0).argmax().token_id());
  std::vector<int32_t> got;
  const uint32_t L = static_cast<uint32_t>(prompt.size());
  for (uint32_t s = 0; s < 32; ++s) {
    got.push_back(tok);
    if (s == 31) break;
    ASSERT_TRUE(c.Send(PlainRun(2 + s, kSession, {tok}, L + s)));
    r = c.Next();
    ASSERT_TRUE(r && r->has_result()) << (r ? r->DebugString() : "no outcome");
    ASSERT_EQ(r->result().run_id(), 2 + s);
    tok = static_cast<int32_t>(r->result().rows(0).argmax().token_id());
  }
  EXPECT_EQ(got, want);

  // Cancel run 100 on the Results stream before sending it. The cancel climbs to stage 0 (which
  // does not forward it to the controller); wait until stage 0 has recorded it.
  ASSERT_TRUE(c.Cancel({100}));
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (Stats(*stub0)["cancels_received_total"] < 1 && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_GE(Stats(*stub0)["cancels_received_total"], 1);
  EXPECT_GE(Stats(*stub1)["cancels_received_total"], 1);
  ASSERT_TRUE(c.Send(PlainRun(100, kSession, {tok}, L + 31)));
  r = c.Next();
  ASSERT_TRUE(r && r->has_tombstone()) << (r ? r->DebugString() : "no outcome");
  EXPECT_EQ(r->tombstone().run_id(), 100u);
  EXPECT_EQ(r->tombstone().reason(), v1::TOMBSTONE_REASON_CANCELLED);
  EXPECT_EQ(r->tombstone().stage_index(), 0u);
  auto st0 = Stats(*stub0);
  EXPECT_GE(st0["runs_skipped_total"], 1);
  EXPECT_EQ(st0["runs_computed_total"], 32);
  EXPECT_EQ(st0["sessions_open"], 1);
  EXPECT_GT(st0["kv_blocks_in_use"], 0);
  EXPECT_EQ(Stats(*stub1)["tombstones_forwarded_total"], 1);
  EXPECT_EQ(c.cancels_seen(), 0);  // stage 0 does not send cancels to the controller

  // The shortcut: a Cancel on the Pipeline stream, right before the run, reaches stage 0 first
  // (it is read ahead of the run) and goes nowhere else. It costs no credit: the stage sent none
  // back for it, and the run behind it used the one credit left of a window otherwise in use.
  const double stage1_cancels = Stats(*stub1)["cancels_received_total"];
  ASSERT_TRUE(c.CancelAtStage0({101}));
  ASSERT_TRUE(c.Send(PlainRun(101, kSession, {tok}, L + 31)));
  r = c.Next();
  ASSERT_TRUE(r && r->has_tombstone()) << (r ? r->DebugString() : "no outcome");
  EXPECT_EQ(r->tombstone().run_id(), 101u);
  EXPECT_EQ(r->tombstone().reason(), v1::TOMBSTONE_REASON_CANCELLED);
  EXPECT_EQ(r->tombstone().stage_index(), 0u);
  EXPECT_EQ(Stats(*stub0)["cancels_received_total"], 2);
  EXPECT_EQ(Stats(*stub1)["cancels_received_total"], stage1_cancels);
  EXPECT_EQ(Stats(*stub1)["tombstones_forwarded_total"], 2);
  EXPECT_EQ(c.cancels_seen(), 0);
  EXPECT_TRUE(c.errors().empty());

  // Close the session; a barrier echo proves every stage has applied the close.
  v1::StageDownstream close;
  close.mutable_session_close()->set_session_id(kSession);
  ASSERT_TRUE(c.Send(close));
  v1::StageDownstream barrier;
  barrier.mutable_barrier()->set_barrier_id(77);
  ASSERT_TRUE(c.Send(barrier));
  r = c.Next();
  ASSERT_TRUE(r && r->has_barrier()) << (r ? r->DebugString() : "no outcome");
  EXPECT_EQ(r->barrier().barrier_id(), 77u);

  const v1::StageInfo i0 = Info(*stub0), i1 = Info(*stub1);
  EXPECT_EQ(i0.kv_blocks_in_use(), 0u);
  EXPECT_EQ(i1.kv_blocks_in_use(), 0u);
  EXPECT_EQ(i0.sessions_open(), 0u);
  EXPECT_EQ(i1.sessions_open(), 0u);
  EXPECT_EQ(i0.epoch(), epoch);
  EXPECT_EQ(i1.epoch(), epoch);
  EXPECT_TRUE(i0.is_first());
  EXPECT_FALSE(i0.is_last());
  EXPECT_TRUE(i1.is_last());
  EXPECT_TRUE(i0.upstream_connected());
  EXPECT_TRUE(i0.downstream_connected());
  EXPECT_TRUE(i1.upstream_connected());
  EXPECT_TRUE(i1.results_attached());
  EXPECT_EQ(i0.link_window(), 64u);
  EXPECT_EQ(i0.layer_begin(), 0u);
  EXPECT_EQ(i0.layer_end(), 1u);
  EXPECT_EQ(i1.layer_begin(), 1u);
  EXPECT_EQ(i1.layer_end(), 2u);
  EXPECT_TRUE(c.errors().empty());

  // A stale epoch is refused.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(Clock::now() + std::chrono::seconds(10));
    auto s = stub0->Pipeline(&ctx);
    v1::StageDownstream po;
    po.mutable_open()->set_epoch(epoch);
    po.mutable_open()->set_receiver_stage_index(0);
    po.mutable_open()->set_n_stages(2);
    s->Write(po);
    v1::StageUpstream up;
    EXPECT_FALSE(s->Read(&up));
    EXPECT_EQ(s->Finish().error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }

  auto [ps, rs] = c.Close();
  EXPECT_TRUE(ps.ok()) << ps.error_message();
  EXPECT_TRUE(rs.ok()) << rs.error_message();
}

// A newer epoch supersedes the current one: the old controller's stream ends, every session of
// the old epoch is dropped on both stages, and the new epoch works.
TEST_F(StageServerTest, NewerEpochSupersedesTheOld) {
  const auto prompt = ReadIds(FixturePath("refs/tiny-f32.p1.prompt_ids.txt"));
  const auto want = ReadIds(FixturePath("refs/tiny-f32.p1.greedy_ids.txt"));
  auto stub0 = StubFor(cluster->addr0);
  auto stub1 = StubFor(cluster->addr1);
  const uint64_t epoch = Info(*stub0).epoch() + 1;

  v1::StageDownstream open;
  open.mutable_session_open()->set_session_id(5);
  open.mutable_session_open()->set_max_context(512);
  open.mutable_session_open()->mutable_result()->set_kind(v1::RESULT_KIND_ARGMAX);

  Controller old_c(cluster->addr0, cluster->addr1, epoch);
  ASSERT_TRUE(old_c.WaitCredit());
  ASSERT_TRUE(old_c.Send(open));
  ASSERT_TRUE(old_c.Send(PlainRun(1, 5, prompt, 0)));
  auto r = old_c.Next();
  ASSERT_TRUE(r && r->has_result());
  EXPECT_EQ(Info(*stub0).sessions_open(), 1u);
  EXPECT_EQ(Info(*stub1).sessions_open(), 1u);

  Controller c(cluster->addr0, cluster->addr1, epoch + 1);
  ASSERT_TRUE(c.WaitCredit());
  // The old stream was ended by the stage (the sync transport ends it by cancelling it, after an
  // in-band ABORTED ErrorDetail).
  auto st = old_c.WaitPipeEnded();
  ASSERT_TRUE(st.has_value());
  EXPECT_FALSE(st->ok());
  // Every session of the old epoch is gone on both stages (stage 1 resets once stage 0 has opened
  // its new downstream link, before stage 0 grants its first credit).
  EXPECT_EQ(Info(*stub0).sessions_open(), 0u);
  EXPECT_EQ(Info(*stub1).sessions_open(), 0u);
  EXPECT_EQ(Info(*stub0).kv_blocks_in_use(), 0u);
  EXPECT_EQ(Info(*stub1).kv_blocks_in_use(), 0u);
  EXPECT_EQ(Info(*stub1).epoch(), epoch + 1);

  // The same session id works again in the new epoch.
  ASSERT_TRUE(c.Send(open));
  ASSERT_TRUE(c.Send(PlainRun(1, 5, prompt, 0)));
  r = c.Next();
  ASSERT_TRUE(r && r->has_result()) << (r ? r->DebugString() : "no outcome");
  EXPECT_EQ(static_cast<int32_t>(r->result().rows(0).argmax().token_id()), want[0]);
  v1::StageDownstream close;
  close.mutable_session_close()->set_session_id(5);
  ASSERT_TRUE(c.Send(close));
  auto [ps, rs] = c.Close();
  EXPECT_TRUE(ps.ok()) << ps.error_message();
  EXPECT_TRUE(rs.ok()) << rs.error_message();
  // A graceful end of the link also drops every session.
  EXPECT_EQ(Info(*stub0).sessions_open(), 0u);
  EXPECT_EQ(Info(*stub1).sessions_open(), 0u);
  EXPECT_TRUE(c.errors().empty());
}

// Runs last: stopping stage 1 (SIGTERM, with a link open) ends the controller's stream at stage 0,
// drops stage 0's sessions, turns stage 0's health NOT_SERVING, and new opens fail with
// UNAVAILABLE.
TEST_F(StageServerTest, DownstreamLossEndsThePipeline) {
  const auto prompt = ReadIds(FixturePath("refs/tiny-f32.p1.prompt_ids.txt"));
  auto stub0 = StubFor(cluster->addr0);
  const uint64_t epoch = Info(*stub0).epoch() + 1;
  Controller c(cluster->addr0, cluster->addr1, epoch);
  ASSERT_TRUE(c.WaitCredit());
  v1::StageDownstream open;
  open.mutable_session_open()->set_session_id(9);
  open.mutable_session_open()->set_max_context(512);
  open.mutable_session_open()->mutable_result()->set_kind(v1::RESULT_KIND_ARGMAX);
  ASSERT_TRUE(c.Send(open));
  ASSERT_TRUE(c.Send(PlainRun(1, 9, prompt, 0)));
  auto r = c.Next();
  ASSERT_TRUE(r && r->has_result());
  EXPECT_EQ(Info(*stub0).sessions_open(), 1u);

  // A stage with open streams still exits cleanly on SIGTERM.
  EXPECT_EQ(cluster->services->Stop("stage1"), 0) << cluster->services->Log("stage1");
  auto st = c.WaitPipeEnded();
  ASSERT_TRUE(st.has_value());
  EXPECT_FALSE(st->ok());

  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  bool not_serving = false;
  v1::StageInfo info;
  while (std::chrono::steady_clock::now() < end) {
    info = Info(*stub0);
    grpc::ClientContext ctx;
    ctx.set_deadline(Clock::now() + std::chrono::seconds(2));
    grpc::health::v1::HealthCheckRequest req;
    grpc::health::v1::HealthCheckResponse resp;
    auto health = grpc::health::v1::Health::NewStub(
        grpc::CreateChannel(cluster->addr0, grpc::InsecureChannelCredentials()));
    not_serving = health->Check(&ctx, req, &resp).ok() &&
                  resp.status() == grpc::health::v1::HealthCheckResponse::NOT_SERVING;
    if (not_serving && info.sessions_open() == 0 && !info.upstream_connected()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(not_serving);
  EXPECT_EQ(info.sessions_open(), 0u);
  EXPECT_EQ(info.kv_blocks_in_use(), 0u);
  EXPECT_FALSE(info.upstream_connected());

  grpc::ClientContext ctx;
  ctx.set_deadline(Clock::now() + std::chrono::seconds(10));
  auto s = stub0->Pipeline(&ctx);
  v1::StageDownstream po;
  po.mutable_open()->set_epoch(epoch + 1);
  po.mutable_open()->set_receiver_stage_index(0);
  po.mutable_open()->set_n_stages(2);
  s->Write(po);
  v1::StageUpstream up;
  EXPECT_FALSE(s->Read(&up));
  EXPECT_EQ(s->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
}

// GetStats with include_pipeline asks the downstream stage too; one that cannot be reached is
// listed with its address and an error. --metrics-listen HOST:0 binds a free port and prints it;
// a metrics port that is taken makes the stage exit with an error.
TEST(StageServerStandaloneTest, PipelineStatsAndMetricsListen) {
  const std::string bin = BinPath("pipeinfer-stage");
  const std::string model = FixturePath("models/tiny-f32.gguf");
  const std::string dir = ::testing::TempDir();
  const std::string addr = "127.0.0.1:" + std::to_string(FreePort());
  const std::string nowhere = "127.0.0.1:" + std::to_string(FreePort());
  const std::string log = dir + "/stage_server_test." + std::to_string(getpid()) + ".alone.log";
  ChildProcess s0({bin, "--model", model, "--listen", addr, "--layers", "0:1", "--stage", "0",
                   "--stages", "2", "--downstream", nowhere, "--metrics-listen", "127.0.0.1:0"},
                  log);
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (ReadText(log).find("metrics on http://") == std::string::npos && s0.Running() &&
         std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const std::string text = ReadText(log);
  const size_t at = text.find("metrics on http://127.0.0.1:");
  ASSERT_NE(at, std::string::npos) << text;
  const int mport = std::stoi(text.substr(at + 28));
  EXPECT_GT(mport, 0);

  auto stub = StubFor(addr);
  grpc::ClientContext ctx;
  ctx.set_deadline(Clock::now() + std::chrono::seconds(10));
  v1::StatsRequest req;
  req.set_include_pipeline(true);
  v1::StatsResponse resp;
  ASSERT_TRUE(stub->GetStats(&ctx, req, &resp).ok());
  ASSERT_EQ(resp.services_size(), 2) << resp.DebugString();
  EXPECT_EQ(resp.services(0).service(), "stage0");
  EXPECT_FALSE(resp.services(0).has_error());
  EXPECT_GT(resp.services(0).counters_size(), 0);
  EXPECT_EQ(resp.services(1).service(), "stage1");
  EXPECT_EQ(resp.services(1).address(), nowhere);
  EXPECT_TRUE(resp.services(1).has_error());
  EXPECT_EQ(resp.services(1).counters_size(), 0);

  // The metrics port is taken now: a second stage asking for it fails to start.
  const std::string log2 = log + ".2";
  ChildProcess s1({bin, "--model", model, "--listen", "127.0.0.1:0", "--layers", "1:2", "--stage",
                   "1", "--stages", "2", "--metrics-listen", "127.0.0.1:" + std::to_string(mport)},
                  log2);
  const auto end2 = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (s1.Running() && std::chrono::steady_clock::now() < end2) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const int status = s1.Stop();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << ReadText(log2);
  EXPECT_NE(ReadText(log2).find("/metrics"), std::string::npos) << ReadText(log2);
  if (!HasFailure()) {
    std::remove(log.c_str());
    std::remove(log2.c_str());
  }
}

}  // namespace
}  // namespace pipeinfer
