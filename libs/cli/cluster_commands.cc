#include "cli/cluster_commands.h"

#include <grpcpp/grpcpp.h>
#include <httplib.h>
#include <signal.h>
#include <unistd.h>
#include <algorithm>
#include <map>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cluster/config.h"
#include "cluster/supervisor.h"
#include "pipeinfer/v1/draft.grpc.pb.h"
#include "pipeinfer/v1/router.grpc.pb.h"
#include "pipeinfer/v1/stage.grpc.pb.h"

namespace pipeinfer::cli {
namespace {

using Clock = std::chrono::steady_clock;

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
  std::optional<std::string> mode;
  std::optional<std::string> draft_model;
  std::map<std::string, std::string> spec;  // speculation knobs given as flags
  std::optional<int> http_port;
  std::optional<int> grpc_port;
  std::optional<int> base_port;
  std::optional<int> metrics_base_port;
  std::optional<int> threads;
  std::optional<int64_t> kv_tokens;
  std::optional<int64_t> emulate_run_us, emulate_token_us;
  std::optional<std::string> host;
  std::optional<std::string> chat_template;
  bool detach = false;
  bool no_router = false;
  std::string state;
  std::string log_dir;
  int health_timeout_s = 60;
};

int RunUp(const UpArgs& a) {
  cluster::ClusterConfig c;
  if (!a.config.empty()) {
    auto loaded = cluster::LoadClusterConfig(a.config);
    if (!loaded.ok()) return Fail(std::string(loaded.status().message()));
    c = *loaded;
  }
  if (a.model) c.model = *a.model;
  if (a.stages) c.stages = *a.stages;
  if (a.mode) c.mode = *a.mode;
  if (a.draft_model) c.draft_model = *a.draft_model;
  for (const auto& [key, value] : a.spec) c.spec[key] = value;
  if (a.http_port) c.http_port = *a.http_port;
  if (a.grpc_port) c.grpc_port = *a.grpc_port;
  if (a.base_port) c.base_port = *a.base_port;
  if (a.metrics_base_port) c.metrics_base_port = *a.metrics_base_port;
  if (a.threads) c.threads = *a.threads;
  if (a.kv_tokens) c.kv_tokens = *a.kv_tokens;
  if (a.emulate_run_us) c.emulate_run_us = *a.emulate_run_us;
  if (a.emulate_token_us) c.emulate_token_us = *a.emulate_token_us;
  if (a.host) c.host = *a.host;
  if (a.chat_template) c.chat_template = *a.chat_template;
  if (auto st = cluster::ValidateClusterConfig(c); !st.ok()) {
    return Fail(std::string(st.message()));
  }
  const std::string state_path = a.state.empty() ? DefaultStatePath() : a.state;
  if (a.detach) {
    if (auto old = cluster::ReadState(state_path); old.ok()) {
      for (const auto& p : old->processes) {
        if (cluster::ProcessAlive(p.pid, p.start_time)) {
          return Fail("a cluster is already running (state file " + state_path +
                      "); stop it first with `pipeinfer down --state " + state_path + "`");
        }
      }
    }
  }

  cluster::SupervisorOptions o;
  o.bin_dir = cluster::SelfExeDir();
  o.log_dir = a.log_dir.empty() ? cluster::DefaultRuntimeDir() + "/logs" : a.log_dir;
  o.router = !a.no_router;
  o.detach = a.detach;
  o.health_timeout_s = a.health_timeout_s;

  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGHUP, &sa, nullptr);

  cluster::Supervisor sup(c, o);
  if (auto st = sup.Start(&g_stop); !st.ok()) {
    if (absl::IsCancelled(st)) {
      std::cerr << "interrupted; stopped every started process\n";
      return 1;
    }
    return Fail(std::string(st.message()));
  }
  const cluster::ClusterState state = sup.State();
  std::printf("cluster is up (%d stage%s, mode %s, model %s)\n", c.stages, c.stages == 1 ? "" : "s",
              c.mode.c_str(), c.model.c_str());
  for (size_t i = 0; i < state.endpoints.stages.size(); ++i) {
    std::printf("  stage %zu        %s\n", i, state.endpoints.stages[i].c_str());
  }
  std::printf("  draft          %s\n", state.endpoints.draft.c_str());
  if (!state.endpoints.router_http.empty()) {
    std::printf("  router http    http://%s  (OpenAI API: /v1/chat/completions)\n",
                state.endpoints.router_http.c_str());
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
    std::printf("  metrics        http://%s/metrics  (router)\n",
                state.endpoints.router_http.c_str());
  }
  std::printf("  logs           %s\n", state.log_dir.c_str());
  std::fflush(stdout);

