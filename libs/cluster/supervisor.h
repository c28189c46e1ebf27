// A process supervisor for a local cluster: starts the stage, draft and router binaries (last
// stage first), waits until each one's gRPC health check reports SERVING, restarts the ones that
// crash (supervision.cc) and stops them again (SIGTERM, then SIGKILL). A detached cluster is
// described by a state file that `pipeinfer status` and `pipeinfer down` read: its supervisor (the
// process running this class), and each process with its restarts.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cluster/config.h"
#include "cluster/link_emulation.h"
#include "cluster/port_check.h"

namespace pipeinfer::cluster {

// One supervised process.
struct ProcessInfo {
  std::string name;  // "stage 0", "draft", "router"
  pid_t pid = -1;
  uint64_t start_time = 0;  // /proc/<pid>/stat field 22 (clock ticks since boot)
  std::string address;      // its gRPC address (health checked)
  std::string log;          // stdout + stderr
  // Supervision: restarts so far, how the last run ended ("killed by signal 9"; empty while it
  // never ended) and when the last restart was (seconds since 1970; 0: never).
  int restarts = 0;
  std::string last_exit;
  int64_t last_restart_unix = 0;
};

// The process that supervises a detached cluster (`pipeinfer up --detach` leaves it behind).
struct SupervisorProcess {
  pid_t pid = -1;  // -1: none (a foreground cluster, or a state file of an older version)
  uint64_t start_time = 0;
  std::string log;
};

// The endpoints of a running cluster.
struct Endpoints {
  std::vector<std::string> stages;
  std::vector<std::string> stage_metrics;  // HOST:PORT of each stage's /metrics (empty: none)
  std::string draft_metrics;               // HOST:PORT of the draft's /metrics (empty: none)
  std::string draft;                       // replica 0's draft service
  std::vector<std::string> drafts;         // every replica's draft service
  std::string router_http;                 // empty without a router
  std::string router_grpc;                 // empty without a router
};

struct ClusterState {
  std::vector<ProcessInfo> processes;  // in start order
  Endpoints endpoints;
  std::string log_dir;
  LinkTopology links;  // what link emulation created (empty: none); `down` removes it
  SupervisorProcess supervisor;
  // Security (cluster/config.h): the certificate folder (empty: plaintext) and the router's API
  // keys file (empty: none), for `status` and the clients.
  std::string tls_dir;
  std::string api_keys_file;
};

struct SupervisorOptions {
  std::string bin_dir;  // where pipeinfer-stage, pipeinfer-draft, pipeinfer-router live
  std::string log_dir;  // one <name>.log per process
  bool router = true;   // also start pipeinfer-router
  bool detach = false;  // children must outlive us: no PDEATHSIG, own session
  int health_timeout_s = 60;
  int stop_grace_ms = 10000;
  // When set, the state file is rewritten (atomically) as soon as each process has started, so
  // that `pipeinfer down` can stop what an `up` killed half-way had already started.
  std::string state_path;
  // Link emulation (created by the caller; empty: none): each stage starts in its namespace,
  // listens on every address there, and is reached over the topology's addresses.
  LinkTopology links;
  // Supervision (RestartExited): restart a process that ended with a non-zero status or a
  // signal. A process that exits with status 0 was asked to stop (e.g. a router drained by
  // SIGTERM) and is never restarted.
  bool restart = true;
  // Set by the detached supervisor (the process running this class): its log, recorded in the
  // state file with its own pid.
  std::string supervisor_log;
};

// /tmp/pipeinfer-<uid>, the default home of logs/ and cluster.json.
std::string DefaultRuntimeDir();
// The directory of the running executable (/proc/self/exe).
std::string SelfExeDir();
// Field 22 of /proc/<pid>/stat, or 0 when the process does not exist or is a zombie.
uint64_t ProcessStartTime(pid_t pid);
// True when `pid` exists, is not a zombie, and (when start_time != 0) started at start_time.
bool ProcessAlive(pid_t pid, uint64_t start_time);
// "exited with status 1", "was killed by signal 9" for a waitpid() status.
std::string DescribeExit(int wait_status);

class Supervisor {
 public:
  Supervisor(ClusterConfig config, SupervisorOptions options);
  ~Supervisor();  // stops whatever is still running unless Release() was called
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Starts every process and waits until all are SERVING. `stop_requested` is polled while
  // waiting (set from a signal handler); when it becomes non-zero, Start stops and returns
  // CANCELLED. On failure everything started so far is stopped.
  absl::Status Start(const volatile int* stop_requested);

