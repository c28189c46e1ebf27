// The service processes of an integration-test suite (stages, draft service, router), started
// once for the suite. Each process logs to <TempDir>/<suite>.<pid>.<attempt>.<name>.log and must
// answer SERVING on the gRPC health service before the next one starts. A start that fails is
// usually a port race, so StartServiceGroup() builds the whole group again on fresh ports.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "testing/fixtures.h"
#include "testing/grpc_health.h"
#include "testing/process.h"

namespace pipeinfer::testing {

// "127.0.0.1:<a free port>".
inline std::string FreeLoopbackAddress() { return "127.0.0.1:" + std::to_string(FreePort()); }

class ServiceGroup {
 public:
  ServiceGroup(const std::string& suite, int attempt)
      : prefix_(::testing::TempDir() + "/" + suite + "." + std::to_string(getpid()) + "." +
                std::to_string(attempt) + ".") {}
  ~ServiceGroup() { StopAll(); }
  ServiceGroup(const ServiceGroup&) = delete;
  ServiceGroup& operator=(const ServiceGroup&) = delete;

  // Starts `argv` as `name` and waits until `address` is SERVING (false if it exits or times out).
  bool Start(const std::string& name, std::vector<std::string> argv, std::string address) {
    auto& e = entries_.emplace_back();
    e.name = name;
    e.log = prefix_ + name + ".log";
    e.argv = std::move(argv);
    e.address = std::move(address);
    return Launch(e);
  }
  // Starts `name` again with the same command line, address and log (after Stop).
  bool Restart(const std::string& name) { return Launch(Find(name)); }
  // SIGTERM (then SIGKILL after 5 s); the wait status, 0 for a clean exit.
  int Stop(const std::string& name) { return Find(name).process->Stop(); }
  // True while `name` has not exited (a crash under load shows up here before Stop).
  bool Running(const std::string& name) {
    Entry& e = Find(name);
    return e.process && e.process->Running();
  }
  std::string Log(const std::string& name) { return ReadText(Find(name).log); }
  // Every process's log, labelled.
  std::string Logs() const {
    std::string out;
    for (const auto& e : entries_) out += e.name + ":\n" + ReadText(e.log) + "\n";
    return out;
  }
  // Stops whatever still runs, in reverse start order.
  void StopAll() {
    for (auto it = entries_.rbegin(); it != entries_.rend(); ++it) {
      if (it->process) it->process->Stop();
    }
  }
  // Stops everything; keeps the logs when a test of the suite failed.
  void Finish() {
    StopAll();
    if (::testing::UnitTest::GetInstance()->failed_test_count() != 0) return;
    for (const auto& e : entries_) std::remove(e.log.c_str());
  }

 private:
  struct Entry {
    std::string name, log, address;
    std::vector<std::string> argv;
    std::unique_ptr<ChildProcess> process;
  };

  bool Launch(Entry& e) {
    e.process = std::make_unique<ChildProcess>(e.argv, e.log);
    return WaitServing(e.address, e.log, *e.process, std::chrono::seconds(30));
  }
  Entry& Find(const std::string& name) {
    for (auto& e : entries_) {
      if (e.name == name) return e;
    }
    ADD_FAILURE() << "no service named " << name;
    std::abort();
  }

  std::string prefix_;
  std::vector<Entry> entries_;
};

// Calls `start(group)` on a fresh group up to three times, until it returns true (it should pick
// new ports on each call); nullptr when every attempt failed, after printing the logs.
template <typename StartFn>
std::unique_ptr<ServiceGroup> StartServiceGroup(const std::string& suite, StartFn start) {
  for (int attempt = 0; attempt < 3; ++attempt) {
    auto group = std::make_unique<ServiceGroup>(suite, attempt);
    if (start(*group)) return group;
    std::fprintf(stderr, "%s: processes did not become SERVING (attempt %d)\n%s", suite.c_str(),
                 attempt, group->Logs().c_str());
  }
  return nullptr;
}

// The command line of pipeinfer-stage number `index` of `stages`, holding its share of `model` and
// listening on `listen`, followed by `extra`.
inline std::vector<std::string> StageArgv(const std::string& model, const std::string& listen,
                                          const std::string& index, int stages,
                                          const std::vector<std::string>& extra = {}) {
  std::vector<std::string> argv = {BinPath("pipeinfer-stage"),
                                   "--model",
                                   model,
                                   "--listen",
                                   listen,
                                   "--stage",
                                   index,
                                   "--stages",
                                   std::to_string(stages)};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

// The addresses of a two-stage pipeline and the draft service that drives it.
struct DraftPipeline {
  std::string stage0, stage1, draft;
};

// Starts stage 1, stage 0 (with `stage0_flags` added) and a draft service on fresh loopback
// ports, each stage holding half of `model` with a 2048-token KV cache.
inline bool StartDraftPipeline(ServiceGroup& g, const std::string& model, DraftPipeline& p,
                               const std::vector<std::string>& stage0_flags = {}) {
  p = {FreeLoopbackAddress(), FreeLoopbackAddress(), FreeLoopbackAddress()};
  auto stage = [&](const std::string& listen, const std::string& index) {
    return StageArgv(model, listen, index, 2, {"--kv-tokens", "2048"});
  };
  std::vector<std::string> stage0 = stage(p.stage0, "0");
  stage0.insert(stage0.end(), {"--downstream", p.stage1, "--connect-timeout-ms", "500"});
  stage0.insert(stage0.end(), stage0_flags.begin(), stage0_flags.end());
  return g.Start("stage1", stage(p.stage1, "1"), p.stage1) && g.Start("stage0", stage0, p.stage0) &&
         g.Start("draft",
                 {BinPath("pipeinfer-draft"), "--listen", p.draft, "--stage0", p.stage0, "--last",
                  p.stage1, "--model", model},
                 p.draft);
}

}  // namespace pipeinfer::testing
