#include "cli/engine_commands.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>

#include "engine/engine.h"
#include "engine/synth.h"
#include "tokenizer/tokenizer.h"

namespace pipeinfer::cli {
namespace {

struct ModelArgs {
  std::string model;
  int threads = 1;
  std::string kv_type = "f16";
  int ctx = 0;
  std::string device = "cpu";
};

void AddModelOptions(CLI::App* cmd, ModelArgs& a) {
  cmd->add_option("--model,-m", a.model, "GGUF model file")->required();
  cmd->add_option("--threads,-t", a.threads, "Compute threads")->check(CLI::Range(1, 256));
  cmd->add_option("--kv-type", a.kv_type, "KV cache element type")
      ->check(CLI::IsMember({"f16", "f32"}));
  cmd->add_option("--ctx", a.ctx, "Context length (default: the model's)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--device", a.device,
                  "Where the layers run: cpu, cuda:N, or a list of one kind that splits them "
                  "(cuda:0,cuda:1; cpu,cpu)");
}

struct Loaded {
  std::unique_ptr<engine::Engine> engine;
  std::unique_ptr<tokenizer::Tokenizer> tok;
};

// Loads the model and its tokenizer and opens session 1; prints the error and returns false.
bool Load(const ModelArgs& a, Loaded& out) {
  auto model = engine::StageModel::LoadFull(a.model);
  if (!model.ok()) {
    std::cerr << "error: " << model.status().message() << "\n";
    return false;
  }
  auto tok = tokenizer::Tokenizer::FromGguf((*model)->file());
  if (!tok.ok()) {
    std::cerr << "error: " << tok.status().message() << "\n";
    return false;
  }
  engine::EngineOptions opts;
  opts.threads = a.threads;
  opts.kv_type = a.kv_type == "f32" ? kv::ElemType::kF32 : kv::ElemType::kF16;
  opts.max_context = a.ctx;
  opts.devices = a.device;
  opts.kv_capacity_tokens = a.ctx > 0 ? a.ctx : (*model)->hparams().n_ctx_train;
  auto e = engine::Engine::Create(std::move(*model), opts);
  if (!e.ok()) {
    std::cerr << "error: " << e.status().message() << "\n";
    return false;
  }
  out.engine = std::move(*e);
  out.tok = std::move(*tok);
  (void)out.engine->kv().OpenSession(1);
  return true;
}

int32_t Argmax(const float* x, int64_t n) {
  return static_cast<int32_t>(std::max_element(x, x + n) - x);
}

// --- generate ------------------------------------------------------------------------------
struct GenerateArgs {
  ModelArgs m;
  std::string prompt;
  int n = 32;
  bool ignore_eos = false;
  bool print_ids = false;
};

int RunGenerate(const GenerateArgs& a) {
  Loaded l;
  if (!Load(a.m, l)) return 1;
  const auto prompt = l.tok->Encode(a.prompt, l.tok->add_bos(), false);
  if (prompt.empty()) {
    std::cerr << "error: empty prompt\n";
    return 1;
  }
  const int64_t V = l.engine->model().hparams().n_vocab;
  const int32_t last = static_cast<int32_t>(prompt.size()) - 1;
  engine::ForwardInput in;
  in.session = 1;
  in.tokens = prompt;
  in.output_rows = std::span<const int32_t>(&last, 1);
  const auto t0 = std::chrono::steady_clock::now();
  auto out = l.engine->Forward(in);
  if (!out.ok()) {
    std::cerr << "error: " << out.status().message() << "\n";
    return 1;
  }
  const auto t1 = std::chrono::steady_clock::now();
  std::vector<int32_t> generated;
  tokenizer::IncrementalDetokenizer detok(*l.tok);
  int32_t next = Argmax(out->logits.data(), V);
  for (int i = 0; i < a.n; ++i) {
    if (!a.ignore_eos && l.tok->IsEndOfGeneration(next)) break;
    generated.push_back(next);
    if (!a.print_ids) {
      std::cout << detok.Push(next) << std::flush;
    }
    if (i + 1 == a.n) break;
    const int32_t row = 0;
    engine::ForwardInput step;
    step.session = 1;
    step.tokens = std::span<const int32_t>(&next, 1);
    step.output_rows = std::span<const int32_t>(&row, 1);
    auto o = l.engine->Forward(step);
    if (!o.ok()) {
      std::cerr << "\nerror: " << o.status().message() << "\n";
      return 1;
    }
    next = Argmax(o->logits.data(), V);
  }
  const auto t2 = std::chrono::steady_clock::now();
  if (a.print_ids) {
    for (size_t i = 0; i < generated.size(); ++i) std::cout << (i ? " " : "") << generated[i];
    std::cout << "\n";
  } else {
    std::cout << detok.Flush() << "\n";
  }
  const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
  const double decode_s = std::chrono::duration<double>(t2 - t1).count();
  std::fprintf(stderr, "prompt %zu tokens in %.3f s, generated %zu tokens in %.3f s (%.1f tok/s)\n",
               prompt.size(), prefill_s, generated.size(), decode_s,
               decode_s > 0 ? generated.size() / decode_s : 0.0);
  return 0;
}

// --- logits --------------------------------------------------------------------------------
struct LogitsArgs {
  ModelArgs m;
  std::string prompt_file;
  std::string out_prefix;
  int greedy = 32;
};

bool WriteFile(const std::string& path, const void* data, size_t n) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
  if (!f) std::cerr << "error: cannot write " << path << "\n";
  return static_cast<bool>(f);
}

std::string IdsLine(const std::vector<int32_t>& ids) {
  std::ostringstream s;
  for (size_t i = 0; i < ids.size(); ++i) s << (i ? " " : "") << ids[i];
  s << "\n";
  return s.str();
}

int RunLogits(const LogitsArgs& a) {
  std::ifstream pf(a.prompt_file, std::ios::binary);
  if (!pf) {
    std::cerr << "error: cannot read " << a.prompt_file << "\n";
    return 1;
  }
  std::stringstream ss;
  ss << pf.rdbuf();
  Loaded l;
  if (!Load(a.m, l)) return 1;
  const auto prompt = l.tok->Encode(ss.str(), l.tok->add_bos(), false);
  if (prompt.empty()) {
    std::cerr << "error: empty prompt\n";
    return 1;
  }
  const int64_t V = l.engine->model().hparams().n_vocab;
  std::vector<int32_t> rows(prompt.size());
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<int32_t>(i);
  engine::ForwardInput in;
  in.session = 1;
  in.tokens = prompt;
  in.output_rows = rows;
  auto out = l.engine->Forward(in);
  if (!out.ok()) {
    std::cerr << "error: " << out.status().message() << "\n";
    return 1;
  }
  std::vector<int32_t> greedy;
  std::vector<float> greedy_logits;
  int32_t next = Argmax(&out->logits[(prompt.size() - 1) * V], V);
  for (int s = 0; s < a.greedy; ++s) {
    greedy.push_back(next);
    const int32_t row = 0;
    engine::ForwardInput step;
    step.session = 1;
    step.tokens = std::span<const int32_t>(&next, 1);
    step.output_rows = std::span<const int32_t>(&row, 1);
    auto o = l.engine->Forward(step);
    if (!o.ok()) {
      std::cerr << "error: " << o.status().message() << "\n";
      return 1;
    }
    greedy_logits.insert(greedy_logits.end(), o->logits.begin(), o->logits.end());
    next = Argmax(o->logits.data(), V);
  }
  const std::string p = a.out_prefix;
  const std::string ids = IdsLine(prompt), gids = IdsLine(greedy);
  bool ok = WriteFile(p + ".prompt_ids.txt", ids.data(), ids.size()) &&
            WriteFile(p + ".prompt_logits.f32", out->logits.data(), out->logits.size() * 4);
  if (a.greedy > 0) {
    ok = ok && WriteFile(p + ".greedy_ids.txt", gids.data(), gids.size()) &&
         WriteFile(p + ".greedy_logits.f32", greedy_logits.data(), greedy_logits.size() * 4);
  }
  return ok ? 0 : 1;
}

// --- gguf synth ----------------------------------------------------------------------------
struct SynthArgs {
  engine::SynthSpec spec;
  std::string type = "f16";
  std::string out;
};

int RunSynth(SynthArgs& a) {
  bool found = false;
  for (uint32_t id = 0; id < 64; ++id) {
    auto info = gguf::LookupTensorType(id);
    if (info && a.type == info->name) {
      a.spec.type = info->type;
      found = true;
    }
  }
  if (!found) {
    std::cerr << "error: unknown tensor type '" << a.type << "'\n";
    return 1;
  }
  absl::Status st = engine::WriteSyntheticModel(a.spec, a.out);
  if (!st.ok()) {
    std::cerr << "error: " << st.message() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace

void RegisterEngineCommands(CLI::App& app) {
  auto g = std::make_shared<GenerateArgs>();
  CLI::App* gen =
      app.add_subcommand("generate", "Greedy generation in one process (reference path)");
  AddModelOptions(gen, g->m);
  gen->add_option("--prompt,-p", g->prompt, "Prompt text")->required();
  gen->add_option("-n,--n-predict", g->n, "Tokens to generate")->check(CLI::Range(1, 1 << 20));
  gen->add_flag("--ignore-eos", g->ignore_eos, "Do not stop at end-of-sequence");
  gen->add_flag("--print-ids", g->print_ids, "Print generated token ids instead of text");
  gen->final_callback([g] {
    if (int rc = RunGenerate(*g)) throw CLI::RuntimeError(rc);
  });

  auto lg = std::make_shared<LogitsArgs>();
  CLI::App* logits =
      app.add_subcommand("logits", "Write prompt and greedy logits in the fixture formats");
  AddModelOptions(logits, lg->m);
  logits->add_option("--prompt-file", lg->prompt_file, "Prompt bytes")->required();
  logits->add_option("--out-prefix", lg->out_prefix, "Output path prefix")->required();
  logits->add_option("--greedy", lg->greedy, "Greedy steps")->check(CLI::Range(0, 1 << 16));
  logits->final_callback([lg] {
    if (int rc = RunLogits(*lg)) throw CLI::RuntimeError(rc);
  });

  CLI::App* gguf = app.get_subcommand("gguf");
  auto sy = std::make_shared<SynthArgs>();
  CLI::App* synth =
      gguf->add_subcommand("synth", "Write a random llama model of a given shape and type");
  synth->add_option("--out,-o", sy->out, "Output GGUF path")->required();
  synth->add_option("--type", sy->type,
                    "Weight type (f32, f16, bf16, q8_0, q4_0, q4_K, q6_K, ...)");
  synth->add_option("--n-layer", sy->spec.n_layer)->check(CLI::Range(1, 1024));
  synth->add_option("--n-embd", sy->spec.n_embd)->check(CLI::Range(32, 65536));
  synth->add_option("--n-ff", sy->spec.n_ff)->check(CLI::Range(32, 262144));
  synth->add_option("--n-head", sy->spec.n_head)->check(CLI::Range(1, 1024));
  synth->add_option("--n-head-kv", sy->spec.n_head_kv)->check(CLI::Range(1, 1024));
  synth->add_option("--n-vocab", sy->spec.n_vocab)->check(CLI::Range(259, 1 << 20));
  synth->add_option("--n-ctx", sy->spec.n_ctx)->check(CLI::Range(16, 1 << 20));
  synth->add_option("--seed", sy->spec.seed);
  synth->final_callback([sy] {
    if (int rc = RunSynth(*sy)) throw CLI::RuntimeError(rc);
  });
}

}  // namespace pipeinfer::cli