  // The name of a started process that has exited, or empty when all are running. Reaps it.
  std::string ExitedProcess();

  // Supervision (foreground `up`, and the detached supervisor), called periodically: reaps every
  // started process that has exited and, when it crashed (options.restart), starts it again with
  // the same command line (same address, same log; the previous log is kept as <log>.prev) after
  // a backoff of 1 s, doubling per restart up to 30 s, back to 1 s once the process has run for a
  // minute. Returns one line per event (exited, restarted, restart failed); with a state path,
  // the state file is rewritten after each event (restarts, last exit). Restarts do not wait for
  // SERVING: the draft service reconnects to a restarted stage by itself (and resumes the
  // requests in flight), the router to a restarted draft service.
  std::vector<std::string> RestartExited();
  // Restarts made so far, over all processes.
  int restarts() const { return restart_count_; }

  // Stops every started process, newest first.
  void StopAll();

  // Forgets the processes (they keep running; used after --detach).
  void Release();

  ClusterState State() const;

  // The command line Start uses for stage i of replica r: pipeinfer-stage of options.bin_dir with
  // its model slice, addresses, KV sizing, devices (StageDeviceArgs), TLS and log flags.
  std::vector<std::string> StageArgv(int i, int r = 0) const;

 private:
  // Starts one process (its log truncated); the caller records it.
  absl::StatusOr<ProcessInfo> Launch(const std::string& name, const std::string& address,
                                     const std::vector<std::string>& argv,
                                     const std::string& netns) const;
  // Launch, record it in procs_ and the state file.
  absl::Status Spawn(const std::string& name, const std::string& address,
                     const std::vector<std::string>& argv, const std::string& netns = "");
  void SaveState() const;  // rewrites options_.state_path, if any
  // Where stage i listens, where it is health checked, where its upstream peer reaches it.
  std::string StageListen(int i, int r = 0) const;
  std::string StageEndpoint(int i, int r = 0) const;
  std::string StageMetricsListen(int i, int r = 0) const;
  std::string StageMetricsEndpoint(int i, int r = 0) const;
  // Until `p` reports SERVING on gRPC health and, when `http_address` is given (the router), its
  // HTTP port answers too (the router opens it after its gRPC server).
  absl::Status WaitServing(const ProcessInfo& p, const volatile int* stop_requested,
                           const std::string& http_address = "");

  ClusterConfig config_;
  SupervisorOptions options_;
  std::vector<ProcessInfo> procs_;
  std::vector<bool> reaped_;
  // Per process (parallel to procs_): how to start it again, and its restart state.
  struct Relaunch {
    std::vector<std::string> argv;
    std::string netns;
    std::chrono::steady_clock::time_point due{};  // set while a restart is pending
    std::chrono::steady_clock::time_point started{};
    std::chrono::milliseconds backoff{1000};
  };
  std::vector<Relaunch> relaunch_;
  int restart_count_ = 0;
};

// Writes / reads the state file (JSON).
absl::Status WriteState(const ClusterState& state, const std::string& path);
absl::StatusOr<ClusterState> ReadState(const std::string& path);

// Stops the processes of a state file that still are the processes that were started (same pid
// and start time), newest first: SIGTERM, then SIGKILL after `grace_ms`. Processes that are gone
// or were replaced are reported on `report` lines and left alone.
absl::Status StopState(const ClusterState& state, int grace_ms, std::vector<std::string>* report);

// Stops the supervisor of a detached cluster, if it runs: SIGTERM (it exits without touching the
// processes; one still starting the cluster stops what it started), SIGKILL after `grace_ms` + 15
// s. Call before StopState, so that nothing is restarted behind it, and read the state file again
// afterwards (the supervisor may have restarted a process meanwhile).
absl::Status StopSupervisor(const ClusterState& state, int grace_ms,
                            std::vector<std::string>* report);

}  // namespace pipeinfer::cluster
