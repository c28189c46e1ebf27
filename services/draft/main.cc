// `pipeinfer-draft`: the draft service. Drives one pipeline of pipeinfer-stage processes (stage 0
// and the last stage are given; the middle stages are chained by the stages themselves) and serves
// pipeinfer.v1.Draft (plus health and reflection) until SIGINT or SIGTERM.
#include <spdlog/spdlog.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>

#include "common/stop_signals.h"
#include "draft_server/draft_model.h"
#include "draft_server/draft_server.h"
#include "gguf/llama.h"
#include "gguf/reader.h"
#include "log/log_flags.h"
#include "rpc/tls.h"
#include "spec/knob_flags.h"
#include "tokenizer/tokenizer.h"

namespace {

int Fail(const std::string& message) { return pipeinfer::log::Fail(message); }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pipeinfer-draft: the draft service (controller) of a PipeInfer pipeline"};
  std::string listen, stage0, last, model, model_id, draft_model;
  int draft_threads = 1;
  int64_t draft_kv_tokens = 0;
  double draft_noise = 0.0;
  std::string draft_rank_model = "demo";
  int64_t emulate_draft_us = 0;
  std::string metrics_listen;
  uint32_t max_sessions = 64;
  int connect_timeout_ms = 30000;
  app.add_option("--listen", listen, "Listen address HOST:PORT")->required();
  app.add_option("--stage0", stage0, "Stage 0's HOST:PORT")->required();
  app.add_option("--last", last, "The last stage's HOST:PORT (same as --stage0 with one stage)")
      ->required();
  app.add_option("--model,-m", model, "The target GGUF model (for its vocabulary and EOS id)")
      ->required();
  app.add_option("--draft-model", draft_model,
                 "The draft GGUF (same vocabulary as the target); needed by sync and pipeinfer");
  app.add_option("--draft-threads", draft_threads, "Threads of the draft model's forward pass")
      ->check(CLI::Range(1, 256));
  std::string draft_weight_memory = "hugepages";
  app.add_option("--draft-weight-memory", draft_weight_memory,
                 "hugepages copies the draft's weights into transparent huge pages, mmap reads "
                 "them from the file's mapping (as pipeinfer-stage --weight-memory)")
      ->check(CLI::IsMember(pipeinfer::engine::WeightMemoryNames()));
  app.add_option("--metrics-listen", metrics_listen,
                 "Serve Prometheus /metrics on HOST:PORT (port 0 picks a free one; absent: none)");
  app.add_option("--draft-noise", draft_noise,
                 "Benchmarks: probability that the draft's top token is moved away from rank 1 "
                 "(sets the draft's agreement to 1 - p, e.g. with the target itself as the draft; "
                 "see --draft-rank-model)")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option(
         "--draft-rank-model", draft_rank_model,
         "Benchmarks: where --draft-noise puts the top token when it makes the draft wrong: "
         "demo (a rank drawn from the demo pair's calibrated histogram, confidence "
         "tempered; docs/draft-emulation.md) or uniform (swapped with a random token)")
      ->check(CLI::IsMember({"demo", "uniform"}));
  app.add_option("--emulate-draft-us", emulate_draft_us,
                 "Benchmarks only: pad each draft forward pass to this many microseconds per "
                 "token in the pass (sleeps; no padding when the real pass took longer)")
      ->check(CLI::Range(int64_t{0}, int64_t{10000000}));
  app.add_option("--draft-kv-tokens", draft_kv_tokens,
                 "Draft KV capacity in tokens over all sessions (default: 8 contexts)")
      ->check(CLI::NonNegativeNumber);
  // The speculation knobs (spec/knobs.h): the service's defaults for requests that leave
  // SpecConfig fields unset.
  pipeinfer::spec::KnobSettings knobs;
  pipeinfer::spec::KnobFlagOptions knob_flags;
  knob_flags.show_defaults = true;
  pipeinfer::spec::AddKnobFlags(app, &knobs, knob_flags);
  app.get_option("--mode")->description(
      "Default speculation mode: plain, sync or pipeinfer (default: pipeinfer with a draft "
      "model, else plain)");
  app.add_option("--model-id", model_id, "Model id served (default: the stages' model id)");
  int64_t emulate_link_us = 0;
  app.add_option("--emulate-link-us", emulate_link_us,
                 "Benchmarks: send every message to stage 0 (and every cancel to the last stage) "
                 "this many microseconds after it was queued, in order, to emulate link latency")
      ->check(CLI::Range(int64_t{0}, int64_t{10000000}));
  double emulate_link_mbps = 0;
  app.add_option("--emulate-link-mbps", emulate_link_mbps,
                 "Benchmarks: pace every message to stage 0 (and every cancel to the last stage) "
                 "as on a link of this many Mbit/s (serialization delay, before "
                 "--emulate-link-us); 0 = none")
      ->check(CLI::Range(0.0, 100000.0));
  app.add_option("--max-sessions", max_sessions, "Most concurrent Generate calls")
      ->check(CLI::Range(1, 65536));
  int kv_wait_ms = 20000;
  uint32_t kv_max_waiting = 0;
  double spec_budget = 1.0;
  app.add_option("--kv-wait-ms", kv_wait_ms,
                 "How long a request may wait for its KV reservation to fit on every stage "
                 "before it is refused (RESOURCE_EXHAUSTED, HTTP 429)")
      ->check(CLI::Range(0, 3600000));
  app.add_option("--kv-max-waiting", kv_max_waiting,
                 "Most requests waiting for KV at once (0 = --max-sessions)")
      ->check(CLI::Range(0, 65536));
  app.add_option("--spec-budget", spec_budget,
                 "Scale of the pipeline-wide speculation budget (speculative tokens in flight "
                 "<= stages x a/b, where a stage pass costs a + b x tokens); 0 = no budget")
      ->check(CLI::Range(0.0, 1000.0));
  app.add_option("--connect-timeout-ms", connect_timeout_ms,
                 "How long to wait for the stages and the pipeline at startup (a refused open "
                 "is retried with backoff meanwhile, e.g. while another controller owns stage 0 "
                 "for up to the bound of stage.proto section 2a)")
      ->check(CLI::Range(1, 600000));
  int recovery_seconds = 30;
  app.add_option("--recovery-seconds", recovery_seconds,
                 "How long a request whose pipeline lost a stage waits for it to come back "
                 "(then it resumes; after that it fails with UNAVAILABLE, HTTP 503); 0 = fail at "
                 "once")
      ->check(CLI::Range(0, 3600));
  bool split_prefill = true;
  app.add_flag("--split-prefill,!--no-split-prefill", split_prefill,
               "A request alone on the pipeline sends its prompt in the runs that bring the first "
               "token soonest, by the stage passes' measured cost (they follow each other through "
               "the stages); off: one run (up to the stages' --max-run-tokens). Needs the "
               "speculation budget's cost fit (--spec-budget > 0)");
  pipeinfer::log::Options log_options;
  pipeinfer::log::AddFlags(app, &log_options);
  pipeinfer::rpc::TlsFiles tls;
  app.add_option("--tls-ca", tls.ca,
                 "CA certificate (PEM): peers must present certificates it signed (mutual TLS)");
  app.add_option("--tls-cert", tls.cert, "This service's certificate (PEM); turns TLS on");
  app.add_option("--tls-key", tls.key, "This service's private key (PEM)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 1;  // --help exits 0; every flag error exits 1
  }
  if (auto st = pipeinfer::log::Init("draft", log_options); !st.ok()) {
    return Fail(std::string(st.message()));
  }
  pipeinfer::spec::SpecParams sp = knobs.params();
  if (!knobs.given("mode")) {
    sp.mode =
        draft_model.empty() ? pipeinfer::spec::Mode::kPlain : pipeinfer::spec::Mode::kPipeInfer;
  }
  const std::string mode(pipeinfer::spec::ModeName(sp.mode));
  if (sp.mode != pipeinfer::spec::Mode::kPlain && draft_model.empty()) {
    return Fail("--mode " + mode + " needs --draft-model");
  }