  if (a.detach) {
    if (auto st = cluster::WriteState(state, state_path); !st.ok()) {
      return Fail(std::string(st.message()));  // the destructor stops the processes
    }
    sup.Release();
    std::printf("detached; state in %s (stop with `pipeinfer down --state %s`)\n",
                state_path.c_str(), state_path.c_str());
    return 0;
  }
  std::printf("running in the foreground; Ctrl-C stops the cluster\n");
  std::fflush(stdout);
  while (!g_stop) {
    const std::string gone = sup.ExitedProcess();
    if (!gone.empty()) {
      std::cerr << "error: " << gone << "; stopping the cluster\n";
      sup.StopAll();
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
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
  const absl::Status st = cluster::StopState(*state, grace_ms, &report);
  for (const auto& line : report) std::printf("%s\n", line.c_str());
  if (!st.ok()) return Fail(std::string(st.message()));
  std::remove(path.c_str());
  std::printf("cluster stopped\n");
  return 0;
}

// ------------------------------------------------------------------------------------------------
// chat (HTTP + SSE)

struct ChatArgs {
  std::string message;
  std::string router_http;
  std::string state;
  std::string system;
  int max_tokens = 256;
  double temperature = 0.7;
  std::optional<uint64_t> seed;
};

std::string RouterHttpFromState(const std::string& state_arg) {
  auto st = cluster::ReadState(state_arg.empty() ? DefaultStatePath() : state_arg);
  if (st.ok() && !st->endpoints.router_http.empty()) return st->endpoints.router_http;
  return "127.0.0.1:8080";
}

bool SplitHostPort(const std::string& addr, std::string& host, int& port) {
  std::string a = addr;
  if (a.rfind("http://", 0) == 0) a = a.substr(7);
  while (!a.empty() && a.back() == '/') a.pop_back();
  const size_t colon = a.rfind(':');
  if (colon == std::string::npos) return false;
  host = a.substr(0, colon);
  try {
    port = std::stoi(a.substr(colon + 1));
  } catch (...) {
    return false;
  }
  return port > 0 && port < 65536 && !host.empty();
}

int RunChat(const ChatArgs& a) {
  const std::string addr = a.router_http.empty() ? RouterHttpFromState(a.state) : a.router_http;
  std::string host;
  int port = 0;
  if (!SplitHostPort(addr, host, port)) return Fail("bad router address " + addr);
  nlohmann::json body;
  body["messages"] = nlohmann::json::array();
  if (!a.system.empty()) body["messages"].push_back({{"role", "system"}, {"content", a.system}});
  body["messages"].push_back({{"role", "user"}, {"content", a.message}});
  body["stream"] = true;
  body["max_tokens"] = a.max_tokens;
  body["temperature"] = a.temperature;
  body["stream_options"] = {{"include_usage", true}};
  if (a.seed) body["seed"] = *a.seed;

  httplib::Client cli(host, port);
  cli.set_connection_timeout(5, 0);
  cli.set_read_timeout(600, 0);

  const auto t0 = Clock::now();
  std::optional<Clock::time_point> first;
  std::string buffer, error_text, finish_reason;
  int chunks = 0;
  int64_t completion_tokens = -1;
  bool done = false;
  std::string error_body;
  int status = 0;

  auto handle_event = [&](const std::string& event) {
    std::istringstream in(event);
    std::string line, data;
    while (std::getline(in, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.rfind("data:", 0) == 0) {
        std::string d = line.substr(5);
        if (!d.empty() && d[0] == ' ') d = d.substr(1);
        if (!data.empty()) data += "\n";
        data += d;
      }
    }
    if (data.empty()) return;
    if (data == "[DONE]") {
      done = true;
      return;
    }
    auto j = nlohmann::json::parse(data, nullptr, false);
    if (j.is_discarded()) return;
    if (j.contains("error")) {
      error_text = j["error"].value("message", j["error"].dump());
      return;
    }
    if (j.contains("usage") && j["usage"].is_object()) {
      completion_tokens = j["usage"].value("completion_tokens", completion_tokens);
    }
    if (!j.contains("choices") || !j["choices"].is_array() || j["choices"].empty()) return;
    const auto& ch = j["choices"][0];
    if (ch.contains("finish_reason") && ch["finish_reason"].is_string()) {
      finish_reason = ch["finish_reason"].get<std::string>();
    }
    if (ch.contains("delta") && ch["delta"].contains("content") &&
        ch["delta"]["content"].is_string()) {
      const std::string text = ch["delta"]["content"].get<std::string>();
      if (!text.empty()) {
        if (!first) first = Clock::now();
        ++chunks;
        std::fwrite(text.data(), 1, text.size(), stdout);
        std::fflush(stdout);
      }
    }
  };

  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/chat/completions";
  req.headers = {{"Accept", "text/event-stream"}};
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  req.response_handler = [&](const httplib::Response& r) {
    status = r.status;
    return true;
  };
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    if (status != 200) {
      error_body.append(data, n);
      return true;
    }
    buffer.append(data, n);
    while (true) {
      size_t pos = buffer.find("\n\n");
      size_t len = 2;
      const size_t crlf = buffer.find("\r\n\r\n");
      if (crlf != std::string::npos && (pos == std::string::npos || crlf < pos)) {
        pos = crlf;
        len = 4;
      }
      if (pos == std::string::npos) break;
      handle_event(buffer.substr(0, pos));
      buffer.erase(0, pos + len);
    }
    return true;
  };
  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  const bool sent = cli.send(req, res, err);
  if (!buffer.empty()) handle_event(buffer);
  const auto t1 = Clock::now();
  if (!sent) {
    return Fail("cannot reach the router at http://" + addr + ": " + httplib::to_string(err) +
                " (is the cluster up? `pipeinfer up --detach`)");
  }
  if (status != 200) {
    std::string msg = error_body;
    auto j = nlohmann::json::parse(error_body, nullptr, false);
    if (!j.is_discarded() && j.contains("error")) msg = j["error"].value("message", msg);
    return Fail("router returned HTTP " + std::to_string(status) + ": " + msg);
  }
  std::printf("\n");
  std::fflush(stdout);
  if (!error_text.empty()) return Fail("generation failed: " + error_text);
  if (!done) std::cerr << "warning: the stream ended without [DONE]\n";
  const int64_t tokens = completion_tokens >= 0 ? completion_tokens : chunks;
  const double total_s = std::chrono::duration<double>(t1 - t0).count();
  const double ttft_ms =
      first ? std::chrono::duration<double, std::milli>(*first - t0).count() : NAN;
  const double gen_s = first ? std::chrono::duration<double>(t1 - *first).count() : 0.0;
  std::fprintf(stderr,
               "[%lld tokens in %.2f s, %.1f tokens/s, TTFT %.0f ms, decode %.1f tokens/s%s%s]\n",
               static_cast<long long>(tokens), total_s, total_s > 0 ? tokens / total_s : 0.0,
               ttft_ms, gen_s > 0 && tokens > 1 ? (tokens - 1) / gen_s : 0.0,
               finish_reason.empty() ? "" : ", finish ", finish_reason.c_str());
  return 0;
}

// ------------------------------------------------------------------------------------------------
// complete (gRPC Router.Complete)

std::shared_ptr<grpc::Channel> ChannelFor(const std::string& addr) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  return grpc::CreateCustomChannel(addr, grpc::InsecureChannelCredentials(), args);
}

