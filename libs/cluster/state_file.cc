// The state file of a detached cluster (`pipeinfer up --detach` and its supervisor write it,
// `pipeinfer status`, `pipeinfer down` and the clients read it): its supervisor, its processes with
// their restarts, endpoints, log folder, link emulation and security files, as JSON. It is always
// replaced whole (written to <path>.<pid>.tmp, then renamed), so a reader never sees half of it.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "cluster/supervisor.h"

namespace pipeinfer::cluster {

namespace fs = std::filesystem;

absl::Status WriteState(const ClusterState& state, const std::string& path) {
  nlohmann::json j;
  j["version"] = 1;
  j["log_dir"] = state.log_dir;
  j["processes"] = nlohmann::json::array();
  for (const auto& p : state.processes) {
    j["processes"].push_back({{"name", p.name},
                              {"pid", p.pid},
                              {"start_time", p.start_time},
                              {"address", p.address},
                              {"log", p.log},
                              {"restarts", p.restarts},
                              {"last_exit", p.last_exit},
                              {"last_restart_unix", p.last_restart_unix}});
  }
  if (state.supervisor.pid > 0) {
    j["supervisor"] = {{"pid", state.supervisor.pid},
                       {"start_time", state.supervisor.start_time},
                       {"log", state.supervisor.log}};
  }
  if (!state.tls_dir.empty()) j["tls_dir"] = state.tls_dir;
  if (!state.api_keys_file.empty()) j["api_keys_file"] = state.api_keys_file;
  j["endpoints"] = {{"stages", state.endpoints.stages},
                    {"stage_metrics", state.endpoints.stage_metrics},
                    {"draft_metrics", state.endpoints.draft_metrics},
                    {"draft", state.endpoints.draft},
                    {"drafts", state.endpoints.drafts},
                    {"router_http", state.endpoints.router_http},
                    {"router_grpc", state.endpoints.router_grpc}};
  if (!state.links.empty()) j["links"] = nlohmann::json::parse(LinkTopologyToJson(state.links));
  std::error_code ec;
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) fs::create_directories(parent, ec);
  // Unique per writer: `up` and its supervisor may both write while the cluster starts.
  const std::string tmp = absl::StrCat(path, ".", getpid(), ".tmp");
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << j.dump(2) << "\n";
    if (!f) return absl::InternalError(absl::StrCat("cannot write state file ", path));
  }
  fs::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot write state file ", path));
  return absl::OkStatus();
}

absl::StatusOr<ClusterState> ReadState(const std::string& path) {
  std::ifstream f(path);
  if (!f) return absl::NotFoundError(absl::StrCat("no cluster state file at ", path));
  ClusterState s;
  try {
    nlohmann::json j = nlohmann::json::parse(f);
    s.log_dir = j.value("log_dir", "");
    for (const auto& p : j.at("processes")) {
      ProcessInfo info;
      info.name = p.at("name").get<std::string>();
      info.pid = p.at("pid").get<pid_t>();
      info.start_time = p.at("start_time").get<uint64_t>();
      info.address = p.value("address", "");
      info.log = p.value("log", "");
      info.restarts = p.value("restarts", 0);
      info.last_exit = p.value("last_exit", "");
      info.last_restart_unix = p.value("last_restart_unix", int64_t{0});
      s.processes.push_back(info);
    }
    if (j.contains("supervisor")) {
      const auto& sup = j["supervisor"];
      s.supervisor.pid = sup.at("pid").get<pid_t>();
      s.supervisor.start_time = sup.at("start_time").get<uint64_t>();
      s.supervisor.log = sup.value("log", "");
    }
    s.tls_dir = j.value("tls_dir", "");
    s.api_keys_file = j.value("api_keys_file", "");
    const auto& e = j.at("endpoints");
    s.endpoints.stages = e.value("stages", std::vector<std::string>{});
    s.endpoints.stage_metrics = e.value("stage_metrics", std::vector<std::string>{});
    s.endpoints.draft_metrics = e.value("draft_metrics", "");
    s.endpoints.draft = e.value("draft", "");
    s.endpoints.drafts = e.value("drafts", std::vector<std::string>{s.endpoints.draft});
    s.endpoints.router_http = e.value("router_http", "");
    s.endpoints.router_grpc = e.value("router_grpc", "");
    if (j.contains("links")) {
      absl::StatusOr<LinkTopology> links = LinkTopologyFromJson(j["links"].dump());
      if (!links.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": ", links.status().message()));
      }
      s.links = std::move(*links);
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": bad state file: ", e.what()));
  }
  return s;
}

}  // namespace pipeinfer::cluster
