// Configuration of a local cluster (`pipeinfer up`): read from a YAML file, then overridden by
// command-line flags, then validated and completed with defaults.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pipeinfer::cluster {

struct ClusterConfig {
  std::string model;            // target GGUF
  std::string draft_model;      // draft GGUF; required by the sync and pipeinfer modes
  int stages = 1;               // number of stage processes
  std::vector<double> weights;  // optional relative layer weights, one per stage
  std::string mode = "plain";   // plain | sync | pipeinfer
  int threads = 1;              // compute threads per stage
  // Where each stage computes (pipeinfer-stage --device, or --devices for a list): empty = no flag
  // (the stage's default, the CPU); one entry = every stage; otherwise one entry per stage. An
  // entry is one device ("cpu", "cuda:0") or a comma list of one kind that splits each of the
  // stage's layers over its devices ("cuda:0,cuda:1": tensor parallelism; engine/devices.h). With
  // replicas > 1, stage i of every replica gets entry i (the replicas share those devices). YAML
  // `devices:` (a string or a list), `up --stage-devices "cpu;cuda:0"` (entries split at ';').
  std::vector<std::string> devices;
  // Requests generating at once: the router's slots (--max-inflight), and what each stage's KV
  // cache is sized for when kv_tokens is 0 (full-context requests with this mode's speculation
  // headroom; pipeinfer-stage --kv-sessions), within kv_memory bytes (0 = the stage's default,
  // a quarter of physical memory).
  int concurrency = 8;
  uint64_t kv_memory = 0;
  int64_t kv_tokens = 0;  // KV capacity per stage in tokens (0 = sized by concurrency, see above)
  int max_batch_tokens = 0;  // most tokens per stage forward pass (0 = the stage's default)
  // Benchmarks only: stages pad each forward to emulate_run_us + emulate_token_us * n_tokens
  // (pipeinfer-stage --emulate-run-us / --emulate-token-us). 0 = real timing.
  int64_t emulate_run_us = 0;
  int64_t emulate_token_us = 0;
  // Benchmarks only: each stage in its own network namespace, joined by veth pairs rate limited to
  // emulate_link_mbps Mbit/s per direction (root needed; 0 = loopback, no namespaces) and every
  // message paced at that rate in-process (serialization delay; pipeinfer-stage / pipeinfer-draft
  // --emulate-link-mbps), and every message on a link delayed by emulate_link_us in-process
  // (--emulate-link-us; works without namespaces too). docs/link-emulation.md.
  double emulate_link_mbps = 0;
  int64_t emulate_link_us = 0;
  // Independent pipelines (stage chain + draft service each) behind the one router, which
  // balances requests over their draft services.
  int replicas = 1;
  std::string log_format = "text";  // every process's --log-format (text | json)
  std::string log_level = "info";   // every process's --log-level
  std::string host = "127.0.0.1";   // every process listens here
  // Replica r's stages listen on base_port + r * (stages + 1) + i, its draft service on the port
  // after its last stage's; the router's gRPC (by default) on the port after the last replica's.
  int base_port = 50051;
  int http_port = 8080;  // router HTTP
  int grpc_port = 0;     // router gRPC (0 = the port after the draft's)
  // First stage /metrics port; stage i serves Prometheus metrics on metrics_base_port + i (replica
  // r: + r * (stages + 1)). 0 = derived: right after the router's default gRPC port; -1 = none.
  int metrics_base_port = 0;
  std::string chat_template;  // router --chat-template (empty = the model's)
  std::string model_id;       // optional served model id
  // Settings of pipeinfer-draft, the YAML's `spec:` mapping and `up`'s flags: the speculation
  // knobs of the table in spec/knobs.h except the mode (the top-level `mode` above) -- draft_max,
  // p_accept, p_split, p_recovery, p_decay, max_branches, max_inflight, no_cancel, no_continuous --
  // plus the draft model's options (DraftOptionKeys: draft_threads, draft_noise, ...). Key ->
  // value as text (switches "true"/"false"); DraftArgs() turns them into pipeinfer-draft's flags.
  std::map<std::string, std::string> spec;
  // Security (README "Security"). tls_dir: mutual TLS between every process and HTTPS at the
  // router, with the certificates of that directory (cluster/tls_certs.h: ca.pem, <name>.pem,
  // <name>-key.pem; `pipeinfer up --tls` creates them); empty = plaintext. api_keys_file: the
  // router's --api-keys-file (one key per line); empty = no keys.
  std::string tls_dir;
  std::string api_keys_file;