struct CompleteArgs {
  std::string router;
  std::string prompt;
  std::string prompt_file;
  int max_tokens = 0;
  double temperature = 0.0;
  std::optional<uint64_t> seed;
  bool print_ids = false;
  bool ignore_eos = false;
  std::string mode;  // empty = the draft service's default
  bool no_cancel = false, no_continuous = false;
  bool show_counters = false;
  std::optional<uint32_t> draft_max, max_inflight, max_branches;
  std::optional<float> p_accept, p_recovery, p_decay, p_split;
};

int RunComplete(const CompleteArgs& a) {
  std::string prompt = a.prompt;
  if (!a.prompt_file.empty()) {
    std::ifstream f(a.prompt_file, std::ios::binary);
    if (!f) return Fail("cannot read " + a.prompt_file);
    std::stringstream ss;
    ss << f.rdbuf();
    prompt = ss.str();
  }
  v1::CompletionRequest req;
  req.set_text(prompt);
  req.mutable_options()->set_max_tokens(a.max_tokens);
  req.mutable_options()->mutable_sampling()->set_temperature(static_cast<float>(a.temperature));
  if (a.seed) req.mutable_options()->mutable_sampling()->set_seed(*a.seed);
  req.mutable_options()->set_ignore_eos(a.ignore_eos);
  v1::SpecConfig* spec = req.mutable_options()->mutable_spec();
  if (a.mode == "plain") spec->set_mode(v1::SPEC_MODE_PLAIN);
  if (a.mode == "sync") spec->set_mode(v1::SPEC_MODE_SYNC);
  if (a.mode == "pipeinfer") spec->set_mode(v1::SPEC_MODE_PIPEINFER);
  if (a.no_cancel) spec->set_no_cancel(true);
  if (a.no_continuous) spec->set_no_continuous(true);
  if (a.draft_max) spec->set_draft_max(*a.draft_max);
  if (a.max_inflight) spec->set_max_inflight(*a.max_inflight);
  if (a.p_accept) spec->set_p_accept(*a.p_accept);
  if (a.p_recovery) spec->set_p_recovery(*a.p_recovery);
  if (a.p_decay) spec->set_p_decay(*a.p_decay);
  if (a.p_split) spec->set_p_split(*a.p_split);
  if (a.max_branches) spec->set_max_branches(*a.max_branches);

  auto stub = v1::Router::NewStub(ChannelFor(a.router));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));
  auto reader = stub->Complete(&ctx, req);
  std::vector<uint32_t> ids;
  v1::GenerateEvent ev;
  std::string error;
  while (reader->Read(&ev)) {
    if (ev.has_delta()) {
      for (uint32_t t : ev.delta().token_ids()) ids.push_back(t);
      if (!a.print_ids && !ev.delta().text().empty()) {
        std::fwrite(ev.delta().text().data(), 1, ev.delta().text().size(), stdout);
        std::fflush(stdout);
      }
    } else if (ev.has_error()) {
      error = ev.error().message();
    } else if (ev.has_finished() && a.show_counters) {
      const v1::SpecCounters& c = ev.finished().spec();
      std::fprintf(
          stderr,
          "mode %s: runs plain %llu, speculative %llu, invalidated %llu, cancelled %llu, "
          "tombstoned %llu; tokens drafted %llu, accepted %llu (siblings %llu); "
          "verifications %llu; ttft %.1f ms, total %.1f ms\n",
          v1::SpecMode_Name(c.mode()).c_str(), static_cast<unsigned long long>(c.runs_plain()),
          static_cast<unsigned long long>(c.runs_speculative()),
          static_cast<unsigned long long>(c.runs_invalidated()),
          static_cast<unsigned long long>(c.runs_cancelled()),
          static_cast<unsigned long long>(c.runs_tombstoned()),
          static_cast<unsigned long long>(c.tokens_drafted()),
          static_cast<unsigned long long>(c.tokens_accepted()),
          static_cast<unsigned long long>(c.tokens_accepted_sibling()),
          static_cast<unsigned long long>(c.verifications()),
          ev.finished().timings().ttft_us() / 1000.0, ev.finished().timings().total_us() / 1000.0);
    }
  }
  const grpc::Status st = reader->Finish();
  if (!st.ok()) {
    return Fail("Router.Complete at " + a.router +
                " failed: " + (error.empty() ? st.error_message() : error) + " (gRPC code " +
                std::to_string(st.error_code()) + ")");
  }
  if (a.print_ids) {
    for (size_t i = 0; i < ids.size(); ++i) std::printf(i ? " %u" : "%u", ids[i]);
  }
  std::printf("\n");
  return 0;
}