  // Before any thread exists: workers inherit the blocked SIGINT/SIGTERM.
  const pipeinfer::StopSignals stop_signals;

  auto file = pipeinfer::gguf::GgufFile::Open(model);
  if (!file.ok()) return Fail(std::string(file.status().message()));
  auto tok = pipeinfer::gguf::TokenizerMetadata::FromGguf(**file);
  if (!tok.ok()) return Fail(model + ": " + std::string(tok.status().message()));

  pipeinfer::draft_server::DraftServerOptions o;
  o.listen_address = listen;
  o.stage0_address = stage0;
  o.last_address = last;
  o.model_id = model_id;
  o.metrics_model = model_id.empty() ? std::filesystem::path(model).stem().string() : model_id;
  // Every end-of-generation token of the vocabulary (EOS, and EOT such as Llama-3's <|eot_id|>
  // or Qwen's <|im_end|>), as llama.cpp derives them.
  auto tokenizer = pipeinfer::tokenizer::Tokenizer::Create(*tok);
  if (!tokenizer.ok()) return Fail(model + ": " + std::string(tokenizer.status().message()));
  for (int32_t id : (*tokenizer)->eog_ids()) o.eos_ids.push_back(static_cast<uint32_t>(id));
  if (o.eos_ids.empty() && tok->eos_id >= 0)
    o.eos_ids.push_back(static_cast<uint32_t>(tok->eos_id));
  o.expected_n_vocab = static_cast<uint32_t>(tok->tokens.size());
  o.max_sessions = max_sessions;
  o.kv_wait_ms = kv_wait_ms;
  o.kv_max_waiting = kv_max_waiting;
  o.spec_budget_scale = spec_budget;
  o.connect_timeout_ms = connect_timeout_ms;
  o.recovery_seconds = recovery_seconds;
  o.split_prefill = split_prefill;
  o.spec_defaults = sp;
  o.metrics_address = metrics_listen;
  o.emulate_link_us = emulate_link_us;
  o.emulate_link_mbps = emulate_link_mbps;
  o.tls = tls;
  if (!draft_model.empty()) {
    pipeinfer::draft_server::DraftModelOptions dmo;
    dmo.path = draft_model;
    dmo.target_path = model;
    dmo.threads = draft_threads;
    dmo.weight_memory = pipeinfer::engine::WeightMemoryNamed(draft_weight_memory);
    dmo.kv_tokens = draft_kv_tokens;
    dmo.noise = draft_noise;
    dmo.rank_model = *pipeinfer::draft_server::ParseRankModel(draft_rank_model);
    dmo.emulate_us_per_token = emulate_draft_us;
    auto dm = pipeinfer::draft_server::DraftModel::Load(dmo);
    if (!dm.ok()) return Fail(std::string(dm.status().message()));
    o.draft_model = std::move(*dm);
  }
  file->reset();  // the vocabulary is all the draft service needs from the file

