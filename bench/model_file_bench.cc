#include "model_file_bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/engine.h"
#include "engine/stage_model.h"
#include "gguf/tensor_type.h"

namespace pipeinfer::bench {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

uint64_t MatrixBytes(const kernels::Matrix& m) {
  return static_cast<uint64_t>(m.rows) * static_cast<uint64_t>(m.row_bytes);
}

// Weight bytes one decode step reads: every layer matrix and the head (the embedding contributes
// one row, which is negligible; norms and biases are small and left out).
uint64_t DecodeBytesPerToken(const engine::StageModel& m) {
  uint64_t total = MatrixBytes(m.output());
  for (int32_t l = 0; l < m.n_layers(); ++l) {
    const engine::LayerWeights& w = m.layer(l);
    for (const kernels::Matrix* x : {&w.wq, &w.wk, &w.wv, &w.wo, &w.w_gate, &w.w_up, &w.w_down}) {
      total += MatrixBytes(*x);
    }
  }
  return total;
}

struct TestResult {
  std::string name;  // "pp512", "tg64"
  int n_prompt = 0;
  int n_gen = 0;
  std::vector<double> samples_ts;
  double mean = 0;
  double stddev = 0;
};

void Summarize(TestResult& r) {
  double sum = 0;
  for (double s : r.samples_ts) sum += s;
  r.mean = sum / static_cast<double>(r.samples_ts.size());
  double sq = 0;
  for (double s : r.samples_ts) sq += (s - r.mean) * (s - r.mean);
  r.stddev =
      r.samples_ts.size() > 1 ? std::sqrt(sq / static_cast<double>(r.samples_ts.size() - 1)) : 0.0;
}

class Runner {
 public:
  Runner(engine::Engine& e, std::vector<int32_t> tokens) : e_(e), tokens_(std::move(tokens)) {}

  // One run of n tokens from an empty cache, logits of the last one. Returns seconds, or < 0.
  double Prefill(int n) {
    if (!Fresh()) return -1;
    const int32_t last = n - 1;
    engine::ForwardInput in;
    in.session = session_;
    in.tokens = std::span<const int32_t>(tokens_.data(), static_cast<size_t>(n));
    in.output_rows = std::span<const int32_t>(&last, 1);
    const auto t0 = Clock::now();
    if (!Check(e_.Forward(in))) return -1;
    return Seconds(t0, Clock::now());
  }

  // n one-token runs from an empty cache, each returning its logits. Returns seconds, or < 0.
  double Generate(int n) {
    if (!Fresh()) return -1;
    const int32_t row = 0;
    const auto t0 = Clock::now();
    for (int i = 0; i < n; ++i) {
      engine::ForwardInput in;
      in.session = session_;
      in.tokens = std::span<const int32_t>(&tokens_[static_cast<size_t>(i)], 1);
      in.output_rows = std::span<const int32_t>(&row, 1);
      if (!Check(e_.Forward(in))) return -1;
    }
    return Seconds(t0, Clock::now());
  }

 private:
  bool Fresh() {
    if (session_ != 0) (void)e_.kv().CloseSession(session_);
    ++session_;
    return Check(e_.kv().OpenSession(session_));
  }
  static bool Check(const absl::Status& st) {
    if (!st.ok()) std::fprintf(stderr, "%s\n", std::string(st.message()).c_str());
    return st.ok();
  }
  template <typename T>
  static bool Check(const absl::StatusOr<T>& st) {
    return Check(st.status());
  }

  engine::Engine& e_;
  std::vector<int32_t> tokens_;
  uint64_t session_ = 0;
};

}  // namespace