// ------------------------------------------------------------------------------------------------
// stats

std::string FormatValue(double v) {
  char buf[64];
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 9.007199254740992e15) {
    std::snprintf(buf, sizeof(buf), "%lld", static_cast<long long>(v));
  } else {
    std::snprintf(buf, sizeof(buf), "%.9g", v);
  }
  return buf;
}

struct StatsArgs {
  std::string stage, draft, router;
  bool pipeline = false;
};

// Prints `name value` lines of one service, or `service.name value` lines with `qualified`.
// A service that could not be reached is reported on stderr; returns false then.
bool PrintService(const v1::ServiceStats& s, bool qualified) {
  if (s.has_error()) {
    std::fprintf(stderr, "error: %s%s%s: %s\n", s.service().c_str(),
                 s.address().empty() ? "" : " at ", s.address().c_str(),
                 s.error().message().c_str());
    return false;
  }
  for (const auto& c : s.counters()) {
    if (qualified) {
      std::printf("%s.%s %s\n", s.service().c_str(), c.name().c_str(),
                  FormatValue(c.value()).c_str());
    } else {
      std::printf("%s %s\n", c.name().c_str(), FormatValue(c.value()).c_str());
    }
  }
  return true;
}

int RunStats(const StatsArgs& a) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  grpc::Status st;
  google::protobuf::RepeatedPtrField<v1::ServiceStats> services;
  const std::string addr = !a.router.empty() ? a.router : !a.stage.empty() ? a.stage : a.draft;
  const std::string what = !a.router.empty() ? "GetClusterStats" : "GetStats";
  if (!a.router.empty()) {
    v1::ClusterStatsRequest req;
    req.set_include_stages(true);
    v1::ClusterStatsResponse resp;
    st = v1::Router::NewStub(ChannelFor(a.router))->GetClusterStats(&ctx, req, &resp);
    services = std::move(*resp.mutable_services());
  } else {
    v1::StatsRequest req;
    req.set_include_pipeline(a.pipeline);
    v1::StatsResponse resp;
    if (!a.stage.empty()) {
      st = v1::Stage::NewStub(ChannelFor(a.stage))->GetStats(&ctx, req, &resp);
    } else {
      st = v1::Draft::NewStub(ChannelFor(a.draft))->GetStats(&ctx, req, &resp);
    }
    services = std::move(*resp.mutable_services());
  }
  if (!st.ok()) return Fail(what + " at " + addr + " failed: " + st.error_message());
  if (services.empty()) return Fail(what + " at " + addr + " returned no statistics");
  const bool qualified = !a.router.empty() || a.pipeline;
  if (!qualified) {
    if (services[0].has_error()) {
      return Fail(what + " at " + addr + ": " + services[0].error().message());
    }
    PrintService(services[0], false);
    return 0;
  }
  bool all_ok = true;
  for (const auto& s : services) all_ok = PrintService(s, true) && all_ok;
  return all_ok ? 0 : 1;
}

}  // namespace

