#include "cluster/config.h"

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace pipeinfer::cluster {

bool IsSpecKey(const std::string& key) {
  static const std::set<std::string> kSpecKeys = {
      "draft_max", "p_accept",      "p_split",       "p_recovery",  "p_decay",     "max_inflight",
      "no_cancel", "no_continuous", "draft_threads", "draft_noise", "max_branches"};
  return kSpecKeys.count(key) > 0;
}
namespace fs = std::filesystem;

std::string ClusterConfig::StageAddress(int i) const {
  return host + ":" + std::to_string(base_port + i);
}
std::string ClusterConfig::DraftAddress() const {
  return host + ":" + std::to_string(base_port + stages);
}
std::string ClusterConfig::RouterGrpcAddress() const {
  return host + ":" + std::to_string(grpc_port > 0 ? grpc_port : base_port + stages + 1);
}
std::string ClusterConfig::RouterHttpAddress() const {
  return host + ":" + std::to_string(http_port);
}
std::string ClusterConfig::StageMetricsAddress(int i) const {
  if (metrics_base_port < 0) return "";
  const int base = metrics_base_port > 0 ? metrics_base_port : base_port + stages + 2;
  return host + ":" + std::to_string(base + i);
}

absl::StatusOr<ClusterConfig> LoadClusterConfig(const std::string& path) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    return absl::NotFoundError(absl::StrCat("cannot read config file ", path));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }
  if (!root.IsMap()) return absl::InvalidArgumentError(absl::StrCat(path, ": not a YAML mapping"));
  const fs::path base = fs::absolute(fs::path(path)).parent_path().parent_path();
  auto resolve = [&](const std::string& p) {
    if (p.empty() || fs::path(p).is_absolute()) return p;
    return (base / p).lexically_normal().string();
  };
  static const std::set<std::string> kKeys = {
      "model",     "draft_model",    "stages",           "weights",
      "mode",      "emulate_run_us", "emulate_token_us", "threads",
      "kv_tokens", "host",           "base_port",        "http_port",
      "grpc_port", "chat_template",  "model_id",         "metrics_base_port",
      "spec"};
  ClusterConfig c;
  try {
    for (const auto& kv : root) {
      const std::string key = kv.first.as<std::string>();
      if (!kKeys.count(key)) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": unknown key '", key, "'"));
      }
    }
    if (root["model"]) c.model = resolve(root["model"].as<std::string>());
    if (root["draft_model"]) c.draft_model = resolve(root["draft_model"].as<std::string>());
    if (root["stages"]) c.stages = root["stages"].as<int>();
    if (root["weights"]) c.weights = root["weights"].as<std::vector<double>>();
    if (root["mode"]) c.mode = root["mode"].as<std::string>();
    if (root["threads"]) c.threads = root["threads"].as<int>();
    if (root["kv_tokens"]) c.kv_tokens = root["kv_tokens"].as<int64_t>();
    if (root["emulate_run_us"]) c.emulate_run_us = root["emulate_run_us"].as<int64_t>();
    if (root["emulate_token_us"]) c.emulate_token_us = root["emulate_token_us"].as<int64_t>();
    if (root["host"]) c.host = root["host"].as<std::string>();
    if (root["base_port"]) c.base_port = root["base_port"].as<int>();
    if (root["http_port"]) c.http_port = root["http_port"].as<int>();
    if (root["grpc_port"]) c.grpc_port = root["grpc_port"].as<int>();
    if (root["metrics_base_port"]) c.metrics_base_port = root["metrics_base_port"].as<int>();
    if (root["chat_template"]) c.chat_template = root["chat_template"].as<std::string>();
    if (root["model_id"]) c.model_id = root["model_id"].as<std::string>();
    if (root["spec"]) {
      if (!root["spec"].IsMap()) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": 'spec' must be a mapping"));
      }
      for (const auto& kv : root["spec"]) {
        const std::string key = kv.first.as<std::string>();
        if (!IsSpecKey(key)) {
          return absl::InvalidArgumentError(absl::StrCat(path, ": unknown spec key '", key, "'"));
        }
        c.spec[key] = kv.second.as<std::string>();
      }
    }
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }
  return c;
}

