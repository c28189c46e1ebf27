#include "cli/status_command.h"

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "cluster/health_probe.h"
#include "cluster/supervisor.h"

namespace pipeinfer::cli {
namespace {

struct StatusArgs {
  std::string state;
  bool json = false;
};

// "stage", "draft" or "router" for a process name such as "replica 1 stage 0".
std::string RoleOf(std::string name) {
  if (name.rfind("replica ", 0) == 0) {
    const size_t sp = name.find(' ', 8);
    if (sp != std::string::npos) name = name.substr(sp + 1);
  }
  return name.substr(0, name.find(' '));
}

std::string PortOf(const std::string& address) {
  const size_t colon = address.rfind(':');
  return colon == std::string::npos ? "" : address.substr(colon + 1);
}

std::string Utc(int64_t unix_seconds) {
  if (unix_seconds <= 0) return "";
  const std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// The key a probe of a router started with --protect-metrics needs: PIPEINFER_API_KEY, else the
// first key of the cluster's keys file (the operator's own file).
std::string ProbeKey(const cluster::ClusterState& s) {
  if (const char* env = std::getenv("PIPEINFER_API_KEY"); env && *env) return env;
  if (s.api_keys_file.empty()) return "";
  std::ifstream f(s.api_keys_file);
  for (std::string line; std::getline(f, line);) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (!line.empty() && line[0] != '#') return line;
  }
  return "";
}

int RunStatus(const StatusArgs& a) {
  const std::string path =
      a.state.empty() ? cluster::DefaultRuntimeDir() + "/cluster.json" : a.state;
  absl::StatusOr<cluster::ClusterState> state = cluster::ReadState(path);
  if (!state.ok()) {
    std::cerr << "error: " << state.status().message() << "\n";
    return 2;
  }
  const cluster::ClusterState& s = *state;
  const std::string key = ProbeKey(s);
  nlohmann::json procs = nlohmann::json::array();
  std::vector<std::string> problems;
  for (const cluster::ProcessInfo& p : s.processes) {
    const std::string role = RoleOf(p.name);
    const bool alive = cluster::ProcessAlive(p.pid, p.start_time);
    std::string health = "DOWN", detail;
    if (alive) {
      cluster::Health h;
      if (role == "router" && !s.endpoints.router_http.empty()) {
        h = cluster::RouterReady(s.endpoints.router_http, s.tls_dir, key, &detail);
      } else {
        h = cluster::GrpcHealth(p.address, s.tls_dir, std::chrono::milliseconds(2000));
      }
      health = cluster::HealthName(h);
    }
    if (health != "SERVING") {
      problems.push_back(absl::StrCat(p.name, " is ", alive ? health : "not running",
                                      detail.empty() ? "" : " (" + detail + ")"));
    }
    nlohmann::json j = {{"name", p.name},
                        {"role", role},
                        {"pid", p.pid},
                        {"alive", alive},
                        {"address", p.address},
                        {"port", PortOf(p.address)},
                        {"health", health},
                        {"restarts", p.restarts},
                        {"last_exit", p.last_exit},
                        {"last_restart_unix", p.last_restart_unix},
                        {"last_restart", Utc(p.last_restart_unix)},
                        {"log", p.log}};
    if (role == "router") j["endpoint"] = s.endpoints.router_http;
    if (!detail.empty()) j["health_detail"] = detail;
    procs.push_back(std::move(j));
  }
  if (s.processes.empty()) problems.push_back("the state file names no process");
  const bool sup_alive =
      s.supervisor.pid > 0 && cluster::ProcessAlive(s.supervisor.pid, s.supervisor.start_time);
  const bool healthy = problems.empty();

  if (a.json) {
    nlohmann::json out = {{"state", path},
                          {"healthy", healthy},
                          {"problems", problems},
                          {"tls", !s.tls_dir.empty()},
                          {"processes", procs}};
    out["supervisor"] = s.supervisor.pid > 0 ? nlohmann::json{{"pid", s.supervisor.pid},
                                                              {"alive", sup_alive},
                                                              {"log", s.supervisor.log}}
                                             : nlohmann::json(nullptr);
    if (!s.tls_dir.empty()) out["tls_dir"] = s.tls_dir;
    std::printf("%s\n", out.dump(2).c_str());
    return healthy ? 0 : 1;
  }
  std::printf("cluster %s: %s\n", path.c_str(), healthy ? "healthy" : "UNHEALTHY");
  for (const std::string& p : problems) std::printf("  problem: %s\n", p.c_str());
  if (s.supervisor.pid > 0) {
    std::printf("supervisor: pid %d, %s, log %s\n", s.supervisor.pid,
                sup_alive ? "running" : "NOT RUNNING (crashed processes are not restarted)",
                s.supervisor.log.c_str());
  } else {
    std::printf("supervisor: none recorded\n");
  }
  std::printf("%-18s %-7s %-8s %-6s %-6s %-12s %-9s %s\n", "NAME", "ROLE", "PID", "ALIVE", "PORT",
              "HEALTH", "RESTARTS", "LAST EXIT");
  for (const auto& j : procs) {
    std::string last = j["last_exit"].get<std::string>();
    if (const std::string at = j["last_restart"].get<std::string>(); !at.empty()) {
      last += " (restarted " + at + ")";
    }
    std::printf("%-18s %-7s %-8d %-6s %-6s %-12s %-9d %s\n", j["name"].get<std::string>().c_str(),
                j["role"].get<std::string>().c_str(), j["pid"].get<int>(),
                j["alive"].get<bool>() ? "yes" : "no", j["port"].get<std::string>().c_str(),
                j["health"].get<std::string>().c_str(), j["restarts"].get<int>(),
                last.empty() ? "-" : last.c_str());
  }
  return healthy ? 0 : 1;
}

}  // namespace

void RegisterStatusCommand(CLI::App& app) {
  auto args = std::make_shared<StatusArgs>();
  auto* cmd = app.add_subcommand(
      "status",
      "Show a detached cluster: each process's pid, port, health and restarts, and its "
      "supervisor (exit code 0: healthy, 1: unhealthy, 2: no state file)");
  cmd->add_option("--state", args->state, "State file (default /tmp/pipeinfer-<uid>/cluster.json)");
  cmd->add_flag("--json", args->json, "One JSON document instead of the table");
  cmd->final_callback([args] {
    if (int rc = RunStatus(*args)) throw CLI::RuntimeError(rc);
  });
}

}  // namespace pipeinfer::cli
