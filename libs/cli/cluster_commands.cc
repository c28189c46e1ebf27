#include "cli/cluster_commands.h"
#include "absl/strings/str_cat.h"

#include <signal.h>
#include <unistd.h>
#include <algorithm>
#include <map>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cli/detach.h"
#include "cli/status_command.h"
#include "cluster/config.h"
#include "cluster/link_emulation.h"
#include "cluster/supervisor.h"
#include "cluster/tls_certs.h"
#include "spec/knob_flags.h"
#include "spec/knobs.h"

namespace pipeinfer::cli {
namespace {

volatile int g_stop = 0;

void OnSignal(int sig) { g_stop = sig; }

std::string DefaultStatePath() { return cluster::DefaultRuntimeDir() + "/cluster.json"; }

int Fail(const std::string& msg) {
  std::cerr << "error: " << msg << "\n";
  return 1;
}

// ------------------------------------------------------------------------------------------------
// up / down

struct UpArgs {
  std::string config;
  std::optional<std::string> model;
  std::optional<int> stages;
  std::optional<std::string> draft_model;
  spec::KnobSettings knobs;                          // speculation knobs given as flags
  std::map<std::string, std::string> draft_options;  // draft_threads, draft_noise given as flags
  std::optional<int> http_port;
  std::optional<int> grpc_port;
  std::optional<int> base_port;
  std::optional<int> metrics_base_port;
  std::optional<int> threads;
  std::optional<std::string> stage_devices;  // "cpu;cuda:0": config key `devices`
  std::optional<int64_t> kv_tokens;
  std::optional<int> concurrency, max_batch_tokens;
  std::optional<uint64_t> kv_memory;
  std::optional<int64_t> emulate_run_us, emulate_token_us;
  std::optional<double> emulate_link_mbps;
  std::optional<int64_t> emulate_link_us;
  std::optional<std::string> host;
  std::optional<std::string> chat_template;
  std::optional<int> replicas;
  std::optional<std::string> log_format, log_level;
  bool detach = false;
  bool no_router = false;
  bool no_restart = false;
  std::string state;
  std::string log_dir;
  int health_timeout_s = 60;
  bool tls = false;  // mutual TLS + HTTPS with a throwaway CA (cluster/tls_certs.h)
  std::optional<std::string> tls_dir;
  std::optional<std::string> api_keys_file;
};

// Removes the link emulation of a foreground cluster, or of one whose start failed, and the state
// file that recorded it; Release() keeps both (a detached cluster).
class LinkCleanup {
 public:
  LinkCleanup(cluster::LinkTopology links, std::string state_path)
      : links_(std::move(links)), state_path_(std::move(state_path)) {}
  LinkCleanup(const LinkCleanup&) = delete;
  LinkCleanup& operator=(const LinkCleanup&) = delete;
  ~LinkCleanup() {
    if (released_) return;
    if (absl::Status st = cluster::RemoveLinks(links_); !st.ok()) {
      std::cerr << "error: " << st.message() << "\n";
      return;  // the state file still names what is left
    }
    std::remove(state_path_.c_str());
    std::fprintf(stderr, "removed link emulation (%zu network namespaces)\n",
                 links_.namespaces.size());
  }
  void Release() { released_ = true; }

