// `pipeinfer-stage`: one stage server of a pipeline. Loads only its layer range of a GGUF llama
// model and serves pipeinfer.v1.Stage (plus health and reflection) until SIGINT or SIGTERM.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "common/stop_signals.h"
#include "engine/devices.h"
#include "engine/engine.h"
#include "gguf/llama.h"
#include "gguf/reader.h"
#include "log/log_flags.h"
#include "rpc/tls.h"
#include "spec/kv_demand.h"
#include "stage/kv_sizing.h"
#include "stage/stage_core.h"
#include "stage_server/stage_server.h"

namespace {

int Fail(const std::string& message) { return pipeinfer::log::Fail(message); }

// "FIRST:LAST" (LAST exclusive).
bool ParseLayers(const std::string& s, uint32_t* first, uint32_t* last) {
  const auto colon = s.find(':');
  if (colon == std::string::npos) return false;
  try {
    size_t n1 = 0, n2 = 0;
    const long a = std::stol(s.substr(0, colon), &n1);
    const long b = std::stol(s.substr(colon + 1), &n2);
    if (n1 != colon || n2 != s.size() - colon - 1 || a < 0 || b < a) return false;
    *first = static_cast<uint32_t>(a);
    *last = static_cast<uint32_t>(b);
    return true;
  } catch (...) {
    return false;
  }
}

// The stage index from the trailing "-N" of the host name (a StatefulSet pod's ordinal).
bool StageFromHostname(int* stage, std::string* why) {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) {
    *why = "cannot read the host name";
    return false;
  }
  const std::string host(name);
  const size_t dash = host.rfind('-');
  const std::string digits = dash == std::string::npos ? "" : host.substr(dash + 1);
  if (digits.empty() || digits.size() > 6 ||
      digits.find_first_not_of("0123456789") != std::string::npos) {
    *why = "--stage-from-hostname: host name '" + host + "' does not end in -<number>";
    return false;
  }
  *stage = std::stoi(digits);
  return true;
}

// The PIPEINFER_STAGE environment variable (-1 when unset).
bool StageFromEnv(int* stage, std::string* why) {
  const char* v = std::getenv("PIPEINFER_STAGE");
  if (v == nullptr || *v == 0) return true;
  const std::string s(v);
  if (s.size() > 6 || s.find_first_not_of("0123456789") != std::string::npos) {
    *why = "PIPEINFER_STAGE must be a stage index (0, 1, ...), not '" + s + "'";
    return false;
  }
  *stage = std::stoi(s);
  return true;
}

// Replaces every "{next}" of `pattern` with `next`.
std::string ExpandNext(std::string pattern, int next) {
  const std::string key = "{next}", value = std::to_string(next);
  for (size_t at = pattern.find(key); at != std::string::npos; at = pattern.find(key, at)) {
    pattern.replace(at, key.size(), value);
    at += value.size();
  }
  return pattern;
}

}  // namespace