  pipeinfer::draft_server::DraftServer server(o);
  // The stop signal is awaited on a thread of its own from here on. While Start() still opens the
  // pipeline (it retries for up to --connect-timeout-ms, e.g. while another controller owns stage
  // 0 or the stages are going away), a stop signal ends the process at once, with status 0:
  // nothing is served yet. Afterwards it shuts the server down (below).
  // (Static: the detached thread may outlive main's locals when Start() fails.)
  static std::mutex stop_mu;
  static std::condition_variable stop_cv;
  static bool started = false;
  static int stop_sig = 0;
  std::thread([signals = stop_signals] {
    const int sig = signals.Wait();
    std::lock_guard<std::mutex> l(stop_mu);
    if (!started) {
      spdlog::info("draft: signal {} while starting, exiting", sig);
      spdlog::default_logger()->flush();
      std::_Exit(0);
    }
    stop_sig = sig;
    stop_cv.notify_all();
  }).detach();
  if (auto st = server.Start(); !st.ok()) return Fail(std::string(st.message()));
  {
    std::lock_guard<std::mutex> l(stop_mu);
    started = true;
  }
  const std::string addr =
      listen.substr(0, listen.rfind(':')) + ":" + std::to_string(server.port());
  std::string emulation;  // benchmark-only settings, shown when in use
  if (!draft_model.empty() && draft_noise > 0.0) {
    char noise[32];
    std::snprintf(noise, sizeof(noise), "%g", draft_noise);
    emulation += std::string(", draft noise ") + noise + " (" + draft_rank_model + " ranks)";
  }
  if (!draft_model.empty() && emulate_draft_us > 0) {
    emulation += ", emulated draft cost " + std::to_string(emulate_draft_us) + " us/token";
  }
  spdlog::info("draft listening on {} ({} mode, draft model {}, stage 0 {}, last stage {}{})", addr,
               mode, draft_model.empty() ? "none" : draft_model, stage0, last, emulation);
  if (server.metrics_port() != 0) {
    spdlog::info("draft metrics on http://{}:{}/metrics",
                 metrics_listen.substr(0, metrics_listen.rfind(':')), server.metrics_port());
  }

  int sig = 0;
  {
    std::unique_lock<std::mutex> l(stop_mu);
    stop_cv.wait(l, [&] { return stop_sig != 0; });
    sig = stop_sig;
  }
  spdlog::info("draft: signal {}, shutting down", sig);
  server.Shutdown();
  server.Wait();
  return 0;
}
