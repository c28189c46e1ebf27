// Supervision of a started cluster: noticing processes that exited and restarting the crashed ones
// with backoff (foreground `up` and the detached supervisor), and stopping a cluster, from the
// Supervisor that started it or from its state file (`pipeinfer down`).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cluster/supervisor.h"

namespace pipeinfer::cluster {

using Clock = std::chrono::steady_clock;

std::string Supervisor::ExitedProcess() {
  for (size_t i = 0; i < procs_.size(); ++i) {
    if (reaped_[i]) continue;
    int status = 0;
    if (waitpid(procs_[i].pid, &status, WNOHANG) == procs_[i].pid) {
      reaped_[i] = true;
      return absl::StrCat(procs_[i].name, " (pid ", procs_[i].pid, ") ", DescribeExit(status),
                          "; see its log ", procs_[i].log);
    }
  }
  return "";
}

std::vector<std::string> Supervisor::RestartExited() {
  constexpr std::chrono::milliseconds kFirst{1000}, kMax{30000};
  constexpr std::chrono::seconds kStable{60};
  std::vector<std::string> report;
  const auto now = Clock::now();
  for (size_t i = 0; i < procs_.size(); ++i) {
    Relaunch& r = relaunch_[i];
    ProcessInfo& p = procs_[i];
    if (!reaped_[i]) {
      int status = 0;
      if (waitpid(p.pid, &status, WNOHANG) != p.pid) {
        if (now - r.started > kStable) r.backoff = kFirst;
        continue;
      }
      reaped_[i] = true;
      p.last_exit = DescribeExit(status);
      const bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      if (clean || !options_.restart) {  // `due` stays unset: it stays down
        report.push_back(absl::StrCat(p.name, " (pid ", p.pid, ") ", p.last_exit,
                                      clean ? "; not restarted (a clean exit is a requested stop)"
                                            : "; not restarted (restarts are off)",
                                      " (its log: ", p.log, ")"));
        continue;
      }
      r.due = now + r.backoff;
      report.push_back(absl::StrCat(p.name, " (pid ", p.pid, ") ", p.last_exit,
                                    "; restarting it in ", r.backoff.count() / 1000.0,
                                    " s (its log: ", p.log, ")"));
      continue;
    }
    if (r.due == Clock::time_point{} || now < r.due) continue;
    std::error_code ec;
    std::filesystem::rename(p.log, p.log + ".prev", ec);
    absl::StatusOr<ProcessInfo> fresh = Launch(p.name, p.address, r.argv, r.netns);
    if (!fresh.ok()) {
      r.due = now + r.backoff;
      report.push_back(absl::StrCat("restarting ", p.name, " failed: ", fresh.status().message()));
      continue;
    }
    // The new process takes the old one's place (start order is kept).
    fresh->restarts = p.restarts + 1;
    fresh->last_exit = p.last_exit;
    fresh->last_restart_unix = static_cast<int64_t>(std::time(nullptr));
    p = *std::move(fresh);
    reaped_[i] = false;
    r.due = {};
    r.started = now;
    r.backoff = std::min(r.backoff * 2, kMax);
    ++restart_count_;
    report.push_back(absl::StrCat("restarted ", p.name, " (pid ", p.pid, "; its restarts: ",
                                  p.restarts, "; restarts so far: ", restart_count_, ")"));
  }
  if (!report.empty()) SaveState();
  return report;
}

void Supervisor::StopAll() {
  for (size_t i = procs_.size(); i-- > 0;) {
    if (!reaped_[i]) kill(procs_[i].pid, SIGTERM);
  }
  const auto end = Clock::now() + std::chrono::milliseconds(options_.stop_grace_ms);
  while (true) {
    bool all = true;
    for (size_t i = 0; i < procs_.size(); ++i) {
      if (reaped_[i]) continue;
      int status = 0;
      const pid_t r = waitpid(procs_[i].pid, &status, WNOHANG);
      if (r == procs_[i].pid || r < 0) {
        reaped_[i] = true;
      } else {
        all = false;
      }
    }
    if (all) break;
    if (Clock::now() > end) {
      for (size_t i = 0; i < procs_.size(); ++i) {
        if (reaped_[i]) continue;
        std::fprintf(stderr, "%s (pid %d) did not stop within %d ms; killing it\n",
                     procs_[i].name.c_str(), procs_[i].pid, options_.stop_grace_ms);
        kill(procs_[i].pid, SIGKILL);
        waitpid(procs_[i].pid, nullptr, 0);
        reaped_[i] = true;
      }
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  procs_.clear();
  reaped_.clear();
  relaunch_.clear();
}

void Supervisor::Release() {
  procs_.clear();
  reaped_.clear();
  relaunch_.clear();
}

absl::Status StopState(const ClusterState& state, int grace_ms, std::vector<std::string>* report) {
  std::vector<const ProcessInfo*> stopping;
  for (auto it = state.processes.rbegin(); it != state.processes.rend(); ++it) {
    if (!ProcessAlive(it->pid, it->start_time)) {
      if (report) {
        report->push_back(absl::StrCat(it->name, " (pid ", it->pid,
                                       ") is not running any more (or the pid was reused); "
                                       "left alone"));
      }
      continue;
    }
    kill(it->pid, SIGTERM);
    stopping.push_back(&*it);
  }
  const auto end = Clock::now() + std::chrono::milliseconds(grace_ms);
  while (true) {
    bool all = true;
    for (const ProcessInfo* p : stopping) all = all && !ProcessAlive(p->pid, p->start_time);
    if (all) break;
    if (Clock::now() > end) {
      for (const ProcessInfo* p : stopping) {
        if (ProcessAlive(p->pid, p->start_time)) {
          if (report) {
            report->push_back(absl::StrCat(p->name, " (pid ", p->pid, ") did not stop within ",
                                           grace_ms, " ms; killed"));
          }
          kill(p->pid, SIGKILL);
        }
      }
      const auto kill_end = Clock::now() + std::chrono::seconds(5);
      while (Clock::now() < kill_end) {
        bool gone = true;
        for (const ProcessInfo* p : stopping) gone = gone && !ProcessAlive(p->pid, p->start_time);
        if (gone) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (const ProcessInfo* p : stopping) {
    if (ProcessAlive(p->pid, p->start_time)) {
      return absl::InternalError(absl::StrCat(p->name, " (pid ", p->pid, ") could not be stopped"));
    }
    if (report) report->push_back(absl::StrCat("stopped ", p->name, " (pid ", p->pid, ")"));
  }
  return absl::OkStatus();
}

absl::Status StopSupervisor(const ClusterState& state, int grace_ms,
                            std::vector<std::string>* report) {
  const SupervisorProcess& s = state.supervisor;
  if (s.pid <= 0) return absl::OkStatus();
  if (!ProcessAlive(s.pid, s.start_time)) {
    if (report) {
      report->push_back(absl::StrCat("the supervisor (pid ", s.pid,
                                     ") is not running any more; its log: ", s.log));
    }
    return absl::OkStatus();
  }
  kill(s.pid, SIGTERM);
  // One still starting the cluster stops what it started, each process within the grace.
  const auto end = Clock::now() + std::chrono::milliseconds(grace_ms) + std::chrono::seconds(15);
  while (ProcessAlive(s.pid, s.start_time) && Clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (ProcessAlive(s.pid, s.start_time)) {
    if (report) {
      report->push_back(absl::StrCat("the supervisor (pid ", s.pid, ") did not stop; killed"));
    }
    kill(s.pid, SIGKILL);
    const auto kill_end = Clock::now() + std::chrono::seconds(5);
    while (ProcessAlive(s.pid, s.start_time) && Clock::now() < kill_end) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (ProcessAlive(s.pid, s.start_time)) {
      return absl::InternalError(
          absl::StrCat("the supervisor (pid ", s.pid, ") could not be stopped"));
    }
  }
  if (report) report->push_back(absl::StrCat("stopped the supervisor (pid ", s.pid, ")"));
  return absl::OkStatus();
}

}  // namespace pipeinfer::cluster