int RunModelFileBench(const ModelFileBenchOptions& o, double bandwidth) {
  std::vector<int> prompts = o.prompt_lengths;
  if (prompts.empty()) prompts = {512};
  if (o.gen < 0 || o.reps < 1) {
    std::fprintf(stderr, "--gen must be >= 0 and --reps >= 1\n");
    return 1;
  }
  auto model = engine::StageModel::LoadFull(o.model, /*prefault=*/true);
  if (!model.ok()) {
    std::fprintf(stderr, "%s: %s\n", o.model.c_str(),
                 std::string(model.status().message()).c_str());
    return 1;
  }
  const auto& hp = (*model)->hparams();
  const char* type_name = gguf::TypeInfo((*model)->layer(0).wq.type).name;
  const double bytes_per_token = static_cast<double>(DecodeBytesPerToken(**model));
  int max_tokens = o.gen;
  for (int p : prompts) max_tokens = std::max(max_tokens, p);
  std::printf("model %s: type %s, n_embd %u, n_ff %u, n_layer %u, n_head %u/%u, n_vocab %u\n",
              o.model.c_str(), type_name, hp.n_embd, hp.n_ff, hp.n_layer, hp.n_head, hp.n_head_kv,
              hp.n_vocab);
  std::printf("decode reads %.1f MB of weights per token\n\n", bytes_per_token / 1e6);

  engine::EngineOptions opts;
  opts.threads = o.threads;
  opts.weight_memory = o.weight_memory;
  opts.kv_capacity_tokens = max_tokens + 64;
  opts.max_context = max_tokens + 64;
  auto engine = engine::Engine::Create(std::move(*model), opts);
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", std::string(engine.status().message()).c_str());
    return 1;
  }
  std::printf("%s\n\n", (*engine)->WeightDescription().c_str());
  std::mt19937 rng(42);
  std::uniform_int_distribution<int32_t> pick(3, static_cast<int32_t>(hp.n_vocab) - 1);
  std::vector<int32_t> tokens(static_cast<size_t>(max_tokens));
  for (auto& t : tokens) t = pick(rng);
  Runner runner(**engine, std::move(tokens));

  std::vector<TestResult> results;
  for (int p : prompts) {
    TestResult r{absl::StrCat("pp", p), p, 0, {}};
    if (runner.Prefill(p) < 0) return 1;  // warm-up
    for (int i = 0; i < o.reps; ++i) {
      const double s = runner.Prefill(p);
      if (s < 0) return 1;
      r.samples_ts.push_back(p / s);
    }
    results.push_back(std::move(r));
  }
  if (o.gen > 0) {
    TestResult r{absl::StrCat("tg", o.gen), 0, o.gen, {}};
    if (runner.Generate(1) < 0) return 1;  // warm-up
    for (int i = 0; i < o.reps; ++i) {
      const double s = runner.Generate(o.gen);
      if (s < 0) return 1;
      r.samples_ts.push_back(o.gen / s);
    }
    results.push_back(std::move(r));
  }

  std::FILE* json = nullptr;
  if (!o.json_path.empty()) {
    json = std::fopen(o.json_path.c_str(), "a");
    if (json == nullptr) {
      std::fprintf(stderr, "cannot open %s\n", o.json_path.c_str());
      return 1;
    }
  }
  std::printf("| type | threads | kernels | test | tokens/s | weight GB/s | %% of bandwidth |\n");
  std::printf("|---|--:|---|---|--:|--:|--:|\n");
  for (TestResult& r : results) {
    Summarize(r);
    // Share of bandwidth: decode only (prefill is compute-bound and reads the weights once).
    std::string gbs, share;
    if (r.n_gen > 0) {
      const double bytes_per_s = r.mean * bytes_per_token;
      gbs = absl::StrFormat("%.2f", bytes_per_s / 1e9);
      share = absl::StrFormat("%.0f%%", 100.0 * bytes_per_s / bandwidth);
    }
    std::printf("| %s | %d | %s | %s | %.2f ± %.2f | %s | %s |\n", type_name, o.threads,
                o.kernels.c_str(), r.name.c_str(), r.mean, r.stddev, gbs.c_str(), share.c_str());
    if (json != nullptr) {
      std::fprintf(json,
                   "{\"engine\": \"pipeinfer\", \"model\": \"%s\", \"type\": \"%s\", \"threads\": "
                   "%d, \"kernels\": \"%s\", \"test\": \"%s\", \"n_prompt\": %d, \"n_gen\": %d, "
                   "\"avg_ts\": %.4f, \"stddev_ts\": %.4f, \"samples_ts\": [%s], "
                   "\"bytes_per_token\": %.0f, \"bandwidth_bytes_per_s\": %.0f}\n",
                   o.model.c_str(), type_name, o.threads, o.kernels.c_str(), r.name.c_str(),
                   r.n_prompt, r.n_gen, r.mean, r.stddev,
                   absl::StrJoin(r.samples_ts, ", ",
                                 [](std::string* out, double v) { absl::StrAppend(out, v); })
                       .c_str(),
                   bytes_per_token, bandwidth);
    }
  }
  if (json != nullptr) std::fclose(json);
  return 0;
}

}  // namespace pipeinfer::bench
