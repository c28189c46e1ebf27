// Client commands against a running cluster: `pipeinfer chat` (HTTP, streamed), `complete`
// (Router.Complete over gRPC) and `stats` (every service's counters).
#include "cli/client_commands.h"

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

#include "cli/client_auth.h"
#include "cluster/config.h"
#include "cluster/supervisor.h"
#include "draft_server/spec_proto.h"
#include "pipeinfer/v1/draft.grpc.pb.h"
#include "pipeinfer/v1/router.grpc.pb.h"
#include "pipeinfer/v1/stage.grpc.pb.h"
#include "rpc/credentials.h"
#include "spec/knob_flags.h"
#include "spec/knobs.h"

namespace pipeinfer::cli {
namespace {

using Clock = std::chrono::steady_clock;

int Fail(const std::string& msg) {
  std::cerr << "error: " << msg << "\n";
  return 1;
}

std::string DefaultStatePath() { return cluster::DefaultRuntimeDir() + "/cluster.json"; }

struct ChatArgs {
  ClientAuth auth;
  std::string message;
  std::string router_http;
  std::string state;
  std::string system;
  int max_tokens = 256;
  double temperature = 0.7;
  std::optional<uint64_t> seed;
};

// The first key of a router's keys file ("" when none can be read).
std::string FirstKey(const std::string& keys_file) {
  std::ifstream f(keys_file);
  for (std::string line; std::getline(f, line);) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (!line.empty() && line[0] != '#') return line;
  }
  return "";
}

// The router's address from the state file (else 127.0.0.1:8080). A cluster started with --tls or
// --api-keys-file recorded its certificate folder and keys file there: they fill in --tls-dir and
// the key when neither was given (flag or PIPEINFER_API_KEY).
std::string RouterHttpFromState(const std::string& state_arg, ClientAuth* auth) {
  auto st = cluster::ReadState(state_arg.empty() ? DefaultStatePath() : state_arg);
  if (!st.ok() || st->endpoints.router_http.empty()) return "127.0.0.1:8080";
  if (auth->tls_dir.empty()) auth->tls_dir = st->tls_dir;
  if (auth->Key().empty() && !st->api_keys_file.empty()) {
    auth->api_key = FirstKey(st->api_keys_file);
  }
  return st->endpoints.router_http;
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

int RunChat(ChatArgs a) {
  const std::string addr =
      a.router_http.empty() ? RouterHttpFromState(a.state, &a.auth) : a.router_http;
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

  const bool tls = !a.auth.tls_dir.empty();
  httplib::Client cli((tls ? "https://" : "http://") + host + ":" + std::to_string(port));
  if (tls) {
    cli.set_ca_cert_path((a.auth.tls_dir + "/ca.pem").c_str());
    cli.enable_server_certificate_verification(true);
  }
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
  if (const std::string auth = a.auth.Authorization(); !auth.empty()) {
    req.headers.emplace("Authorization", auth);
  }
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
    return Fail(std::string("cannot reach the router at ") + (tls ? "https://" : "http://") + addr +
                ": " + httplib::to_string(err) + " (is the cluster up? `pipeinfer up --detach`)");
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

// A channel with the credentials of `auth` (client_auth.h); a TLS file that cannot be read gives a
// channel that fails every call with the reason.
std::shared_ptr<grpc::Channel> ChannelFor(const std::string& addr, const ClientAuth& auth) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  auto creds = rpc::MakeChannelCredentials(auth.tls());
  if (!creds.ok()) {
    std::cerr << "error: " << creds.status().message() << "\n";
    std::exit(1);
  }
  return grpc::CreateCustomChannel(addr, *creds, args);
}

void AddAuthMetadata(grpc::ClientContext& ctx, const ClientAuth& auth) {
  if (const std::string a = auth.Authorization(); !a.empty()) ctx.AddMetadata("authorization", a);
}

struct CompleteArgs {
  ClientAuth auth;
  std::string router;
  std::string prompt;
  std::string prompt_file;
  int max_tokens = 0;
  double temperature = 0.0;
  std::optional<uint64_t> seed;
  bool print_ids = false;
  bool ignore_eos = false;
  spec::KnobSettings knobs;  // the knobs given; the rest is the draft service's default
  bool show_counters = false;
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
  *req.mutable_options()->mutable_spec() = draft_server::ToSpecConfig(a.knobs);

  auto stub = v1::Router::NewStub(ChannelFor(a.router, a.auth));
  grpc::ClientContext ctx;
  AddAuthMetadata(ctx, a.auth);
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
  ClientAuth auth;
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
    AddAuthMetadata(ctx, a.auth);
    st = v1::Router::NewStub(ChannelFor(a.router, a.auth))->GetClusterStats(&ctx, req, &resp);
    services = std::move(*resp.mutable_services());
  } else {
    v1::StatsRequest req;
    req.set_include_pipeline(a.pipeline);
    v1::StatsResponse resp;
    if (!a.stage.empty()) {
      st = v1::Stage::NewStub(ChannelFor(a.stage, a.auth))->GetStats(&ctx, req, &resp);
    } else {
      st = v1::Draft::NewStub(ChannelFor(a.draft, a.auth))->GetStats(&ctx, req, &resp);
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

void RegisterClientCommands(CLI::App& app) {
  // chat
  auto chat_args = std::make_shared<ChatArgs>();
  auto* chat = app.add_subcommand("chat", "Stream a chat answer through the router's HTTP API");
  chat->add_option("message", chat_args->message, "The user message")->required();
  chat->add_option("--router-http", chat_args->router_http,
                   "Router HOST:PORT (default: from the state file, else 127.0.0.1:8080)");
  chat->add_option("--state", chat_args->state,
                   "State file to read the router address from (and, for a --tls or API-key "
                   "cluster, its certificate folder and a key)");
  chat->add_option("--system", chat_args->system, "A system message");
  chat->add_option("--max-tokens", chat_args->max_tokens, "Most tokens to generate")
      ->check(CLI::Range(1, 1 << 20));
  chat->add_option("--temperature", chat_args->temperature, "Sampling temperature (0 = greedy)");
  chat->add_option("--seed", chat_args->seed, "Sampling seed");
  AddClientAuthFlags(chat, &chat_args->auth);
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
  AddClientAuthFlags(complete, &cargs->auth);
  // The speculation knobs of spec/knobs.h as this request's SpecConfig overrides (request ranges;
  // a knob not given is the draft service's default).
  spec::KnobFlagOptions request_knobs;
  request_knobs.scope = spec::KnobScope::kRequest;
  spec::AddKnobFlags(*complete, &cargs->knobs, request_knobs);
  complete->get_option("--mode")->description(
      "Speculation mode: plain, sync or pipeinfer (default: the draft service's)");
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
  AddClientAuthFlags(stats, &sargs->auth);
  stats->final_callback([sargs, so, dop, rop] {
    if (so->count() == 0 && dop->count() == 0 && rop->count() == 0) {
      throw CLI::RequiredError("--stage, --draft or --router");
    }
    if (int rc = RunStats(*sargs)) throw CLI::RuntimeError(rc);
  });
}

}  // namespace pipeinfer::cli
