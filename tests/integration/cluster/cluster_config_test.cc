// The cluster configuration's per-stage devices (cluster/config.h `devices`): both YAML forms, the
// `up --stage-devices` text, validation (list length, entries engine::ParseDevices refuses) and
// the --device / --devices flags in the stage command lines the supervisor builds. Expected values
// are written out literally. Nothing is started.
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "cluster/config.h"
#include "cluster/supervisor.h"
#include "testing/fixtures.h"

namespace pipeinfer {
namespace {

namespace fs = std::filesystem;
using pipeinfer::testing::FixturePath;
using Strings = std::vector<std::string>;

class ClusterDevicesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/cluster_config_test." + std::to_string(getpid());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Loads a config of the tiny model with `stages` stages and the given `devices:` YAML text.
  absl::StatusOr<cluster::ClusterConfig> Load(int stages, const std::string& devices_yaml) {
    const std::string path = dir_ + "/cluster.yaml";
    std::ofstream(path) << "model: " << FixturePath("models/tiny-f32.gguf")
                        << "\nstages: " << stages << "\ndevices: " << devices_yaml << "\n";
    return cluster::LoadClusterConfig(path);
  }

  // A config of the tiny model with `stages` stages and `devices`.
  static cluster::ClusterConfig Config(int stages, Strings devices) {
    cluster::ClusterConfig c;
    c.model = FixturePath("models/tiny-f32.gguf");
    c.stages = stages;
    c.devices = std::move(devices);
    return c;
  }

  std::string dir_;
};

// The value that follows `flag` in `argv`, "<absent>" when the flag is not there, "<twice>" when
// it is there more than once.
std::string FlagValue(const Strings& argv, const std::string& flag) {
  const auto n = std::count(argv.begin(), argv.end(), flag);
  if (n == 0) return "<absent>";
  if (n > 1) return "<twice>";
  auto it = std::find(argv.begin(), argv.end(), flag);
  return it + 1 == argv.end() ? "<no value>" : *(it + 1);
}

TEST_F(ClusterDevicesTest, YamlStringIsEveryStagesDevice) {
  auto c = Load(2, "cuda:0");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->devices, Strings({"cuda:0"}));
  EXPECT_TRUE(cluster::ValidateClusterConfig(*c).ok()) << cluster::ValidateClusterConfig(*c);
  EXPECT_EQ(cluster::StageDeviceArgs(*c, 0), Strings({"--device", "cuda:0"}));
  EXPECT_EQ(cluster::StageDeviceArgs(*c, 1), Strings({"--device", "cuda:0"}));

  c = Load(3, "\"cuda:0,cuda:1\"");  // a tensor-parallel list for every stage
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->devices, Strings({"cuda:0,cuda:1"}));
  EXPECT_TRUE(cluster::ValidateClusterConfig(*c).ok()) << cluster::ValidateClusterConfig(*c);
  EXPECT_EQ(cluster::StageDeviceArgs(*c, 2), Strings({"--devices", "cuda:0,cuda:1"}));
}

TEST_F(ClusterDevicesTest, YamlListHasOneEntryPerStage) {
  // Flow list, with and without quotes (a plain `cuda:0` is a string in YAML too).
  auto c = Load(3, "[cpu, cuda:0, \"cuda:0,cuda:1\"]");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->devices, Strings({"cpu", "cuda:0", "cuda:0,cuda:1"}));
  EXPECT_TRUE(cluster::ValidateClusterConfig(*c).ok()) << cluster::ValidateClusterConfig(*c);
  EXPECT_EQ(cluster::StageDeviceArgs(*c, 0), Strings({"--device", "cpu"}));
  EXPECT_EQ(cluster::StageDeviceArgs(*c, 1), Strings({"--device", "cuda:0"}));
  EXPECT_EQ(cluster::StageDeviceArgs(*c, 2), Strings({"--devices", "cuda:0,cuda:1"}));

  // Block list.
  c = Load(2, "\n  - cpu\n  - cuda:1");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->devices, Strings({"cpu", "cuda:1"}));

  // Not a string or a list of strings.
  c = Load(2, "{stage0: cpu}");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("'devices' must be a string"), std::string::npos)
      << c.status();
  c = Load(2, "[cpu, [cuda:0]]");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("every 'devices' entry must be a string"), std::string::npos)
      << c.status();
}

