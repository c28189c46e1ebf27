// A fixture for tests that start clusters with `pipeinfer up --detach`: a scratch folder per test
// (dir_) and the state file of its cluster (state_). TearDown always stops that cluster, even after
// an assertion failed half-way, and keeps the folder (with the processes' logs) only on failure.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <utility>
#include <vector>

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

  // `pipeinfer up --detach <args>` on free ports (`ports` consecutive ones from --base-port, and
  // --http-port), with this test's state file and log folder; up to three tries, since a port can
  // be taken between the check and the bind, unless `final_failure` says a failure would repeat.
  // Sets base_port_ and http_port_.
  CommandResult UpOnFreePorts(
      const std::vector<std::string>& args, int ports,
      const std::function<bool(const CommandResult&)>& final_failure = nullptr) {
    CommandResult r;
    for (int attempt = 0; attempt < 3; ++attempt) {
      base_port_ = FreePortRange(ports);
      http_port_ = FreePortRange(1);
      std::vector<std::string> argv = {BinPath("pipeinfer"), "up"};
      argv.insert(argv.end(), args.begin(), args.end());
      argv.insert(argv.end(), {"--base-port", std::to_string(base_port_), "--http-port",
                               std::to_string(http_port_), "--detach", "--state", state_,
                               "--log-dir", dir_ + "/logs"});
      r = RunCmd(argv, std::chrono::seconds(120));
      if (r.exit_code == 0 || (final_failure && final_failure(r))) return r;
      std::fprintf(stderr, "up failed (attempt %d):\n%s\n", attempt, r.output.c_str());
    }
    return r;
  }

  std::string dir_;
  std::string state_;
  int base_port_ = 0;
  int http_port_ = 0;

 private:
  std::string name_;
};

}  // namespace pipeinfer::testing
