// The state file of a detached cluster (`pipeinfer up --detach` writes it, `pipeinfer down` and the
// clients read it): its processes, endpoints, log folder and link emulation, as JSON.
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
                              {"log", p.log}});
  }
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
  const std::string tmp = path + ".tmp";
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
      s.processes.push_back(info);
    }
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