void RegisterClusterCommands(CLI::App& app) {
  // up
  auto up_args = std::make_shared<UpArgs>();
  auto* up = app.add_subcommand("up", "Start a local cluster (stages, draft service, router)");
  auto& u = *up_args;
  up->add_option("--config,-c", u.config, "Cluster YAML file (flags override its keys)");
  up->add_option("--model,-m", u.model, "Target GGUF model");
  up->add_option("--stages,-n", u.stages, "Number of stage processes")->check(CLI::Range(1, 64));
  up->add_option("--mode", u.mode, "Speculation mode: plain, sync or pipeinfer")
      ->check(CLI::IsMember({"plain", "sync", "pipeinfer"}));
  up->add_option("--draft-model", u.draft_model, "Draft GGUF (needed by sync and pipeinfer)");
  for (const char* key : {"draft_max", "p_accept", "p_split", "p_recovery", "p_decay",
                          "max_inflight", "draft_threads", "draft_noise", "max_branches"}) {
    std::string flag = std::string("--") + key;
    std::replace(flag.begin(), flag.end(), '_', '-');
    up->add_option_function<std::string>(
        flag, [up_args, k = std::string(key)](const std::string& v) { up_args->spec[k] = v; },
        "Speculation knob passed to the draft service (see pipeinfer-draft --help)");
  }
  for (const char* key : {"no_cancel", "no_continuous"}) {
    std::string flag = std::string("--") + key;
    std::replace(flag.begin(), flag.end(), '_', '-');
    up->add_flag_callback(
        flag, [up_args, k = std::string(key)] { up_args->spec[k] = "true"; },
        "Ablation passed to the draft service");
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
  up->add_option("--kv-tokens", u.kv_tokens, "KV capacity per stage, in tokens");
  up->add_option("--emulate-run-us", u.emulate_run_us,
                 "Benchmarks: stages pad each forward to this many microseconds (+ per token)");
  up->add_option("--emulate-token-us", u.emulate_token_us,
                 "Benchmarks: padding per run token (see --emulate-run-us)");
  up->add_option("--host", u.host, "Listen host for every process");
  up->add_option("--chat-template", u.chat_template, "Router chat template override");
  up->add_flag("--detach,-d", u.detach, "Return once healthy (stop with `pipeinfer down`)");
  up->add_flag("--no-router", u.no_router, "Start only the stages and the draft service");
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

  // chat
  auto chat_args = std::make_shared<ChatArgs>();
  auto* chat = app.add_subcommand("chat", "Stream a chat answer through the router's HTTP API");
  chat->add_option("message", chat_args->message, "The user message")->required();
  chat->add_option("--router-http", chat_args->router_http,
                   "Router HOST:PORT (default: from the state file, else 127.0.0.1:8080)");
  chat->add_option("--state", chat_args->state, "State file to read the router address from");
  chat->add_option("--system", chat_args->system, "A system message");
  chat->add_option("--max-tokens", chat_args->max_tokens, "Most tokens to generate")
      ->check(CLI::Range(1, 1 << 20));
  chat->add_option("--temperature", chat_args->temperature, "Sampling temperature (0 = greedy)");
  chat->add_option("--seed", chat_args->seed, "Sampling seed");
  chat->final_callback([chat_args] {
    if (int rc = RunChat(*chat_args)) throw CLI::RuntimeError(rc);
  });

  // complete
  auto cargs = std::make_shared<CompleteArgs>();
  auto* complete = app.add_subcommand("complete", "Complete a raw prompt through Router.Complete");
  complete->add_option("--router", cargs->router, "Router gRPC HOST:PORT")->required();
  auto* p = complete->add_option("--prompt,-p", cargs->prompt, "Prompt text");
  auto* pf = complete->add_option("--prompt-file,-f", cargs->prompt_file, "Prompt file");
  p->excludes(pf);
  complete->add_option("--max-tokens,-n", cargs->max_tokens, "Most tokens to generate")
      ->required()
      ->check(CLI::Range(1, 1 << 20));
  complete->add_option("--temperature", cargs->temperature, "Sampling temperature (0 = greedy)");
  complete->add_option("--seed", cargs->seed, "Sampling seed");
  complete->add_flag("--ignore-eos", cargs->ignore_eos, "Keep generating past EOS");
  complete->add_option("--mode", cargs->mode, "Speculation mode (default: the service's)")
      ->check(CLI::IsMember({"plain", "sync", "pipeinfer"}));
  complete->add_flag("--no-cancel", cargs->no_cancel, "Ablation: never cancel runs");
  complete->add_flag("--no-continuous", cargs->no_continuous,
                     "Ablation: one micro-batch per verification");
  complete->add_option("--draft-max", cargs->draft_max, "Most draft tokens per micro-batch");
  complete->add_option("--max-inflight", cargs->max_inflight, "Most runs in flight per request");
  complete->add_option("--p-accept", cargs->p_accept, "Draft confidence cutoff");
  complete->add_option("--p-recovery", cargs->p_recovery, "Cutoff increase per micro-batch");
  complete->add_option("--p-decay", cargs->p_decay, "Cutoff decrease per failed attempt");
  complete->add_option("--p-split", cargs->p_split, "Token-tree split threshold");
  complete->add_option("--max-branches", cargs->max_branches, "Most token-tree branches");
  complete->add_flag("--show-counters", cargs->show_counters,
                     "Print the request's speculation counters and timings to stderr");
  complete->add_flag("--print-ids", cargs->print_ids,
                     "Print the generated token ids (decimal, space separated) instead of text");
  complete->final_callback([cargs, p, pf] {
    if (p->count() == 0 && pf->count() == 0) {
      throw CLI::RequiredError("--prompt or --prompt-file");
    }
    if (int rc = RunComplete(*cargs)) throw CLI::RuntimeError(rc);
  });

  // stats
  auto sargs = std::make_shared<StatsArgs>();
  auto* stats = app.add_subcommand(
      "stats",
      "Print counters: `name value` per line for one --stage or --draft; `service.name value` "
      "for --router (router, draft service and every stage) or with --pipeline");
  auto* so = stats->add_option("--stage", sargs->stage, "Stage HOST:PORT");
  auto* dop = stats->add_option("--draft", sargs->draft, "Draft service HOST:PORT");
  auto* rop = stats->add_option("--router", sargs->router,
                                "Router gRPC HOST:PORT (Router.GetClusterStats with every stage)");
  so->excludes(dop);
  so->excludes(rop);
  dop->excludes(rop);
  auto* pop = stats->add_flag("--pipeline", sargs->pipeline,
                              "With --stage or --draft: also every stage after it");
  pop->excludes(rop);
  stats->final_callback([sargs, so, dop, rop] {
    if (so->count() == 0 && dop->count() == 0 && rop->count() == 0) {
      throw CLI::RequiredError("--stage, --draft or --router");
    }
    if (int rc = RunStats(*sargs)) throw CLI::RuntimeError(rc);
  });
}

}  // namespace pipeinfer::cli
