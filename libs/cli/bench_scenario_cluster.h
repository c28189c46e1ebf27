// The clusters of `pipeinfer bench --scenario`: each one started as a child `pipeinfer up
// --detach` (this same binary, /proc/self/exe) on free ports with its own state file and log
// folder, and stopped with `pipeinfer down`, also when the runner fails or gets SIGINT, SIGTERM
// or SIGHUP. Private to the cli library.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pipeinfer::cli {

// Runs this binary with `args` (no program name), stdout and stderr appended to `log`; its exit
// status (128 + signal when killed).
absl::StatusOr<int> RunSelf(const std::vector<std::string>& args, const std::string& log);

// Installs the signal handlers once: on SIGINT, SIGTERM or SIGHUP a watcher thread stops a `up`
// still starting, brings the running cluster down and exits with 128 + the signal.
void InstallScenarioSignalGuard();

// After a signal: blocks until the watcher has stopped the cluster and ended the process, so that
// no further row starts. Returns at once otherwise.
void WaitIfInterrupted();

class LocalCluster {
 public:
  // `up_args`: the cluster's flags for `pipeinfer up` (model, stages, emulation, knobs); ports,
  // --detach, --state and --log-dir are added here. Up to three tries on fresh ports.
  static absl::StatusOr<std::unique_ptr<LocalCluster>> Up(const std::vector<std::string>& up_args,
                                                          int stages, const std::string& state,
                                                          const std::string& log_dir);
  ~LocalCluster();  // Down(), errors printed
  LocalCluster(const LocalCluster&) = delete;
  LocalCluster& operator=(const LocalCluster&) = delete;

  absl::Status Down();
  const std::string& router() const { return router_; }
  const std::string& draft() const { return draft_; }

 private:
  LocalCluster() = default;
  std::string state_, log_dir_, router_, draft_;
  bool up_ = false;
};

}  // namespace pipeinfer::cli
