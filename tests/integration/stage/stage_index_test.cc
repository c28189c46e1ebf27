// How a stage learns its index when one command line serves every stage (a Kubernetes
// StatefulSet): PIPEINFER_STAGE, --stage-from-hostname (the trailing -N of the host name), and
// "{next}" in --downstream; checked on real pipeinfer-stage processes through Stage.GetInfo and
// the stages' health (a non-last stage is SERVING only once its downstream link is up).
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "pipeinfer/v1/stage.grpc.pb.h"
#include "testing/cluster_harness.h"
#include "testing/fixtures.h"
#include "testing/grpc_health.h"
#include "testing/process.h"

namespace pipeinfer {
namespace {

using pipeinfer::testing::BinPath;
using pipeinfer::testing::ChildProcess;
using pipeinfer::testing::FixturePath;
using pipeinfer::testing::FreePort;
using pipeinfer::testing::ReadText;
using pipeinfer::testing::RunCmd;
using pipeinfer::testing::WaitServing;

v1::StageInfo Info(const std::string& addr) {
  auto stub = v1::Stage::NewStub(grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::StageInfo info;
  EXPECT_TRUE(stub->GetInfo(&ctx, v1::StageInfoRequest(), &info).ok());
  return info;
}

std::string Log(const std::string& name) {
  return ::testing::TempDir() + "/stage_index_test." + std::to_string(getpid()) + "." + name +
         ".log";
}

// The same arguments for every stage, as a StatefulSet gives them; only the environment differs.
std::vector<std::string> Argv(const std::string& env, int port) {
  return {"/usr/bin/env", env, BinPath("pipeinfer-stage"), "--model",
          FixturePath("models/tiny-f32.gguf"), "--stages", "2", "--kv-tokens", "512", "--listen",
          "127.0.0.1:" + std::to_string(port),
          // stage 0: 127.0.0.1:<port 1>; stage 1 (the last) ignores it.
          "--downstream", "127.0.0.{next}:" + std::to_string(port + 1)};
}

TEST(StageIndexTest, EnvironmentAndNextPlaceholderChainTwoStages) {
  int port = 0;
  for (int tries = 0; tries < 50; ++tries) {
    port = FreePort();
    if (pipeinfer::testing::PortFree(port + 1)) break;
  }
  // Stage 0's downstream is 127.0.0.{next}:port+1, which only {next} = 1 makes the last stage's
  // address 127.0.0.1:port+1 (the test's stage 1).
  const std::string log1 = Log("s1"), log0 = Log("s0");
  ChildProcess s1(Argv("PIPEINFER_STAGE=1", port + 1), log1);
  ASSERT_TRUE(
      WaitServing("127.0.0.1:" + std::to_string(port + 1), log1, s1, std::chrono::seconds(30)))
      << ReadText(log1);
  ChildProcess s0(Argv("PIPEINFER_STAGE=0", port), log0);
  ASSERT_TRUE(WaitServing("127.0.0.1:" + std::to_string(port), log0, s0, std::chrono::seconds(30)))
      << ReadText(log0);
  const v1::StageInfo i0 = Info("127.0.0.1:" + std::to_string(port));
  const v1::StageInfo i1 = Info("127.0.0.1:" + std::to_string(port + 1));
  EXPECT_EQ(i0.stage_index(), 0u);
  EXPECT_EQ(i1.stage_index(), 1u);
  EXPECT_TRUE(i0.is_first() && !i0.is_last());
  EXPECT_TRUE(i1.is_last());
  EXPECT_EQ(i0.layer_end(), i1.layer_begin());
  EXPECT_EQ(i1.layer_end(), i1.n_layer());
  EXPECT_NE(ReadText(log0).find("downstream 127.0.0.1:" + std::to_string(port + 1)),
            std::string::npos)
      << ReadText(log0);
  EXPECT_EQ(s0.Stop(), 0);
  EXPECT_EQ(s1.Stop(), 0);
  std::remove(log0.c_str());
  std::remove(log1.c_str());
}

TEST(StageIndexTest, BadIndexSourcesFailReadably) {
  const int port = FreePort();
  auto r = RunCmd(Argv("PIPEINFER_STAGE=one", port), std::chrono::seconds(30));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("PIPEINFER_STAGE must be a stage index"), std::string::npos) << r.output;
  r = RunCmd(Argv("PIPEINFER_STAGE=2", port), std::chrono::seconds(30));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("--stage must be less than --stages"), std::string::npos) << r.output;
}

// A GPU stage on a machine without a CUDA device (or a build without the CUDA backend) stops at
// start-up with a readable error; a malformed device is refused the same way.
TEST(StageIndexTest, DeviceErrorsFailReadably) {
  if (access("/dev/nvidia0", F_OK) == 0) {
    GTEST_SKIP() << "this machine has an NVIDIA device (the cuda tests cover GPU stages)";
  }
  const int port = FreePort();
  std::vector<std::string> argv = {BinPath("pipeinfer-stage"),
                                   "--model",
                                   FixturePath("models/tiny-f32.gguf"),
                                   "--stages",
                                   "1",
                                   "--stage",
                                   "0",
                                   "--kv-tokens",
                                   "512",
                                   "--listen",
                                   "127.0.0.1:" + std::to_string(port),
                                   "--device",
                                   "cuda:0"};
  auto r = RunCmd(argv, std::chrono::seconds(30));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("no CUDA device"), std::string::npos) << r.output;
  argv.back() = "tpu:0";
  r = RunCmd(argv, std::chrono::seconds(30));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("unknown device 'tpu:0'"), std::string::npos) << r.output;
  argv.back() = "cuda:0";
  argv.insert(argv.end() - 2, {"--devices", "cpu,cpu"});
  r = RunCmd(argv, std::chrono::seconds(30));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("excludes"), std::string::npos) << r.output;
}

// --stage-from-hostname in a UTS namespace of its own (needs root, as CI has: unshare -u).
TEST(StageIndexTest, StageFromHostname) {
  if (RunCmd({"/usr/bin/unshare", "-u", "true"}, std::chrono::seconds(10)).exit_code != 0) {
    GTEST_SKIP() << "unshare -u is not permitted here (needs root)";
  }
  const int port = FreePort();
  const std::string bin = BinPath("pipeinfer-stage"), model = FixturePath("models/tiny-f32.gguf");
  const std::string args = " --model " + model + " --stages 2 --kv-tokens 512 --listen 127.0.0.1:" +
                           std::to_string(port) + " --downstream unused-{next}:1";
  const std::string log = Log("host");
  ChildProcess s({"/usr/bin/unshare", "-u", "/bin/sh", "-c",
                  "hostname pipeinfer-stage-1 && exec " + bin + " --stage-from-hostname" + args},
                 log);
  ASSERT_TRUE(WaitServing("127.0.0.1:" + std::to_string(port), log, s, std::chrono::seconds(30)))
      << ReadText(log);
  EXPECT_EQ(Info("127.0.0.1:" + std::to_string(port)).stage_index(), 1u);
  EXPECT_EQ(s.Stop(), 0);
  std::remove(log.c_str());
  const auto bad = RunCmd({"/usr/bin/unshare", "-u", "/bin/sh", "-c",
                           "hostname stage && exec " + bin + " --stage-from-hostname" + args},
                          std::chrono::seconds(30));
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.output.find("host name 'stage' does not end in -<number>"), std::string::npos)
      << bad.output;
}

}  // namespace
}  // namespace pipeinfer