TEST_F(ClusterDevicesTest, NoDevicesPassesNoFlag) {
  auto c = Load(2, "[]");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->devices.empty());
  EXPECT_TRUE(cluster::ValidateClusterConfig(*c).ok());
  EXPECT_TRUE(cluster::StageDeviceArgs(*c, 0).empty());
  EXPECT_TRUE(cluster::StageDeviceArgs(Config(2, {}), 1).empty());
}

TEST_F(ClusterDevicesTest, StageDevicesFlagText) {
  EXPECT_EQ(cluster::SplitStageDevices("cpu;cuda:0"), Strings({"cpu", "cuda:0"}));
  EXPECT_EQ(cluster::SplitStageDevices(" cpu ; cuda:0,cuda:1 "), Strings({"cpu", "cuda:0,cuda:1"}));
  EXPECT_EQ(cluster::SplitStageDevices("cuda:2"), Strings({"cuda:2"}));
  EXPECT_EQ(cluster::SplitStageDevices("cpu;"), Strings({"cpu", ""}));  // refused by Validate
  EXPECT_TRUE(cluster::SplitStageDevices("").empty());
  EXPECT_TRUE(cluster::SplitStageDevices("  ").empty());
}

TEST_F(ClusterDevicesTest, ListLengthMustBeOneOrTheStageCount) {
  EXPECT_TRUE(cluster::ValidateClusterConfig(Config(3, {"cpu"})).ok());
  EXPECT_TRUE(cluster::ValidateClusterConfig(Config(3, {"cpu", "cpu", "cuda:0"})).ok());
  const absl::Status st = cluster::ValidateClusterConfig(Config(3, {"cpu", "cuda:0"}));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("devices has 2 entries but stages is 3"), std::string::npos) << st;
  EXPECT_FALSE(cluster::ValidateClusterConfig(Config(1, {"cpu", "cpu"})).ok());
}

TEST_F(ClusterDevicesTest, BadEntriesAreNamed) {
  struct Case {
    Strings devices;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"cpu", "gpu:0"}, "devices 'gpu:0' of stage 1: unknown device 'gpu:0'"},
      {{"cuda:-1", "cpu"}, "devices 'cuda:-1' of stage 0: unknown device"},
      {{"cpu", ""}, "devices '' of stage 1: unknown device ''"},
      {{"cpu,cuda:0"},
       "devices 'cpu,cuda:0' of every stage: devices 'cpu,cuda:0' mix cpu and cuda"},
      {{"cpu", "cuda:1,cuda:1"}, "of stage 1: device cuda:1 listed twice"},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.message);
    const absl::Status st = cluster::ValidateClusterConfig(Config(2, k.devices));
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find(k.message), std::string::npos) << st;
  }
}

TEST_F(ClusterDevicesTest, StageCommandLinesCarryTheDevices) {
  cluster::SupervisorOptions o;
  o.bin_dir = "/opt/pi/bin";
  {
    cluster::ClusterConfig c = Config(2, {"cpu", "cuda:0,cuda:1"});
    c.replicas = 2;  // every replica's stage i gets entry i
    cluster::Supervisor sup(c, o);
    for (int r = 0; r < 2; ++r) {
      SCOPED_TRACE(r);
      const Strings s0 = sup.StageArgv(0, r), s1 = sup.StageArgv(1, r);
      ASSERT_FALSE(s0.empty());
      EXPECT_EQ(s0[0], "/opt/pi/bin/pipeinfer-stage");
      EXPECT_EQ(FlagValue(s0, "--stage"), "0");
      EXPECT_EQ(FlagValue(s0, "--device"), "cpu");
      EXPECT_EQ(FlagValue(s0, "--devices"), "<absent>");
      EXPECT_EQ(FlagValue(s1, "--stage"), "1");
      EXPECT_EQ(FlagValue(s1, "--devices"), "cuda:0,cuda:1");
      EXPECT_EQ(FlagValue(s1, "--device"), "<absent>");
    }
  }
  {
    cluster::Supervisor sup(Config(3, {"cuda:1"}), o);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(FlagValue(sup.StageArgv(i), "--device"), "cuda:1") << i;
  }
  {
    cluster::Supervisor sup(Config(2, {}), o);  // the default: no flag, the stage's CPU
    for (int i = 0; i < 2; ++i) {
      EXPECT_EQ(FlagValue(sup.StageArgv(i), "--device"), "<absent>") << i;
      EXPECT_EQ(FlagValue(sup.StageArgv(i), "--devices"), "<absent>") << i;
    }
  }
}

}  // namespace
}  // namespace pipeinfer
