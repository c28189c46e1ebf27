#include "cli/calibrate_commands.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/engine.h"
#include "tokenizer/tokenizer.h"

namespace pipeinfer::cli {
namespace {

struct CalibrateArgs {
  std::string target, draft, text;
  int64_t tokens = 0;  // positions to score; 0 = all
  int threads = 2;
  int exact_ranks = 16;  // ranks 1..K get a bin each, then power-of-two bins
};

absl::StatusOr<std::unique_ptr<engine::Engine>> LoadEngine(const std::string& path, int threads) {
  auto model = engine::StageModel::LoadFull(path);
  if (!model.ok()) return model.status();
  engine::EngineOptions o;
  o.threads = threads;
  o.kv_type = kv::ElemType::kF32;
  o.kv_capacity_tokens = (*model)->hparams().n_ctx_train;
  return engine::Engine::Create(std::move(*model), o);
}

// Logits of every row of `window`, computed in a fresh session.
absl::StatusOr<std::vector<float>> AllRows(engine::Engine& e, std::span<const int32_t> window) {
  if (absl::Status st = e.kv().OpenSession(1); !st.ok()) return st;
  std::vector<int32_t> rows(window.size());
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<int32_t>(i);
  engine::ForwardInput in;
  in.session = 1;
  in.tokens = window;
  in.output_rows = rows;
  auto out = e.Forward(in);
  (void)e.kv().CloseSession(1);
  if (!out.ok()) return out.status();
  return std::move(out->logits);
}

// The top token's probability under softmax(logits / temperature).
float Top1Probability(std::span<const float> logits, double temperature = 1.0) {
  const float m = *std::max_element(logits.begin(), logits.end());
  double z = 0;
  for (float x : logits) z += std::exp(static_cast<double>(x - m) / temperature);
  return static_cast<float>(1.0 / z);
}

// Temperatures tried for the oracle's "wrong" confidence: 1, 1.05, ..., 8.
constexpr int kTemperatures = 141;
double TemperatureAt(int k) { return 1.0 + 0.05 * k; }

// Mean, then the 10th, 50th and 90th percentiles.
std::string Summary(std::vector<float> v) {
  if (v.empty()) return "n=0";
  std::sort(v.begin(), v.end());
  double sum = 0;
  for (float x : v) sum += x;
  auto q = [&](double f) { return v[static_cast<size_t>(f * static_cast<double>(v.size() - 1))]; };
  char buf[160];
  std::snprintf(buf, sizeof(buf), "n=%zu mean %.3f p10 %.3f p50 %.3f p90 %.3f", v.size(),
                sum / static_cast<double>(v.size()), q(0.1), q(0.5), q(0.9));
  return buf;
}

int RunCalibrate(const CalibrateArgs& a) {
  auto fail = [](const auto& m) {
    std::cerr << "error: " << m << "\n";
    return 1;
  };
  auto target = LoadEngine(a.target, a.threads);
  if (!target.ok()) return fail(target.status().message());
  auto draft = LoadEngine(a.draft, a.threads);
  if (!draft.ok()) return fail(draft.status().message());
  const int64_t V = (*target)->model().hparams().n_vocab;
  if ((*draft)->model().hparams().n_vocab != V) return fail("the models' vocabularies differ");
  auto tok = tokenizer::Tokenizer::FromGguf((*target)->model().file());
  if (!tok.ok()) return fail(tok.status().message());
  std::ifstream f(a.text, std::ios::binary);
  if (!f) return fail("cannot read " + a.text);
  std::stringstream ss;
  ss << f.rdbuf();
  // Documents are separated by an empty line; each is encoded with BOS and cut into
  // non-overlapping windows of the smaller context.
  std::vector<std::string> docs;
  {
    const std::string all = ss.str();
    size_t p = 0;
    while (p < all.size()) {
      size_t q = all.find("\n\n", p);
      if (q == std::string::npos) q = all.size();
      std::string d = all.substr(p, q - p);
      while (!d.empty() && d.back() == '\n') d.pop_back();
      if (!d.empty()) docs.push_back(std::move(d));
      p = q + 2;
    }
  }
  const int32_t ctx = std::min((*target)->max_context(), (*draft)->max_context());
  std::vector<int64_t> rank_count(static_cast<size_t>(V) + 1, 0);
  std::vector<float> conf_right, conf_wrong, tconf_right, tconf_wrong, p_target_when_wrong;
  int64_t scored = 0;
  // Sum over all positions of the target's top-1 probability at each trial temperature: the oracle
  // (the target as its own draft) is wrong at hashed, i.e. arbitrary, positions.
  std::vector<double> tempered(kTemperatures, 0.0);
  for (const std::string& d : docs) {
    const std::vector<int32_t> ids = (*tok)->Encode(d, true, false);
    for (size_t w = 0; w < ids.size(); w += static_cast<size_t>(ctx)) {
      if (a.tokens > 0 && scored >= a.tokens) break;
      const std::span<const int32_t> window =
          std::span<const int32_t>(ids).subspan(w, std::min<size_t>(ctx, ids.size() - w));
      auto tl = AllRows(**target, window);
      if (!tl.ok()) return fail(tl.status().message());
      auto dl = AllRows(**draft, window);
      if (!dl.ok()) return fail(dl.status().message());
      for (size_t i = 0; i < window.size(); ++i) {
        if (a.tokens > 0 && scored >= a.tokens) break;
        const std::span<const float> t(tl->data() + i * V, V), dr(dl->data() + i * V, V);
        const size_t g = std::max_element(t.begin(), t.end()) - t.begin();
        const int64_t rank =
            1 + std::count_if(dr.begin(), dr.end(), [&](float x) { return x > dr[g]; });
        ++rank_count[rank];
        ++scored;
        const float dc = Top1Probability(dr), tc = Top1Probability(t);
        for (int k = 0; k < kTemperatures; ++k) tempered[k] += Top1Probability(t, TemperatureAt(k));
        if (rank == 1) {
          conf_right.push_back(dc);
          tconf_right.push_back(tc);
        } else {
          conf_wrong.push_back(dc);
          tconf_wrong.push_back(tc);
          p_target_when_wrong.push_back(static_cast<float>(
              dc * std::exp(static_cast<double>(dr[g]) - *std::max_element(dr.begin(), dr.end()))));
        }
      }
    }
  }
  if (scored == 0) return fail("no positions scored (empty text?)");
  const double n = static_cast<double>(scored);
  std::printf("positions %lld (%zu documents, windows of %d tokens)\n",
              static_cast<long long>(scored), docs.size(), ctx);
  // Bins: 1..K exactly, then (K, 2K], (2K, 4K], ... up to the vocabulary.
  struct Bin {
    int64_t lo, hi, count;
  };
  std::vector<Bin> bins;
  for (int64_t r = 1; r <= std::min<int64_t>(a.exact_ranks, V); ++r) {
    bins.push_back({r, r, rank_count[r]});
  }
  for (int64_t lo = a.exact_ranks + 1; lo <= V; lo = 2 * lo - 1) {
    const int64_t hi = std::min<int64_t>(V, 2 * lo - 2);
    int64_t c = 0;
    for (int64_t r = lo; r <= hi; ++r) c += rank_count[r];
    bins.push_back({lo, hi, c});
  }
  std::printf("rank histogram of the target's greedy token under the draft:\n");
  int64_t cum = 0;
  const int64_t wrong = scored - rank_count[1];
  for (const Bin& b : bins) {
    cum += b.count;
    std::printf("  rank %5lld..%-5lld  P %.5f  P(rank<=hi) %.5f  P(.|rank>=2) %.5f\n",
                static_cast<long long>(b.lo), static_cast<long long>(b.hi), b.count / n, cum / n,
                b.lo >= 2 && wrong > 0 ? static_cast<double>(b.count) / wrong : 0.0);
  }
  for (int64_t k : {1, 2, 4, 8, 16}) {
    int64_t above = 0;
    for (int64_t r = k + 1; r <= V; ++r) above += rank_count[r];
    std::printf("  P(rank>%lld) %.5f\n", static_cast<long long>(k), above / n);
  }
  std::printf("draft top-1 probability when right: %s\n", Summary(conf_right).c_str());
  std::printf("draft top-1 probability when wrong: %s\n", Summary(conf_wrong).c_str());
  std::printf("target top-1 probability where the draft is right: %s\n",
              Summary(tconf_right).c_str());
  std::printf("target top-1 probability where the draft is wrong: %s\n",
              Summary(tconf_wrong).c_str());
  std::printf("draft probability of the target's token when wrong: %s\n",
              Summary(p_target_when_wrong).c_str());
  // The temperature at which the target's mean top-1 probability falls to the draft's mean when
  // wrong (interpolated on the grid): what the oracle uses to look as unsure as a wrong draft.
  double sum_wrong = 0;
  for (float x : conf_wrong) sum_wrong += x;
  if (!conf_wrong.empty()) {
    const double goal = sum_wrong / static_cast<double>(conf_wrong.size());
    double t_wrong = TemperatureAt(kTemperatures - 1);
    for (int k = 1; k < kTemperatures; ++k) {
      const double hi = tempered[k - 1] / n, lo = tempered[k] / n;
      if (lo <= goal && goal <= hi) {
        t_wrong = TemperatureAt(k - 1) + 0.05 * (hi - goal) / std::max(hi - lo, 1e-12);
        break;
      }
    }
    if (tempered[0] / n <= goal) t_wrong = 1.0;
    std::printf("target top-1 probability at all positions: mean %.3f\n", tempered[0] / n);
    std::printf("temperature bringing it to the draft's mean when wrong (%.3f): %.3f\n", goal,
                t_wrong);
  }
  // The buckets as oracle_ranks.cc wants them (the last bucket's hi is the largest rank seen).
  int64_t max_rank = 1;
  for (int64_t r = 1; r <= V; ++r) {
    if (rank_count[r] > 0) max_rank = r;
  }
  std::printf("C++ buckets {lo, hi, p}:\n");
  for (const Bin& b : bins) {
    if (b.lo > max_rank) break;
    std::printf("    {%lld, %lld, %.6f},\n", static_cast<long long>(b.lo),
                static_cast<long long>(std::min(b.hi, max_rank)), b.count / n);
  }
  return 0;
}

}  // namespace

void RegisterCalibrateCommands(CLI::App& app) {
  auto a = std::make_shared<CalibrateArgs>();
  auto* c = app.add_subcommand(
      "calibrate-draft",
      "Measure where the target's greedy token ranks under a draft (teacher-forced over a text): "
      "the histogram behind pipeinfer-draft --draft-rank-model demo");
  c->add_option("--target", a->target, "Target GGUF")->required();
  c->add_option("--draft", a->draft, "Draft GGUF (same vocabulary)")->required();
  c->add_option("--text", a->text,
                "Text file; documents separated by an empty line, each scored from BOS in "
                "windows of the models' context")
      ->required();
  c->add_option("--tokens", a->tokens, "Positions to score (0 = the whole text)")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--threads,-t", a->threads, "Compute threads")->check(CLI::Range(1, 256));
  c->add_option("--exact-ranks", a->exact_ranks, "Ranks with a bin each (then powers of two)")
      ->check(CLI::Range(1, 4096));
  c->final_callback([a] {
    if (int rc = RunCalibrate(*a)) throw CLI::RuntimeError(rc);
  });
}

}  // namespace pipeinfer::cli