int main(int argc, char** argv) {
  uint32_t emulate_run_us = 0, emulate_token_us = 0;
  CLI::App app{"pipeinfer-stage: one stage server of a PipeInfer pipeline"};
  std::string model, listen, downstream, layers, kv_type = "f16", wire = "f32", model_id;
  int stage = -1, stages = 0, threads = 1;
  std::vector<double> weights;
  int64_t kv_tokens = 0;
  uint64_t kv_bytes = 0;
  uint32_t window = 64, max_run_tokens = 512, max_batch_tokens = 512;
  app.add_option("--model,-m", model, "GGUF model file")->required();
  app.add_option("--listen", listen, "Listen address HOST:PORT")->required();
  app.add_option("--downstream", downstream,
                 "The next stage's HOST:PORT (absent on the last); {next} stands for this stage's "
                 "index + 1, and the flag is ignored on the last stage of --stages N");
  auto* layers_opt = app.add_option("--layers", layers, "Layer range FIRST:LAST (LAST exclusive)");
  auto* stage_opt =
      app.add_option("--stage", stage, "This stage's index (default: env PIPEINFER_STAGE)")
          ->check(CLI::NonNegativeNumber);
  bool stage_from_hostname = false;
  app.add_flag("--stage-from-hostname", stage_from_hostname,
               "Take the stage index from the trailing -N of the host name (StatefulSet ordinal)")
      ->excludes(stage_opt);
  pipeinfer::log::Options log_options;
  pipeinfer::log::AddFlags(app, &log_options);
  app.add_option("--stages", stages, "Number of stages")->check(CLI::PositiveNumber);
  app.add_option("--weights", weights, "Relative layer weights per stage (with --stages)")
      ->delimiter(',');
  app.add_option("--threads,-t", threads, "Compute threads")->check(CLI::Range(1, 256));
  std::string device = "cpu", devices;
  auto* device_opt = app.add_option("--device", device,
                                    "Where the stage's layers run: cpu or cuda:N (default cpu)");
  app.add_option("--devices", devices,
                 "Several devices of one kind (cuda:0,cuda:1 or cpu,cpu): every layer is split "
                 "over them by attention heads and FFN columns (tensor parallelism; NCCL on GPUs)")
      ->excludes(device_opt);
  std::string weight_memory = "hugepages";
  app.add_option("--weight-memory", weight_memory,
                 "CPU stages: hugepages copies the stage's weights into transparent huge pages "
                 "(faster decode; falls back to mmap where they are off), mmap reads them from "
                 "the file's mapping (no copy)")
      ->check(CLI::IsMember(pipeinfer::engine::WeightMemoryNames()));
  auto* kvt = app.add_option("--kv-tokens", kv_tokens,
                             "KV capacity in tokens (default: sized by --kv-sessions)")
                  ->check(CLI::PositiveNumber);
  app.add_option("--kv-bytes", kv_bytes, "KV capacity in bytes")
      ->check(CLI::PositiveNumber)
      ->excludes(kvt);
  uint32_t kv_sessions = 8;
  std::optional<uint32_t> kv_headroom_tokens, kv_session_partitions;
  uint64_t kv_memory = 0;
  app.add_option("--kv-sessions", kv_sessions,
                 "Without --kv-tokens/--kv-bytes: size the KV cache for this many concurrent "
                 "full-context requests with their speculation headroom")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--kv-headroom-tokens", kv_headroom_tokens,
                 "Speculation headroom one such request reserves beyond its context, in token "
                 "slots (default: what pipeinfer with the default knobs reserves; `pipeinfer up` "
                 "passes what its mode and knobs need)")
      ->check(CLI::Range(0, 1 << 30));
  app.add_option("--kv-session-partitions", kv_session_partitions,
                 "Partitions one such request keeps live (default: as for the headroom)")
      ->check(CLI::Range(0, 1 << 16));
  app.add_option("--kv-memory", kv_memory,
                 "Memory budget of the default-sized KV cache in bytes (default: a quarter of "
                 "physical memory; on GPUs, what their free memory leaves beside the weights)")
      ->check(CLI::PositiveNumber);
  app.add_option("--kv-type", kv_type, "KV cache element type")
      ->check(CLI::IsMember({"f16", "f32"}));
  app.add_option("--wire-dtype", wire, "Hidden-state dtype sent downstream")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}));
  app.add_option("--model-id", model_id,
                 "Model id checked against PipelineOpen (default: file stem)");
  app.add_option("--window", window, "Credit window W per link, in messages")
      ->check(CLI::Range(1, 4096));
  int connect_timeout_ms = 5000;
  app.add_option("--connect-timeout-ms", connect_timeout_ms,
                 "How long opening the downstream link waits for a connection")
      ->check(CLI::Range(1, 600000));
  uint32_t owner_lease_ms = 10000;
  app.add_option("--owner-lease-ms", owner_lease_ms,
                 "Pipeline ownership lease (stage.proto 2a): an owner link idle this long may be "
                 "taken over; a controller asking this long displaces an active owner")
      ->check(CLI::Range(100u, 3600000u));
  app.add_option("--max-run-tokens", max_run_tokens, "Most tokens per run")
      ->check(CLI::Range(1, 65536));
  app.add_option("--max-batch-tokens", max_batch_tokens,
                 "Most tokens one forward pass computes over the runs it batches (a larger "
                 "single run still runs alone)")
      ->check(CLI::Range(1, 1 << 20));
  std::string metrics_listen;
  app.add_option("--emulate-run-us", emulate_run_us,
                 "Benchmarks: pad every forward to at least this many microseconds (plus "
                 "--emulate-token-us per token) by sleeping, to emulate a bigger model")
      ->check(CLI::Range(0, 10000000));
  app.add_option("--emulate-token-us", emulate_token_us,
                 "Benchmarks: padding per run token (see --emulate-run-us)")
      ->check(CLI::Range(0, 10000000));
  int64_t emulate_link_us = 0;
  app.add_option("--emulate-link-us", emulate_link_us,
                 "Benchmarks: send every message on a link (downstream, upstream, results) this "
                 "many microseconds after it was produced, in order, to emulate link latency")
      ->check(CLI::Range(int64_t{0}, int64_t{10000000}));
  double emulate_link_mbps = 0;
  app.add_option("--emulate-link-mbps", emulate_link_mbps,
                 "Benchmarks: pace every message on a link (downstream, upstream, results) as on "
                 "a link of this many Mbit/s per direction (serialization delay, before "
                 "--emulate-link-us); 0 = none")
      ->check(CLI::Range(0.0, 100000.0));
  app.add_option("--metrics-listen", metrics_listen,
                 "Serve Prometheus /metrics on HOST:PORT (port 0 picks a free one; absent: none)");
  pipeinfer::rpc::TlsFiles tls;
  std::string tls_allow;
  app.add_option("--tls-ca", tls.ca,
                 "CA certificate (PEM): peers must present certificates it signed (mutual TLS)");
  app.add_option("--tls-cert", tls.cert, "This service's certificate (PEM); turns TLS on");
  app.add_option("--tls-key", tls.key, "This service's private key (PEM)");
  app.add_option("--tls-allow-cn", tls_allow,
                 "Comma-separated certificate names (CN or SAN) allowed to open the Pipeline and "
                 "Results streams (the upstream stage, the draft service); empty = any trusted "
                 "certificate");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 1;  // --help exits 0; every flag error exits 1
  }

  std::string why;
  if (stage_from_hostname && !StageFromHostname(&stage, &why)) return Fail(why);
  if (stage < 0 && !StageFromEnv(&stage, &why)) return Fail(why);
  if (auto st =
          pipeinfer::log::Init(stage >= 0 ? "stage" + std::to_string(stage) : "stage", log_options);
      !st.ok()) {
    return Fail(std::string(st.message()));
  }

  // Before any thread exists: workers inherit the blocked SIGINT/SIGTERM.
  const pipeinfer::StopSignals stop_signals;

  auto file = pipeinfer::gguf::GgufFile::Open(model);
  if (!file.ok()) return Fail(std::string(file.status().message()));
  std::shared_ptr<pipeinfer::gguf::GgufFile> shared(std::move(*file));
  auto hp = pipeinfer::gguf::LlamaHParams::FromGguf(*shared);
  if (!hp.ok()) return Fail(std::string(hp.status().message()));

  pipeinfer::gguf::StageSpec spec;
  if (!layers_opt->empty()) {
    if (!ParseLayers(layers, &spec.first_layer, &spec.last_layer)) {
      return Fail("--layers must be FIRST:LAST with FIRST <= LAST, e.g. 0:4");
    }
    if (spec.last_layer > hp->n_layer) {
      return Fail("--layers " + layers + " goes beyond the model's " + std::to_string(hp->n_layer) +
                  " layers");
    }
    spec.embedding = spec.first_layer == 0;
    spec.head = spec.last_layer == hp->n_layer;
    if (stage < 0) {
      if (spec.first_layer != 0) return Fail("--layers not starting at 0 needs --stage I");
      stage = 0;
    }
    if (stages == 0) stages = spec.head ? stage + 1 : stage + 2;
    if (!weights.empty()) return Fail("--weights only goes with --stage/--stages");
  } else {
    if (stage < 0 || stages == 0) {
      return Fail("give either --layers FIRST:LAST or --stage I --stages N");
    }
    if (stage >= stages) return Fail("--stage must be less than --stages");
    if (!weights.empty() && weights.size() != static_cast<size_t>(stages)) {
      return Fail("--weights needs one weight per stage");
    }
    auto split = pipeinfer::gguf::SplitLayers(hp->n_layer, stages, weights);
    if (!split.ok()) return Fail(std::string(split.status().message()));
    spec = (*split)[stage];
  }
  if (spec.head && !layers_opt->empty() && !downstream.empty()) {
    return Fail("the last stage (it holds the output head) takes no --downstream");
  }
  if (spec.head) downstream.clear();  // --stage/--stages: one command line for every stage
  if (!spec.head && downstream.empty()) {
    return Fail("a stage that is not last needs --downstream HOST:PORT");
  }
  downstream = ExpandNext(downstream, stage + 1);

  auto sm = pipeinfer::engine::StageModel::FromFile(shared, spec, /*prefault=*/true);
  if (!sm.ok()) return Fail(std::string(sm.status().message()));
  pipeinfer::engine::EngineOptions eo;
  eo.threads = threads;
  eo.weight_memory = pipeinfer::engine::WeightMemoryNamed(weight_memory);
  eo.devices = devices.empty() ? device : devices;
  eo.kv_type = kv_type == "f32" ? pipeinfer::kv::ElemType::kF32 : pipeinfer::kv::ElemType::kF16;
  eo.kv_capacity_tokens = kv_tokens;
  eo.kv_capacity_bytes = kv_bytes;
  if (kv_tokens == 0 && kv_bytes == 0) {
    // Sized for concurrent full-context requests, as admission reserves them (kv_demand.h).
    const pipeinfer::spec::KvDemand headroom = pipeinfer::spec::KvDemandOf(
        pipeinfer::spec::SpecParams{}, /*max_context=*/0, static_cast<uint32_t>(stages));
    pipeinfer::stage::KvSizingRequest kr;
    kr.shape.n_layers = static_cast<int32_t>(spec.last_layer - spec.first_layer);
    kr.shape.n_embd_kv = static_cast<int32_t>(hp->n_embd_kv());
    kr.shape.type = eo.kv_type;
    kr.shape.block_tokens = eo.kv_block_tokens;
    kr.sessions = kv_sessions;
    kr.session_tokens = hp->n_ctx_train + kv_headroom_tokens.value_or(headroom.reserve_tokens);
    kr.session_partitions = kv_session_partitions.value_or(headroom.partitions);
    kr.memory_budget = kv_memory > 0 ? kv_memory : pipeinfer::stage::DefaultKvMemoryBudget();
    if (auto parsed = pipeinfer::engine::ParseDevices(eo.devices);
        kv_memory == 0 && parsed.ok() && parsed->cuda) {
      auto budget = pipeinfer::engine::CudaKvBudget(parsed->ordinals, (*sm)->weight_bytes());
      if (!budget.ok()) return Fail(std::string(budget.status().message()));
      kr.memory_budget = *budget;
    }
    const pipeinfer::stage::KvSizing sized = pipeinfer::stage::SizeKvCache(kr);
    eo.kv_capacity_tokens = sized.blocks * eo.kv_block_tokens;
    spdlog::info("{}", sized.Describe(static_cast<uint32_t>(stage), kr.memory_budget));
  }
  auto engine = pipeinfer::engine::Engine::Create(std::move(*sm), eo);
  if (!engine.ok()) return Fail(std::string(engine.status().message()));
  spdlog::info("stage {} computes on {}", stage, (*engine)->DeviceDescription());
  if (!(*engine)->WeightDescription().empty()) {
    spdlog::info("stage {} {}", stage, (*engine)->WeightDescription());
  }

  pipeinfer::stage::StageCoreConfig cc;
  cc.stage_index = static_cast<uint32_t>(stage);
  cc.n_stages = static_cast<uint32_t>(stages);
  cc.model_id = model_id.empty() ? std::filesystem::path(model).stem().string() : model_id;
  cc.max_run_tokens = max_run_tokens;
  cc.max_batch_tokens = max_batch_tokens;
  cc.hidden_dtype_out = wire == "f16" ? 2 : wire == "bf16" ? 3 : 1;
  cc.emulate_run_us = emulate_run_us;
  cc.emulate_token_us = emulate_token_us;
  auto core = std::make_unique<pipeinfer::stage::StageCore>(std::move(*engine), cc);

  pipeinfer::stage_server::StageServerOptions so;
  so.listen_address = listen;
  so.downstream_address = downstream;
  so.window = window;
  so.connect_timeout_ms = connect_timeout_ms;
  so.owner_lease_ms = owner_lease_ms;
  so.metrics_address = metrics_listen;
  so.emulate_link_us = emulate_link_us;
  so.emulate_link_mbps = emulate_link_mbps;
  so.tls = tls;
  so.allow_peers = pipeinfer::rpc::SplitAllowList(tls_allow);
  if (!so.allow_peers.empty() && (tls.ca.empty() || tls.cert.empty())) {
    return Fail("--tls-allow-cn needs mutual TLS: --tls-ca, --tls-cert and --tls-key");
  }
  pipeinfer::stage_server::StageServer server(std::move(core), so);
  if (auto st = server.Start(); !st.ok()) return Fail(std::string(st.message()));
  std::string addr = listen.substr(0, listen.rfind(':')) + ":" + std::to_string(server.port());
  spdlog::info("stage {} listening on {} (layers {}:{}{}{}{})", stage, addr, spec.first_layer,
               spec.last_layer, spec.embedding ? ", embedding" : "", spec.head ? ", head" : "",
               spec.head ? "" : ", downstream " + downstream);
  if (server.metrics_port() > 0) {
    const std::string maddr = metrics_listen.substr(0, metrics_listen.rfind(':')) + ":" +
                              std::to_string(server.metrics_port());
    spdlog::info("stage {} metrics on http://{}/metrics", stage, maddr);
  }

  const int sig = stop_signals.Wait();
  spdlog::info("stage {}: signal {}, shutting down", stage, sig);
  server.Shutdown();
  server.Wait();
  return 0;
}