absl::Status ValidateClusterConfig(const ClusterConfig& c) {
  if (c.mode != "plain" && c.mode != "sync" && c.mode != "pipeinfer") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown mode '", c.mode, "' (expected plain, sync or pipeinfer)"));
  }
  if (c.mode != "plain" && c.draft_model.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "mode '", c.mode, "' needs a draft model (set 'draft_model' or --draft-model)"));
  }
  if (!c.draft_model.empty()) {
    std::error_code dec;
    if (!fs::is_regular_file(c.draft_model, dec)) {
      return absl::NotFoundError(absl::StrCat("draft model file not found: ", c.draft_model));
    }
  }
  for (const auto& [key, value] : c.spec) {
    if (!IsSpecKey(key))
      return absl::InvalidArgumentError(absl::StrCat("unknown spec key '", key, "'"));
  }
  if (c.model.empty()) {
    return absl::InvalidArgumentError("no model given (set 'model' in the config or --model)");
  }
  std::error_code ec;
  if (!fs::is_regular_file(c.model, ec)) {
    return absl::NotFoundError(absl::StrCat("model file not found: ", c.model));
  }
  if (c.stages < 1 || c.stages > 64) {
    return absl::InvalidArgumentError(absl::StrCat("stages must be in [1, 64], got ", c.stages));
  }
  if (!c.weights.empty() && c.weights.size() != static_cast<size_t>(c.stages)) {
    return absl::InvalidArgumentError(
        absl::StrCat("weights has ", c.weights.size(), " entries but stages is ", c.stages));
  }
  if (c.threads < 1 || c.threads > 256) {
    return absl::InvalidArgumentError(absl::StrCat("threads must be in [1, 256], got ", c.threads));
  }
  if (c.kv_tokens < 0) return absl::InvalidArgumentError("kv_tokens must be >= 0");
  if (c.emulate_run_us < 0 || c.emulate_run_us > 10000000 || c.emulate_token_us < 0 ||
      c.emulate_token_us > 10000000) {
    return absl::InvalidArgumentError("emulate_run_us and emulate_token_us must be in [0, 1e7]");
  }
  auto port_ok = [](int p) { return p > 0 && p < 65536; };
  if (!port_ok(c.base_port) || !port_ok(c.base_port + c.stages + 1)) {
    return absl::InvalidArgumentError(absl::StrCat("base_port out of range: ", c.base_port));
  }
  if (!port_ok(c.http_port)) {
    return absl::InvalidArgumentError(absl::StrCat("http_port out of range: ", c.http_port));
  }
  if (c.grpc_port != 0 && !port_ok(c.grpc_port)) {
    return absl::InvalidArgumentError(absl::StrCat("grpc_port out of range: ", c.grpc_port));
  }
  if (c.metrics_base_port < -1 || c.metrics_base_port >= 65536 ||
      (c.metrics_base_port != -1 &&
       !port_ok((c.metrics_base_port > 0 ? c.metrics_base_port : c.base_port + c.stages + 2) +
                c.stages - 1))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics_base_port out of range: ", c.metrics_base_port, " (-1 = none, 0 = derived)"));
  }
  if (c.host.empty()) return absl::InvalidArgumentError("host must not be empty");
  // Every process listens on its own port(s).
  std::map<std::string, std::string> used;  // address -> what listens there
  std::vector<std::pair<std::string, std::string>> listeners;
  for (int i = 0; i < c.stages; ++i) {
    listeners.emplace_back(c.StageAddress(i), absl::StrCat("stage ", i));
    const std::string m = c.StageMetricsAddress(i);
    if (!m.empty()) listeners.emplace_back(m, absl::StrCat("stage ", i, " metrics"));
  }
  listeners.emplace_back(c.DraftAddress(), "the draft service");
  if (const std::string m = c.DraftMetricsAddress(); !m.empty()) {
    listeners.emplace_back(m, "the draft service's metrics");
  }
  listeners.emplace_back(c.RouterGrpcAddress(), "router gRPC");
  listeners.emplace_back(c.RouterHttpAddress(), "router HTTP");
  for (const auto& [addr, what] : listeners) {
    auto [it, fresh] = used.emplace(addr, what);
    if (!fresh) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " and ", it->second, " would both listen on ", addr,
                       " (check base_port, grpc_port, http_port and metrics_base_port)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace pipeinfer::cluster
