#include "cluster/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "engine/devices.h"
#include "spec/knobs.h"
#include "spec/kv_demand.h"

namespace pipeinfer::cluster {

namespace fs = std::filesystem;

namespace {

// A knob of the table that belongs in `spec:` (every one but the mode, which is top level).
const spec::Knob* SpecKnob(const std::string& key) {
  const spec::Knob* k = spec::FindKnob(key);
  return k != nullptr && k->type != spec::KnobType::kMode ? k : nullptr;
}

bool IsDraftOption(const std::string& key) {
  const auto& keys = DraftOptionKeys();
  return std::find(keys.begin(), keys.end(), key) != keys.end();
}

}  // namespace

const std::vector<std::string>& DraftOptionKeys() {
  static const std::vector<std::string> kKeys = {"draft_threads", "draft_noise", "draft_rank_model",
                                                 "emulate_draft_us"};
  return kKeys;
}

absl::Status CheckSpecEntry(const std::string& key, const std::string& value,
                            std::string* normalized) {
  if (const spec::Knob* k = SpecKnob(key)) {
    spec::SpecParams scratch;
    if (absl::Status st = spec::ParseKnob(*k, value, spec::KnobScope::kDefault, &scratch);
        !st.ok()) {
      return st;
    }
    if (normalized) *normalized = spec::FormatKnob(*k, scratch);
    return absl::OkStatus();
  }
  if (IsDraftOption(key)) {
    if (normalized) *normalized = value;
    return absl::OkStatus();
  }
  if (key == "mode") {
    return absl::InvalidArgumentError("unknown spec key 'mode' (the mode is the top-level 'mode')");
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown spec key '", key, "'"));
}

std::vector<std::string> DraftArgs(const ClusterConfig& c) {
  std::vector<std::string> argv;
  for (const spec::Knob& k : spec::Knobs()) {
    auto it = c.spec.find(std::string(k.name));
    if (it == c.spec.end() || k.type == spec::KnobType::kMode) continue;
    if (k.type == spec::KnobType::kSwitch) {
      // A switch is a flag without a value; off is the draft service's default.
      spec::SpecParams p;
      if (spec::ParseKnob(k, it->second, spec::KnobScope::kDefault, &p).ok() && p.*k.on) {
        argv.emplace_back(k.flag);
      }
    } else {
      argv.insert(argv.end(), {std::string(k.flag), it->second});
    }
  }
  for (const std::string& key : DraftOptionKeys()) {
    auto it = c.spec.find(key);
    if (it == c.spec.end()) continue;
    std::string flag = "--" + key;
    std::replace(flag.begin(), flag.end(), '_', '-');
    argv.insert(argv.end(), {flag, it->second});
  }
  return argv;
}

std::string ClusterConfig::StageAddress(int i, int r) const {
  return host + ":" + std::to_string(base_port + r * (stages + 1) + i);
}
std::string ClusterConfig::DraftAddress(int r) const { return StageAddress(stages, r); }
std::string ClusterConfig::RouterGrpcAddress() const {
  return host + ":" +
         std::to_string(grpc_port > 0 ? grpc_port : base_port + replicas * (stages + 1));
}
std::string ClusterConfig::RouterHttpAddress() const {
  return host + ":" + std::to_string(http_port);
}
std::string ClusterConfig::StageMetricsAddress(int i, int r) const {
  if (metrics_base_port < 0) return "";
  const int base =
      metrics_base_port > 0 ? metrics_base_port : base_port + replicas * (stages + 1) + 1;
  return host + ":" + std::to_string(base + r * (stages + 1) + i);
}
std::string ClusterConfig::DraftAddresses() const {
  std::vector<std::string> all;
  for (int r = 0; r < replicas; ++r) all.push_back(DraftAddress(r));
  return absl::StrJoin(all, ",");
}

std::vector<std::pair<std::string, std::string>> Listeners(const ClusterConfig& c) {
  std::vector<std::pair<std::string, std::string>> out;
  for (int r = 0; r < c.replicas; ++r) {
    const std::string who = c.replicas > 1 ? absl::StrCat("replica ", r, " ") : "";
    for (int i = 0; i < c.stages; ++i) {
      out.emplace_back(c.StageAddress(i, r), absl::StrCat(who, "stage ", i));
      const std::string m = c.StageMetricsAddress(i, r);
      if (!m.empty()) out.emplace_back(m, absl::StrCat(who, "stage ", i, " metrics"));
    }
    out.emplace_back(c.DraftAddress(r), absl::StrCat(who, "draft service"));
    if (const std::string m = c.DraftMetricsAddress(r); !m.empty()) {
      out.emplace_back(m, absl::StrCat(who, "draft service metrics"));
    }
  }
  out.emplace_back(c.RouterGrpcAddress(), "router gRPC");
  out.emplace_back(c.RouterHttpAddress(), "router HTTP");
  return out;
}

std::string StageCertName(int i) { return absl::StrCat("stage", i); }

std::vector<std::string> TlsArgs(const ClusterConfig& c, const std::string& name) {
  if (c.tls_dir.empty()) return {};
  return {"--tls-ca",   c.tls_dir + "/ca.pem",
          "--tls-cert", c.tls_dir + "/" + name + ".pem",
          "--tls-key",  c.tls_dir + "/" + name + "-key.pem"};
}

std::vector<std::string> StageTlsArgs(const ClusterConfig& c, int i) {
  std::vector<std::string> args = TlsArgs(c, StageCertName(i));
  if (args.empty()) return args;
  args.insert(args.end(),
              {"--tls-allow-cn",
               i == 0 ? std::string("draft") : absl::StrCat(StageCertName(i - 1), ",draft")});
  return args;
}

std::vector<std::string> SplitStageDevices(const std::string& text) {
  if (absl::StripAsciiWhitespace(text).empty()) return {};
  std::vector<std::string> out;
  for (absl::string_view entry : absl::StrSplit(text, ';')) {
    out.emplace_back(absl::StripAsciiWhitespace(entry));
  }
  return out;
}

std::vector<std::string> StageDeviceArgs(const ClusterConfig& c, int i) {
  if (c.devices.empty()) return {};
  const std::string& entry = c.devices.size() == 1 ? c.devices[0] : c.devices.at(i);
  return {entry.find(',') != std::string::npos ? "--devices" : "--device", entry};
}

std::vector<std::string> LogArgs(const ClusterConfig& c) {
  return {"--log-format", c.log_format, "--log-level", c.log_level};
}

std::vector<std::string> StageKvArgs(const ClusterConfig& c) {
  if (c.kv_tokens > 0) return {"--kv-tokens", absl::StrCat(c.kv_tokens)};
  spec::SpecParams p;
  if (absl::StatusOr<spec::Mode> m = spec::ParseMode(c.mode); m.ok()) p.mode = *m;
  for (const auto& [key, value] : c.spec) {
    if (const spec::Knob* k = spec::FindKnob(key)) {
      (void)spec::ParseKnob(*k, value, spec::KnobScope::kDefault, &p);  // validated on load
    }
  }
  // A request may pick either speculation algorithm (SpecConfig.paper_tree), so every session's
  // share covers the larger of the two demands.
  spec::KvDemand headroom = spec::KvDemandOf(p, /*max_context=*/0, static_cast<uint32_t>(c.stages));
  spec::SpecParams other = p;
  other.paper_tree = !p.paper_tree;
  const spec::KvDemand alt =
      spec::KvDemandOf(other, /*max_context=*/0, static_cast<uint32_t>(c.stages));
  headroom.reserve_tokens = std::max(headroom.reserve_tokens, alt.reserve_tokens);
  headroom.partitions = std::max(headroom.partitions, alt.partitions);
  std::vector<std::string> argv = {"--kv-sessions",           absl::StrCat(c.concurrency),
                                   "--kv-headroom-tokens",    absl::StrCat(headroom.reserve_tokens),
                                   "--kv-session-partitions", absl::StrCat(headroom.partitions)};
  if (c.kv_memory > 0) argv.insert(argv.end(), {"--kv-memory", absl::StrCat(c.kv_memory)});
  return argv;
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
      "model",         "draft_model",    "stages",           "weights",
      "mode",          "emulate_run_us", "emulate_token_us", "threads",
      "kv_tokens",     "host",           "base_port",        "http_port",
      "grpc_port",     "chat_template",  "model_id",         "metrics_base_port",
      "replicas",      "log_format",     "log_level",        "spec",
      "concurrency",   "kv_memory",      "max_batch_tokens", "tls_dir",
      "api_keys_file", "devices"};
  // Link emulation, benchmarks only (docs/link-emulation.md).
  static const std::set<std::string> kLinkKeys = {"emulate_link_mbps", "emulate_link_us"};
  ClusterConfig c;
  try {
    for (const auto& kv : root) {
      const std::string key = kv.first.as<std::string>();
      if (!kKeys.count(key) && !kLinkKeys.count(key)) {
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
    if (root["concurrency"]) c.concurrency = root["concurrency"].as<int>();
    if (root["kv_memory"]) c.kv_memory = root["kv_memory"].as<uint64_t>();
    if (root["max_batch_tokens"]) c.max_batch_tokens = root["max_batch_tokens"].as<int>();
    if (root["emulate_run_us"]) c.emulate_run_us = root["emulate_run_us"].as<int64_t>();
    if (root["emulate_token_us"]) c.emulate_token_us = root["emulate_token_us"].as<int64_t>();
    if (root["emulate_link_mbps"]) c.emulate_link_mbps = root["emulate_link_mbps"].as<double>();
    if (root["emulate_link_us"]) c.emulate_link_us = root["emulate_link_us"].as<int64_t>();
    if (root["host"]) c.host = root["host"].as<std::string>();
    if (root["replicas"]) c.replicas = root["replicas"].as<int>();
    if (root["log_format"]) c.log_format = root["log_format"].as<std::string>();
    if (root["log_level"]) c.log_level = root["log_level"].as<std::string>();
    if (root["base_port"]) c.base_port = root["base_port"].as<int>();
    if (root["http_port"]) c.http_port = root["http_port"].as<int>();
    if (root["grpc_port"]) c.grpc_port = root["grpc_port"].as<int>();
    if (root["metrics_base_port"]) c.metrics_base_port = root["metrics_base_port"].as<int>();
    if (root["chat_template"]) c.chat_template = root["chat_template"].as<std::string>();
    if (root["model_id"]) c.model_id = root["model_id"].as<std::string>();
    if (root["tls_dir"]) c.tls_dir = resolve(root["tls_dir"].as<std::string>());
    if (root["api_keys_file"]) c.api_keys_file = resolve(root["api_keys_file"].as<std::string>());
    if (const YAML::Node d = root["devices"]) {  // "cuda:0" or one entry per stage
      if (d.IsScalar()) {
        c.devices = {d.as<std::string>()};
      } else if (d.IsSequence()) {
        for (const YAML::Node& entry : d) {
          if (!entry.IsScalar()) {
            return absl::InvalidArgumentError(
                absl::StrCat(path, ": every 'devices' entry must be a string like cuda:0"));
          }
          c.devices.push_back(entry.as<std::string>());
        }
      } else {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": 'devices' must be a string (every stage) or a list (one entry per stage)"));
      }
    }
    if (root["spec"]) {
      if (!root["spec"].IsMap()) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": 'spec' must be a mapping"));
      }
      for (const auto& kv : root["spec"]) {
        const std::string key = kv.first.as<std::string>();
        std::string value;
        if (absl::Status st = CheckSpecEntry(key, kv.second.as<std::string>(), &value); !st.ok()) {
          return absl::InvalidArgumentError(absl::StrCat(path, ": ", st.message()));
        }
        c.spec[key] = value;
      }
    }
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }
  return c;
}