 private:
  cluster::LinkTopology links_;
  std::string state_path_;
  bool released_ = false;
};

// Checks root and the tools, refuses when the state file still names a cluster, plans the
// topology, records it in the state file and creates it.
absl::StatusOr<cluster::LinkTopology> SetUpLinks(const cluster::ClusterConfig& c,
                                                 const std::string& state_path) {
  if (absl::Status st = cluster::CheckLinkEmulationAvailable(); !st.ok()) return st;
  if (auto old = cluster::ReadState(state_path); old.ok()) {
    bool alive = !old->links.empty();
    for (const auto& p : old->processes) {
      alive = alive || cluster::ProcessAlive(p.pid, p.start_time);
    }
    if (alive) {
      return absl::FailedPreconditionError(
          "the state file " + state_path + " still names a cluster (or its link emulation); " +
          "stop it first with `pipeinfer down --state " + state_path + "`");
    }
  }
  absl::StatusOr<cluster::LinkTopology> t = cluster::PlanLinks(c.stages, c.emulate_link_mbps);
  if (!t.ok()) return t.status();
  cluster::ClusterState pending;
  pending.links = *t;
  if (absl::Status st = cluster::WriteState(pending, state_path); !st.ok()) return st;
  if (absl::Status st = cluster::CreateLinks(*t); !st.ok()) {
    std::remove(state_path.c_str());  // CreateLinks removed what it had created
    return st;
  }
  std::printf("link emulation: %d network namespaces (%s-s*), %g Mbit/s per direction, %s\n",
              c.stages, t->prefix.c_str(), c.emulate_link_mbps, t->block.c_str());
  return t;
}

// The supervision loop of foreground `up` and of the detached supervisor: until a signal, a
// crashed stage, draft service or router is started again (with backoff) with its command line;
// requests in flight resume once the pipeline is back (crash recovery). Events go to stderr (the
// terminal, or the supervisor's log), time-stamped.
void Supervise(cluster::Supervisor& sup) {
  while (!g_stop) {
    for (const std::string& line : sup.RestartExited()) {
      const std::time_t now = std::time(nullptr);
      std::tm tm{};
      gmtime_r(&now, &tm);
      char ts[32];
      std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
      std::fprintf(stderr, "%s supervisor: %s\n", ts, line.c_str());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

// Where the detached supervisor of the cluster described by `state_path` logs: next to it.
std::string SupervisorLogPath(const std::string& state_path) {
  std::string base = state_path;
  if (base.size() > 5 && base.compare(base.size() - 5, 5, ".json") == 0)
    base.resize(base.size() - 5);
  return base + ".supervisor.log";
}

int RunUp(const UpArgs& a) {
  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGHUP, &sa, nullptr);
  // --detach: from here on this is the supervisor (detach.h); the command waits for it.
  if (a.detach) {
    if (const int rc = ForkSupervisor(&g_stop); rc >= 0) return rc;
  }

  cluster::ClusterConfig c;
  if (!a.config.empty()) {
    auto loaded = cluster::LoadClusterConfig(a.config);
    if (!loaded.ok()) return Fail(std::string(loaded.status().message()));
    c = *loaded;
  }
  if (a.model) c.model = *a.model;
  if (a.stages) c.stages = *a.stages;
  if (a.draft_model) c.draft_model = *a.draft_model;
  for (const spec::Knob& k : spec::Knobs()) {
    if (!a.knobs.given(k)) continue;
    const std::string value = spec::FormatKnob(k, a.knobs.params());
    if (k.type == spec::KnobType::kMode) {
      c.mode = value;
    } else {
      c.spec[std::string(k.name)] = value;
    }
  }
  for (const auto& [key, value] : a.draft_options) c.spec[key] = value;
  if (a.http_port) c.http_port = *a.http_port;
  if (a.grpc_port) c.grpc_port = *a.grpc_port;
  if (a.base_port) c.base_port = *a.base_port;
  if (a.metrics_base_port) c.metrics_base_port = *a.metrics_base_port;
  if (a.threads) c.threads = *a.threads;
  if (a.stage_devices) c.devices = cluster::SplitStageDevices(*a.stage_devices);
  if (a.kv_tokens) c.kv_tokens = *a.kv_tokens;
  if (a.concurrency) c.concurrency = *a.concurrency;
  if (a.kv_memory) c.kv_memory = *a.kv_memory;
  if (a.max_batch_tokens) c.max_batch_tokens = *a.max_batch_tokens;
  if (a.emulate_run_us) c.emulate_run_us = *a.emulate_run_us;
  if (a.emulate_token_us) c.emulate_token_us = *a.emulate_token_us;
  if (a.emulate_link_mbps) c.emulate_link_mbps = *a.emulate_link_mbps;
  if (a.emulate_link_us) c.emulate_link_us = *a.emulate_link_us;
  if (a.host) c.host = *a.host;
  if (a.chat_template) c.chat_template = *a.chat_template;
  if (a.replicas) c.replicas = *a.replicas;
  if (a.log_format) c.log_format = *a.log_format;
  if (a.log_level) c.log_level = *a.log_level;
  if (a.tls_dir) c.tls_dir = *a.tls_dir;
  if (a.tls && c.tls_dir.empty()) c.tls_dir = cluster::DefaultRuntimeDir() + "/tls";
  if (a.api_keys_file) c.api_keys_file = *a.api_keys_file;
  if (!c.tls_dir.empty()) {
    std::vector<std::string> names = {"draft", "router", "client"};
    for (int i = 0; i < c.stages; ++i) names.push_back(cluster::StageCertName(i));
    if (auto st = cluster::MakeClusterCerts(c.tls_dir, names, c.host); !st.ok()) {
      return Fail(std::string(st.message()));
    }
    std::printf(
        "TLS: mutual TLS between every process, HTTPS at the router; certificates in %s "
        "(clients: --tls-dir %s)\n",
        c.tls_dir.c_str(), c.tls_dir.c_str());
  }
  if (auto st = cluster::ValidateClusterConfig(c); !st.ok()) {
    return Fail(std::string(st.message()));
  }
  const std::string state_path = a.state.empty() ? DefaultStatePath() : a.state;
  if (a.detach) {
    if (auto old = cluster::ReadState(state_path); old.ok()) {
      std::vector<cluster::ProcessInfo> named = old->processes;
      named.emplace_back();
      named.back().pid = old->supervisor.pid;
      named.back().start_time = old->supervisor.start_time;
      for (const auto& p : named) {
        if (cluster::ProcessAlive(p.pid, p.start_time)) {
          return Fail("a cluster is already running (state file " + state_path +
                      "); stop it first with `pipeinfer down --state " + state_path + "`");
        }
      }
    }
  }

  // Link emulation: namespaces and rate-limited veths, created before any process starts and
  // recorded in the state file first, so that `down` removes them even after a crash of `up`.
  std::optional<LinkCleanup> cleanup;  // destroyed after `sup` below: processes stop first
  cluster::LinkTopology links;
  if (c.emulate_link_mbps > 0) {
    absl::StatusOr<cluster::LinkTopology> planned = SetUpLinks(c, state_path);
    if (!planned.ok()) return Fail(std::string(planned.status().message()));
    links = std::move(*planned);
    cleanup.emplace(links, state_path);
    if (g_stop) {
      std::cerr << "interrupted\n";
      return 1;
    }
  }

  cluster::SupervisorOptions o;
  o.links = links;
  o.bin_dir = cluster::SelfExeDir();
  o.log_dir = a.log_dir.empty() ? cluster::DefaultRuntimeDir() + "/logs" : a.log_dir;
  o.router = !a.no_router;
  o.detach = a.detach;
  o.health_timeout_s = a.health_timeout_s;
  o.restart = !a.no_restart;
  // Detached children outlive `up`: the state file names the supervisor, and each process as soon
  // as it starts.
  if (a.detach) {
    o.state_path = state_path;
    o.supervisor_log = SupervisorLogPath(state_path);
  }

  cluster::Supervisor sup(c, o);
  if (a.detach) {
    if (auto st = cluster::WriteState(sup.State(), state_path); !st.ok()) {
      return Fail(std::string(st.message()));
    }
  }
  if (auto st = sup.Start(&g_stop); !st.ok()) {
    // Start stopped what it had started; the link cleanup (if any) removes the state file.
    if (a.detach && !cleanup) std::remove(state_path.c_str());
    if (absl::IsCancelled(st)) {
      std::cerr << "interrupted; stopped every started process\n";
      return 1;
    }
    return Fail(std::string(st.message()));
  }
  const cluster::ClusterState state = sup.State();
  std::printf("cluster is up (%d stage%s%s, mode %s, model %s)\n", c.stages,
              c.stages == 1 ? "" : "s",
              c.replicas > 1 ? absl::StrCat(" x ", c.replicas, " replicas").c_str() : "",
              c.mode.c_str(), c.model.c_str());
  for (size_t i = 0; i < state.endpoints.stages.size(); ++i) {
    const std::vector<std::string> device = cluster::StageDeviceArgs(c, static_cast<int>(i));
    std::printf("  stage %zu        %s%s\n", i, state.endpoints.stages[i].c_str(),
                device.empty() ? "" : absl::StrCat("  (", device[1], ")").c_str());
  }
  std::printf("  draft          %s\n", state.endpoints.draft.c_str());
  for (size_t r = 1; r < state.endpoints.drafts.size(); ++r) {
    std::printf("  replica %zu      draft %s, stages from %s\n", r,
                state.endpoints.drafts[r].c_str(), c.StageAddress(0, static_cast<int>(r)).c_str());
  }
  if (!state.endpoints.router_http.empty()) {
    std::printf("  router http    %s://%s  (OpenAI API: /v1/chat/completions%s)\n",
                c.tls_dir.empty() ? "http" : "https", state.endpoints.router_http.c_str(),
                c.api_keys_file.empty() ? "" : ", API key needed");
    std::printf("  router grpc    %s\n", state.endpoints.router_grpc.c_str());
  }
  for (size_t i = 0; i < state.endpoints.stage_metrics.size(); ++i) {
    std::printf("  metrics        http://%s/metrics  (stage %zu)\n",
                state.endpoints.stage_metrics[i].c_str(), i);
  }
  if (!state.endpoints.draft_metrics.empty()) {
    std::printf("  metrics        http://%s/metrics  (draft)\n",
                state.endpoints.draft_metrics.c_str());
  }
  if (!state.endpoints.router_http.empty()) {
    std::printf("  metrics        %s://%s/metrics  (router)\n",
                c.tls_dir.empty() ? "http" : "https", state.endpoints.router_http.c_str());
  }
  std::printf("  logs           %s\n", state.log_dir.c_str());
  std::fflush(stdout);

  if (a.detach) {
    if (auto st = cluster::WriteState(state, state_path); !st.ok()) {
      return Fail(std::string(st.message()));  // the destructor stops the processes
    }
    std::printf("detached; state in %s (stop with `pipeinfer down --state %s`)\n",
                state_path.c_str(), state_path.c_str());
    std::printf(
        "supervised by pid %d (log %s): a process that crashes is restarted%s; see "
        "`pipeinfer status --state %s`\n",
        static_cast<int>(getpid()), o.supervisor_log.c_str(),
        o.restart ? "" : " (not with --no-restart: it is only recorded)", state_path.c_str());
    if (auto st = DetachOutput(o.supervisor_log); !st.ok()) return Fail(std::string(st.message()));
    std::fprintf(stderr, "supervising the cluster of %s (%zu processes)\n", state_path.c_str(),
                 state.processes.size());
    Supervise(sup);
    // `pipeinfer down` (or anyone) stopped the supervisor: the cluster keeps running, for `down`.
    sup.Release();
    if (cleanup) cleanup->Release();
    std::fprintf(stderr, "signal %d: no longer supervising; the processes keep running\n",
                 static_cast<int>(g_stop));
    return 0;
  }
  std::printf(
      "running in the foreground; a process that crashes is restarted%s; Ctrl-C stops the "
      "cluster\n",
      o.restart ? "" : " (not with --no-restart)");
  std::fflush(stdout);
  Supervise(sup);
  std::fprintf(stderr, "signal %d: stopping the cluster\n", static_cast<int>(g_stop));
  sup.StopAll();
  std::fprintf(stderr, "stopped\n");
  return 0;
}

int RunDown(const std::string& state_arg, int grace_ms) {
  const std::string path = state_arg.empty() ? DefaultStatePath() : state_arg;
  auto state = cluster::ReadState(path);
  if (!state.ok()) return Fail(std::string(state.status().message()));
  std::vector<std::string> report;
  // The supervisor first, so that nothing is restarted behind us; it may have restarted a process
  // since we read the file, so read it again (gone: the supervisor was still starting the cluster
  // and stopped what it had started).
  if (absl::Status ss = cluster::StopSupervisor(*state, grace_ms, &report); !ss.ok()) {
    for (const auto& line : report) std::printf("%s\n", line.c_str());
    return Fail(std::string(ss.message()));
  }
  if (state->supervisor.pid > 0) {
    if (auto again = cluster::ReadState(path); again.ok()) state = std::move(again);
  }
  const absl::Status st = cluster::StopState(*state, grace_ms, &report);
  for (const auto& line : report) std::printf("%s\n", line.c_str());
  if (!st.ok()) return Fail(std::string(st.message()));
  if (!state->links.empty()) {
    report.clear();
    const absl::Status ls = cluster::RemoveLinks(state->links, &report);
    for (const auto& line : report) std::printf("%s\n", line.c_str());
    if (!ls.ok()) return Fail(std::string(ls.message()));
  }
  std::remove(path.c_str());
  std::printf("cluster stopped\n");
  return 0;
}

// ------------------------------------------------------------------------------------------------
// chat (HTTP + SSE)

}  // namespace

void RegisterClusterCommands(CLI::App& app) {
  // up
  auto up_args = std::make_shared<UpArgs>();
  auto* up = app.add_subcommand("up", "Start a local cluster (stages, draft service, router)");
  auto& u = *up_args;
  up->add_option("--config,-c", u.config, "Cluster YAML file (flags override its keys)");
  up->add_option("--model,-m", u.model, "Target GGUF model");
  up->add_option("--stages,-n", u.stages, "Number of stage processes")->check(CLI::Range(1, 64));
  up->add_option("--draft-model", u.draft_model, "Draft GGUF (needed by sync and pipeinfer)");
  // The speculation knobs of spec/knobs.h (--mode, --draft-max, ..., --no-cancel), checked here
  // with the draft service's ranges and passed on to it (config key `spec:`; the mode is the
  // top-level `mode`).
  spec::AddKnobFlags(*up, &u.knobs);
  for (const std::string& key : cluster::DraftOptionKeys()) {
    std::string flag = "--" + key;
    std::replace(flag.begin(), flag.end(), '_', '-');
    up->add_option_function<std::string>(
        flag, [up_args, key](const std::string& v) { up_args->draft_options[key] = v; },
        "Draft model option passed to the draft service (see pipeinfer-draft --help)");
  }
  up->add_option("--http-port", u.http_port, "Router HTTP port")->check(CLI::Range(1, 65535));
  up->add_option("--grpc-port", u.grpc_port, "Router gRPC port")->check(CLI::Range(1, 65535));
  up->add_option("--base-port", u.base_port,
                 "First stage port (stages use base.., then the draft service, then router gRPC)")
      ->check(CLI::Range(1, 65535));
  up->add_option("--metrics-base-port", u.metrics_base_port,
                 "First stage /metrics port (stage i: +i; 0 = base port + stages + 2; -1 = none)")
      ->check(CLI::Range(-1, 65535));
  up->add_option("--threads,-t", u.threads, "Compute threads per stage")->check(CLI::Range(1, 256));
  up->add_option("--stage-devices", u.stage_devices,
                 "Where the stages compute, entries separated by ';': one for every stage or one "
                 "per stage, each cpu, cuda:N or a list of one kind splitting each layer over its "
                 "devices (\"cpu;cuda:0\", \"cuda:0,cuda:1\"); every replica's stage i gets entry "
                 "i (default: cpu; config key `devices`)");
  up->add_option("--kv-tokens", u.kv_tokens,
                 "KV capacity per stage, in tokens (default: sized by --concurrency)");
  up->add_option("--concurrency", u.concurrency,
                 "Requests generating at once: the router's slots, and what each stage's KV cache "
                 "is sized for (full-context requests with this mode's speculation headroom)")
      ->check(CLI::Range(1, 4096));
  up->add_option("--kv-memory", u.kv_memory,
                 "Memory budget in bytes for each stage's default-sized KV cache (default: a "
                 "quarter of physical memory)")
      ->check(CLI::PositiveNumber);
  up->add_option("--max-batch-tokens", u.max_batch_tokens,
                 "Most tokens one stage forward pass computes over the runs it batches")
      ->check(CLI::Range(1, 1 << 20));
  up->add_option("--emulate-run-us", u.emulate_run_us,
                 "Benchmarks: stages pad each forward to this many microseconds (+ per token)");
  up->add_option("--emulate-token-us", u.emulate_token_us,
                 "Benchmarks: padding per run token (see --emulate-run-us)");
  up->add_option("--emulate-link-mbps", u.emulate_link_mbps,
                 "Benchmarks: each stage in its own network namespace, links rate limited to this "
                 "many Mbit/s per direction with tc, and every message paced at that rate "
                 "in-process (serialization delay; needs root; docs/link-emulation.md)")
      ->check(CLI::Range(0.0, 100000.0));
  up->add_option("--emulate-link-us", u.emulate_link_us,
                 "Benchmarks: every message on a pipeline link is delayed by this many "
                 "microseconds (in-process, by the sender)")
      ->check(CLI::Range(int64_t{0}, int64_t{10000000}));
  up->add_option("--host", u.host, "Listen host for every process");
  up->add_option("--replicas", u.replicas,
                 "Independent pipelines (stages + draft service each) behind the one router")
      ->check(CLI::Range(1, 64));
  up->add_option("--log-format", u.log_format, "Every process's log format: text or json")
      ->check(CLI::IsMember({"text", "json"}));
  up->add_option("--log-level", u.log_level, "Every process's log level")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
  up->add_option("--chat-template", u.chat_template, "Router chat template override");
  up->add_flag("--tls", u.tls,
               "Mutual TLS between all processes and HTTPS at the router, with a throwaway CA "
               "made by the openssl CLI (in --tls-dir)");
  up->add_option("--tls-dir", u.tls_dir,
                 "Certificate directory (ca.pem, <name>.pem, <name>-key.pem; missing files are "
                 "made; implies --tls; default /tmp/pipeinfer-<uid>/tls)");
  up->add_option("--api-keys-file", u.api_keys_file,
                 "The router's API keys, one per line (clients: --api-key or PIPEINFER_API_KEY)");
  up->add_flag("--detach,-d", u.detach,
               "Return once healthy, leaving a supervisor behind that restarts crashed processes "
               "(see `pipeinfer status`; stop with `pipeinfer down`)");
  up->add_flag("--no-router", u.no_router, "Start only the stages and the draft service");
  up->add_flag("--no-restart", u.no_restart,
               "Supervision only records a process that crashes (exit status, in the output or "
               "`pipeinfer status`) instead of restarting it");
  up->add_option("--state", u.state,
                 "State file for --detach (default /tmp/pipeinfer-<uid>/cluster.json)");
  up->add_option("--log-dir", u.log_dir, "Log directory (default /tmp/pipeinfer-<uid>/logs)");
  up->add_option("--health-timeout", u.health_timeout_s,
                 "Seconds each process may take to become SERVING")
      ->check(CLI::Range(1, 3600));
  up->final_callback([up_args] {
    if (int rc = RunUp(*up_args)) throw CLI::RuntimeError(rc);
  });

  // down
  auto down_state = std::make_shared<std::string>();
  auto down_grace = std::make_shared<int>(10000);
  auto* down = app.add_subcommand("down", "Stop the cluster started by `pipeinfer up --detach`");
  down->add_option("--state", *down_state,
                   "State file (default /tmp/pipeinfer-<uid>/cluster.json)");
  down->add_option("--grace-ms", *down_grace, "How long to wait after SIGTERM before SIGKILL")
      ->check(CLI::Range(0, 600000));
  down->final_callback([down_state, down_grace] {
    if (int rc = RunDown(*down_state, *down_grace)) throw CLI::RuntimeError(rc);
  });

  RegisterStatusCommand(app);
}

}  // namespace pipeinfer::cli