  // Addresses of replica r's processes (r = 0 with one replica).
  std::string StageAddress(int i, int r = 0) const;
  std::string DraftAddress(int r = 0) const;
  std::string RouterGrpcAddress() const;
  std::string RouterHttpAddress() const;
  // HOST:PORT of the draft service's /metrics endpoint (right after the last stage's); empty when
  // metrics_base_port is -1.
  std::string DraftMetricsAddress(int r = 0) const { return StageMetricsAddress(stages, r); }
  // HOST:PORT of stage i's /metrics endpoint; empty when metrics_base_port is -1.
  std::string StageMetricsAddress(int i, int r = 0) const;
  // Every draft service address, comma-separated (the router's --draft).
  std::string DraftAddresses() const;
};

// Every address the cluster's processes listen on, with what listens there ("stage 0", "replica 1
// stage 0 metrics", "router HTTP", ...).
std::vector<std::pair<std::string, std::string>> Listeners(const ClusterConfig& c);

// The TLS flags of the process whose certificate is `name` ("stage0", "draft", "router"):
// --tls-ca, --tls-cert, --tls-key with the files of c.tls_dir; none without TLS.
std::vector<std::string> TlsArgs(const ClusterConfig& c, const std::string& name);

// Stage i's TLS flags: TlsArgs with its certificate, plus --tls-allow-cn naming who may open its
// Pipeline stream (the upstream stage, or the draft service for stage 0) and Results stream (the
// draft service). None without TLS.
std::vector<std::string> StageTlsArgs(const ClusterConfig& c, int i);

// The certificate names of a cluster's processes, by role: "stage<i>" (every replica's stage i
// shares it), "draft", "router", and "client" for the operator tools.
std::string StageCertName(int i);

// Splits `up --stage-devices` ("cpu;cuda:0,cuda:1") into its entries, trimmed of spaces; an empty
// text gives none. ValidateClusterConfig checks them.
std::vector<std::string> SplitStageDevices(const std::string& text);

// Stage i's device flags: none when c.devices is empty, else `--devices E` for an entry E that
// lists several devices and `--device E` for one device (E = the entry for stage i).
std::vector<std::string> StageDeviceArgs(const ClusterConfig& c, int i);

// The log flags every process of the cluster gets.
std::vector<std::string> LogArgs(const ClusterConfig& c);

// The `spec:` keys that are not speculation knobs but options of the draft model, passed through to
// pipeinfer-draft (which checks them): draft_threads, draft_noise, draft_rank_model and
// emulate_draft_us (benchmarks only).
const std::vector<std::string>& DraftOptionKeys();

// Checks one `spec:` entry: an unknown key, or a knob value outside the knob table's range (the
// table's message). On success `*normalized` (if given) is the value as pipeinfer-draft reads it.
absl::Status CheckSpecEntry(const std::string& key, const std::string& value,
                            std::string* normalized = nullptr);

// The flags that pass c.spec to pipeinfer-draft, in the table's order: `--draft-max 4`,
// `--no-cancel` for a switch that is on (nothing when off), then the draft options.
std::vector<std::string> DraftArgs(const ClusterConfig& c);

// The flags that size each stage's KV cache when c.kv_tokens is 0: --kv-sessions (concurrency),
// --kv-headroom-tokens and --kv-session-partitions (what the mode and knobs of c reserve per
// request beyond its context, spec/kv_demand.h), --kv-memory; or --kv-tokens.
std::vector<std::string> StageKvArgs(const ClusterConfig& c);

// Reads a YAML file. Relative paths in it (model, draft_model) are resolved against the parent of
// the file's directory, i.e. the repository root for files under configs/. Unknown keys are an
// error.
absl::StatusOr<ClusterConfig> LoadClusterConfig(const std::string& path);

// Checks ranges, the mode, the spec entries, the devices (one entry or one per stage, each one
// engine::ParseDevices accepts) and that the model file exists.
absl::Status ValidateClusterConfig(const ClusterConfig& c);

}  // namespace pipeinfer::cluster