absl::Status ValidateClusterConfig(const ClusterConfig& c) {
  if (absl::StatusOr<spec::Mode> m = spec::ParseMode(c.mode); !m.ok()) return m.status();
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
    if (absl::Status st = CheckSpecEntry(key, value); !st.ok()) return st;
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
  if (c.devices.size() > 1 && c.devices.size() != static_cast<size_t>(c.stages)) {
    return absl::InvalidArgumentError(
        absl::StrCat("devices has ", c.devices.size(), " entries but stages is ", c.stages,
                     " (give one entry for every stage, or one per stage)"));
  }
  for (size_t i = 0; i < c.devices.size(); ++i) {
    if (absl::StatusOr<engine::DeviceList> d = engine::ParseDevices(c.devices[i]); !d.ok()) {
      const std::string who = c.devices.size() == 1 ? "every stage" : absl::StrCat("stage ", i);
      return absl::InvalidArgumentError(
          absl::StrCat("devices '", c.devices[i], "' of ", who, ": ", d.status().message()));
    }
  }
  if (c.threads < 1 || c.threads > 256) {
    return absl::InvalidArgumentError(absl::StrCat("threads must be in [1, 256], got ", c.threads));
  }
  if (c.kv_tokens < 0) return absl::InvalidArgumentError("kv_tokens must be >= 0");
  if (c.concurrency < 1 || c.concurrency > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("concurrency must be in [1, 4096], got ", c.concurrency));
  }
  if (c.max_batch_tokens < 0 || c.max_batch_tokens > (1 << 20)) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_batch_tokens must be in [0, 1048576], got ", c.max_batch_tokens));
  }
  if (c.emulate_run_us < 0 || c.emulate_run_us > 10000000 || c.emulate_token_us < 0 ||
      c.emulate_token_us > 10000000) {
    return absl::InvalidArgumentError("emulate_run_us and emulate_token_us must be in [0, 1e7]");
  }
  if (!(c.emulate_link_mbps >= 0 && c.emulate_link_mbps <= 100000)) {
    return absl::InvalidArgumentError(
        absl::StrCat("emulate_link_mbps must be in [0, 100000], got ", c.emulate_link_mbps));
  }
  if (c.emulate_link_us < 0 || c.emulate_link_us > 10000000) {
    return absl::InvalidArgumentError("emulate_link_us must be in [0, 1e7]");
  }
  if (c.replicas < 1 || c.replicas > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("replicas must be in [1, 64], got ", c.replicas));
  }
  if (c.log_format != "text" && c.log_format != "json") {
    return absl::InvalidArgumentError(
        absl::StrCat("log_format must be text or json, got '", c.log_format, "'"));
  }
  static const std::set<std::string> kLevels = {"trace", "debug", "info", "warn", "error", "off"};
  if (!kLevels.count(c.log_level)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "log_level must be trace, debug, info, warn, error or off, got '", c.log_level, "'"));
  }
  auto port_ok = [](int p) { return p > 0 && p < 65536; };
  if (!port_ok(c.base_port) || !port_ok(c.base_port + c.replicas * (c.stages + 1))) {
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
       !port_ok((c.metrics_base_port > 0 ? c.metrics_base_port
                                         : c.base_port + c.replicas * (c.stages + 1) + 1) +
                c.replicas * (c.stages + 1) - 1))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics_base_port out of range: ", c.metrics_base_port, " (-1 = none, 0 = derived)"));
  }
  if (c.host.empty()) return absl::InvalidArgumentError("host must not be empty");
  // Every process listens on its own port(s).
  std::map<std::string, std::string> used;  // address -> what listens there
  const std::vector<std::pair<std::string, std::string>> listeners = Listeners(c);
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
