// A fixture for tests that start clusters with `pipeinfer up --detach`: a scratch folder per test
// (dir_) and the state file of its cluster (state_). TearDown always stops that cluster, even after
// an assertion failed half-way, and keeps the folder (with the processes' logs) only on failure.
#pragma once

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <utility>

#include <gtest/gtest.h>

#include "testing/cluster_harness.h"
#include "testing/fixtures.h"

namespace pipeinfer::testing {

class DetachedClusterTest : public ::testing::Test {
 protected:
  // `name` prefixes the scratch folder, e.g. "bench_cli_test".
  explicit DetachedClusterTest(std::string name) : name_(std::move(name)) {}

  void SetUp() override {
    dir_ = ::testing::TempDir() + "/" + name_ + "." + std::to_string(getpid()) + "." +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::create_directories(dir_);
    state_ = dir_ + "/cluster.json";
  }
  void TearDown() override {
    if (std::filesystem::exists(state_)) {
      RunCmd({BinPath("pipeinfer"), "down", "--state", state_}, std::chrono::seconds(60));
    }
    if (!HasFailure()) std::filesystem::remove_all(dir_);
  }

  std::string dir_;
  std::string state_;

 private:
  std::string name_;
};

}  // namespace pipeinfer::testing
