// Helpers for integration tests that drive the `pipeinfer` CLI against real processes: run a
// command with a timeout and capture its output, find a range of free loopback ports, and a
// detached local cluster (`pipeinfer up --detach` / `pipeinfer down`) that never outlives the test.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "testing/fixtures.h"
#include "testing/process.h"

namespace pipeinfer::testing {

struct CommandResult {
  int exit_code = -1;  // -1 when killed or timed out
  std::string output;  // stdout + stderr
};

// Runs argv to completion (killing it after `timeout`), capturing stdout and stderr.
inline CommandResult RunCmd(const std::vector<std::string>& argv, std::chrono::seconds timeout) {
  static int counter = 0;
  const std::string log = std::filesystem::temp_directory_path().string() + "/pipeinfer_cmd." +
                          std::to_string(getpid()) + "." + std::to_string(counter++) + ".out";
  CommandResult r;
  int status = 0;
  {
    ChildProcess p(argv, log);
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (p.Running() && std::chrono::steady_clock::now() < end) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    status = p.Stop();
  }
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  r.output = ReadText(log);
  std::remove(log.c_str());
  return r;
}

inline bool PortFree(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  close(fd);
  return ok;
}

// A base port with `n` free consecutive ports after it (0 if none found).
inline int FreePortRange(int n) {
  static std::mt19937 rng(std::random_device{}());
  for (int attempt = 0; attempt < 200; ++attempt) {
    const int base = std::uniform_int_distribution<int>(20000, 60000)(rng);
    bool ok = true;
    for (int i = 0; i < n && ok; ++i) ok = PortFree(base + i);
    if (ok) return base;
  }
  return 0;
}

// The last line of `output` that parses as a non-empty list of integers (the ids printed by
// `--print-ids`, among log lines).
inline std::vector<int32_t> LastIdsLine(const std::string& output) {
  std::vector<int32_t> ids;
  std::istringstream lines(output);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line.find_first_not_of("0123456789 ") != std::string::npos) continue;
    ids = ParseIds(line);
  }
  return ids;
}

// A detached local cluster in `dir`, stopped by Down() or the destructor.
class LocalCluster {
 public:
  explicit LocalCluster(std::string dir) : dir_(std::move(dir)) {
    std::filesystem::create_directories(dir_);
  }
  ~LocalCluster() { Down(); }
  LocalCluster(const LocalCluster&) = delete;
  LocalCluster& operator=(const LocalCluster&) = delete;

  // `pipeinfer up --detach` with `args` (model, stages, mode, ...), on fresh ports; retries on a
  // port race. The router's gRPC address is base + stages + 1.
  CommandResult Up(int stages, const std::vector<std::string>& args) {
    CommandResult r;
    for (int attempt = 0; attempt < 3; ++attempt) {
      base_port_ = FreePortRange(stages + 2);
      const int http = FreePortRange(1);
      std::vector<std::string> argv = {BinPath("pipeinfer"),
                                       "up",
                                       "--stages",
                                       std::to_string(stages),
                                       "--base-port",
                                       std::to_string(base_port_),
                                       "--http-port",
                                       std::to_string(http),
                                       "--metrics-base-port",
                                       "-1",
                                       "--detach",
                                       "--state",
                                       state(),
                                       "--log-dir",
                                       dir_ + "/logs"};
      argv.insert(argv.end(), args.begin(), args.end());
      r = RunCmd(argv, std::chrono::seconds(90));
      if (r.exit_code == 0) {
        stages_ = stages;
        up_ = true;
        return r;
      }
      if (r.output.find("address") == std::string::npos &&
          r.output.find("listen") == std::string::npos) {
        return r;  // not a port race: report it
      }
    }
    return r;
  }

  void Down() {
    if (!up_) return;
    RunCmd({BinPath("pipeinfer"), "down", "--state", state()}, std::chrono::seconds(60));
    up_ = false;
  }

  std::string state() const { return dir_ + "/cluster.json"; }
  std::string StageAddress(int i) const { return "127.0.0.1:" + std::to_string(base_port_ + i); }
  std::string DraftAddress() const { return "127.0.0.1:" + std::to_string(base_port_ + stages_); }
  std::string RouterGrpcAddress() const {
    return "127.0.0.1:" + std::to_string(base_port_ + stages_ + 1);
  }

 private:
  std::string dir_;
  int base_port_ = 0;
  int stages_ = 0;
  bool up_ = false;
};

}  // namespace pipeinfer::testing
