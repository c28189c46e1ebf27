// The architecture features without a llama.cpp fixture, checked against a naive float64
// implementation written here from the architectures' definitions (straight loops over the weight
// arrays, nothing shared with the engine): Qwen3's per-head Q/K RMSNorm (with head_dim != n_embd /
// n_head), Qwen2's biases, NeoX vs normal RoPE, Llama-3.1 frequency factors (rope_freqs.weight) and
// llama3 rope-scaling keys, tied and untied output. Small random F32 models are written with the
// GGUF writer (unit/gguf/arch_model.h).
//
// Each case also runs the naive model with one feature switched off and requires a large gap, so
// that the comparison demonstrably depends on that feature.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <numbers>
#include <ostream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "engine/engine.h"
#include "kernels/kernels.h"
#include "unit/gguf/arch_model.h"

namespace pipeinfer::engine {
namespace {

using pipeinfer::testing::ArchModel;
using pipeinfer::testing::ArchModelSpec;

// --- The naive reference --------------------------------------------------------------------

struct Naive {
  bool qk_norm = true;       // apply attn_q_norm / attn_k_norm when the model has them
  bool biases = true;        // add attn_q/k/v.bias when the model has them
  bool neox = true;          // pairs (i, i + hd/2); false: (2i, 2i+1)
  bool freq_factors = true;  // rope_freqs.weight / llama3 scaling, when the model has them
  bool tied_head = true;     // false: use token_embd even when output.weight exists (a wrong model)
};

using Vec = std::vector<double>;

// y = W x for W row-major [rows][cols].
Vec MatVec(const std::vector<float>& w, const Vec& x, size_t rows) {
  const size_t cols = x.size();
  Vec y(rows, 0.0);
  for (size_t r = 0; r < rows; ++r) {
    double s = 0;
    for (size_t c = 0; c < cols; ++c) s += static_cast<double>(w[r * cols + c]) * x[c];
    y[r] = s;
  }
  return y;
}

Vec RmsNormed(const double* x, size_t n, const std::vector<float>& w, double eps) {
  double ss = 0;
  for (size_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const double inv = 1.0 / std::sqrt(ss / n + eps);
  Vec y(n);
  for (size_t i = 0; i < n; ++i) y[i] = x[i] * inv * w[i];
  return y;
}

// Angular frequency of each rotated pair.
Vec Frequencies(const ArchModelSpec& s, const Naive& o) {
  const size_t hd = s.hd();
  Vec f(hd / 2);
  for (size_t i = 0; i < hd / 2; ++i) {
    f[i] = std::pow(static_cast<double>(s.rope_base), -2.0 * i / hd);
  }
  if (!o.freq_factors) return f;
  if (!s.rope_freqs.empty()) {
    for (size_t i = 0; i < f.size(); ++i) f[i] /= s.rope_freqs[i];
  } else if (s.llama3_scaling) {
    // Llama-3.1: keep short wavelengths, slow long ones by `factor`, blend in between.
    const double long_wl = s.orig_ctx / static_cast<double>(s.low_freq_factor);
    const double short_wl = s.orig_ctx / static_cast<double>(s.high_freq_factor);
    for (double& fr : f) {
      const double wl = 2 * std::numbers::pi / fr;
      if (wl > long_wl) {
        fr = fr / s.scaling_factor;
      } else if (wl >= short_wl) {
        const double t =
            (s.orig_ctx / wl - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        fr = (1 - t) * fr / s.scaling_factor + t * fr;
      }
    }
  }
  return f;
}

void Rotate(double* head, size_t hd, int pos, const Vec& freq, bool neox) {
  for (size_t i = 0; i < hd / 2; ++i) {
    const size_t a = neox ? i : 2 * i;
    const size_t b = neox ? i + hd / 2 : 2 * i + 1;
    const double c = std::cos(pos * freq[i]), sn = std::sin(pos * freq[i]);
    const double x0 = head[a], x1 = head[b];
    head[a] = x0 * c - x1 * sn;
    head[b] = x0 * sn + x1 * c;
  }
}

// Logits [tokens.size()][n_vocab] of a causal forward pass over `tokens` (positions 0, 1, ...).
std::vector<Vec> NaiveLogits(const ArchModel& m, const std::vector<int32_t>& tokens,
                             const Naive& o) {
  const ArchModelSpec& s = m.spec;
  const size_t T = tokens.size(), E = s.n_embd, hd = s.hd(), H = s.n_head, HKV = s.n_head_kv;
  const double eps = s.eps;
  const Vec freq = Frequencies(s, o);
  std::vector<Vec> x(T, Vec(E));
  for (size_t t = 0; t < T; ++t) {
    for (size_t i = 0; i < E; ++i) x[t][i] = m.token_embd[tokens[t] * E + i];
  }
  for (const ArchModel::Layer& L : m.layers) {
    std::vector<Vec> q(T), k(T), v(T);
    for (size_t t = 0; t < T; ++t) {
      const Vec h = RmsNormed(x[t].data(), E, L.attn_norm, eps);
      q[t] = MatVec(L.wq, h, H * hd);
      k[t] = MatVec(L.wk, h, HKV * hd);
      v[t] = MatVec(L.wv, h, HKV * hd);
      if (o.biases && !L.bq.empty()) {
        for (size_t i = 0; i < q[t].size(); ++i) q[t][i] += L.bq[i];
        for (size_t i = 0; i < k[t].size(); ++i) k[t][i] += L.bk[i];
        for (size_t i = 0; i < v[t].size(); ++i) v[t][i] += L.bv[i];
      }
      if (o.qk_norm && !L.q_norm.empty()) {
        for (size_t hh = 0; hh < H; ++hh) {
          const Vec n = RmsNormed(&q[t][hh * hd], hd, L.q_norm, eps);
          std::copy(n.begin(), n.end(), q[t].begin() + hh * hd);
        }
        for (size_t hh = 0; hh < HKV; ++hh) {
          const Vec n = RmsNormed(&k[t][hh * hd], hd, L.k_norm, eps);
          std::copy(n.begin(), n.end(), k[t].begin() + hh * hd);
        }
      }
      for (size_t hh = 0; hh < H; ++hh) Rotate(&q[t][hh * hd], hd, t, freq, o.neox);
      for (size_t hh = 0; hh < HKV; ++hh) Rotate(&k[t][hh * hd], hd, t, freq, o.neox);
    }
    for (size_t t = 0; t < T; ++t) {
      Vec att(H * hd, 0.0);
      for (size_t hh = 0; hh < H; ++hh) {
        const size_t g = hh / (H / HKV);  // the KV head shared by this group of query heads
        Vec sc(t + 1);
        double mx = -1e300;
        for (size_t j = 0; j <= t; ++j) {
          double d = 0;
          for (size_t i = 0; i < hd; ++i) d += q[t][hh * hd + i] * k[j][g * hd + i];
          sc[j] = d / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, sc[j]);
        }
        double z = 0;
        for (double& e : sc) z += (e = std::exp(e - mx));
        for (size_t j = 0; j <= t; ++j) {
          for (size_t i = 0; i < hd; ++i) att[hh * hd + i] += sc[j] / z * v[j][g * hd + i];
        }
      }
      const Vec out = MatVec(L.wo, att, E);
      for (size_t i = 0; i < E; ++i) x[t][i] += out[i];
      const Vec h = RmsNormed(x[t].data(), E, L.ffn_norm, eps);
      const Vec gate = MatVec(L.gate, h, s.n_ff), up = MatVec(L.up, h, s.n_ff);
      Vec act(s.n_ff);
      for (size_t i = 0; i < act.size(); ++i) act[i] = gate[i] / (1 + std::exp(-gate[i])) * up[i];
      const Vec down = MatVec(L.down, act, E);
      for (size_t i = 0; i < E; ++i) x[t][i] += down[i];
    }
  }
  const std::vector<float>& head = (m.output.empty() || !o.tied_head) ? m.token_embd : m.output;
  std::vector<Vec> logits(T);
  for (size_t t = 0; t < T; ++t) {
    logits[t] = MatVec(head, RmsNormed(x[t].data(), E, m.output_norm, eps), s.n_vocab);
  }
  return logits;
}

// --- Cases ------------------------------------------------------------------------------------

struct Case {
  const char* name;
  ArchModelSpec spec;
  Naive wrong;  // the naive model with one feature off: must be far from the engine
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::vector<Case> Cases() {
  std::vector<Case> out;
  {
    ArchModelSpec s;  // Qwen3: per-head norms, head_dim 32 (n_head * head_dim = 128 != n_embd)
    s.arch = "qwen3";
    s.qk_norm = true;
    s.head_dim = 32;
    s.qk_gain = 3.0f;
    s.seed = 11;
    Naive w;
    w.qk_norm = false;
    out.push_back({"qwen3_qk_norm", s, w});
    Naive w2;
    w2.neox = false;
    out.push_back({"qwen3_neox", s, w2});
  }
  {
    ArchModelSpec s;  // Qwen2: biases, GQA 4/2, untied head
    s.arch = "qwen2";
    s.biases = true;
    s.tied = false;
    s.seed = 12;
    Naive w;
    w.biases = false;
    out.push_back({"qwen2_biases", s, w});
    Naive w2;
    w2.tied_head = false;
    out.push_back({"qwen2_untied", s, w2});
  }
  {
    ArchModelSpec s;  // Llama-3.1 with an explicit rope_freqs tensor, one KV head
    s.arch = "llama";
    s.n_head_kv = 1;
    s.rope_base = 10000.0f;
    s.eps = 1e-5f;
    s.qk_gain = 2.0f;
    s.rope_freqs = {1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, 8.0f, 8.0f};
    s.seed = 13;
    Naive w;
    w.neox = false;
    w.freq_factors = false;
    out.push_back({"llama_rope_freqs", s, w});
    ArchModelSpec k = s;  // the same through the llama3 rope-scaling keys
    k.rope_freqs.clear();
    k.llama3_scaling = true;
    k.orig_ctx = 32;
    k.seed = 14;
    out.push_back({"llama_llama3_keys", k, w});
    Naive w2;
    w2.neox = true;  // llama is normal RoPE
    out.push_back({"llama_normal_rope", k, w2});
  }
  return out;
}

Naive RightFor(const ArchModelSpec& s) {
  Naive n;
  n.neox = s.arch != "llama";
  return n;
}

std::string TempModel(const std::string& name) {
  return ::testing::TempDir() + "/engine_arch_synth_test." + std::to_string(getpid()) + "." + name +
         ".gguf";
}

class ArchSynth : public ::testing::TestWithParam<Case> {};

// A 14-token prompt in one batch, then 6 single-token steps.
const std::vector<int32_t> kSeq = {5,   17, 250, 3,  99,  42, 7,   123, 64, 201,
                                   299, 0,  88,  11, 150, 6,  277, 31,  90, 14};
constexpr size_t kPrompt = 14;

// The engine's logits for every token of kSeq, [kSeq.size()][n_vocab] (empty on failure).
std::vector<float> EngineLogits(const std::string& path, int64_t n_vocab) {
  auto sm = StageModel::LoadFull(path);
  EXPECT_TRUE(sm.ok()) << sm.status();
  if (!sm.ok()) return {};
  EngineOptions opts;
  opts.threads = 2;
  opts.kv_type = kv::ElemType::kF32;
  opts.kv_capacity_tokens = 64;
  auto engine = Engine::Create(std::move(*sm), opts);
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (!engine.ok()) return {};
  Engine& e = **engine;
  EXPECT_TRUE(e.kv().OpenSession(1).ok());
  std::vector<float> ours;
  std::vector<int32_t> rows(kPrompt);
  for (size_t i = 0; i < kPrompt; ++i) rows[i] = static_cast<int32_t>(i);
  ForwardInput in;
  in.session = 1;
  in.tokens = std::span<const int32_t>(kSeq.data(), kPrompt);
  in.output_rows = rows;
  auto out = e.Forward(in);
  EXPECT_TRUE(out.ok()) << out.status();
  if (!out.ok()) return {};
  ours = out->logits;
  for (size_t t = kPrompt; t < kSeq.size(); ++t) {
    const int32_t row0 = 0;
    ForwardInput step;
    step.session = 1;
    step.tokens = std::span<const int32_t>(&kSeq[t], 1);
    step.output_rows = std::span<const int32_t>(&row0, 1);
    auto o = e.Forward(step);
    EXPECT_TRUE(o.ok()) << o.status();
    if (!o.ok()) return {};
    EXPECT_EQ(o->positions[0], static_cast<int32_t>(t));
    ours.insert(ours.end(), o->logits.begin(), o->logits.end());
  }
  EXPECT_EQ(ours.size(), kSeq.size() * n_vocab);
  return ours;
}

TEST_P(ArchSynth, MatchesNaiveFloat64) {
  const Case& c = GetParam();
  const ArchModel model = pipeinfer::testing::MakeArchModel(c.spec);
  const std::string path = TempModel(c.name);
  ASSERT_TRUE(pipeinfer::testing::WriteArchModel(model, path).ok());
  const int64_t V = c.spec.n_vocab;
  const std::vector<Vec> right_ref = NaiveLogits(model, kSeq, RightFor(c.spec));
  const std::vector<Vec> wrong_ref = NaiveLogits(model, kSeq, c.wrong);
  auto max_diff = [&](const std::vector<float>& ours, const std::vector<Vec>& ref) {
    double m = 0, scale = 0;
    for (size_t t = 0; t < kSeq.size(); ++t) {
      for (int64_t j = 0; j < V; ++j) {
        m = std::max(m, std::abs(ours[t * V + j] - ref[t][j]));
        scale = std::max(scale, std::abs(ref[t][j]));
      }
    }
    EXPECT_GT(scale, 1.0);  // the logits are not degenerate
    return m;
  };
  // The vectorized kernels where the CPU has them, and the portable ones.
  for (bool scalar : {false, true}) {
    if (!scalar && !kernels::CpuHasAvx2Fma()) {
      std::printf("%s: no AVX2/FMA on this CPU, vectorized path skipped\n", c.name);
      continue;
    }
    kernels::SetForceScalar(scalar);
    const std::vector<float> ours = EngineLogits(path, V);
    kernels::SetForceScalar(false);
    ASSERT_EQ(ours.size(), kSeq.size() * V);
    const double right = max_diff(ours, right_ref);
    const double wrong = max_diff(ours, wrong_ref);
    std::printf(
        "%s (%s kernels): engine vs naive max|d| %.2e; vs naive with the feature off %.3f\n",
        c.name, scalar ? "portable" : "vectorized", right, wrong);
    EXPECT_LE(right, 1e-3);
    EXPECT_GE(wrong, 0.5);
  }
  unlink(path.c_str());
}

INSTANTIATE_TEST_SUITE_P(Models, ArchSynth, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return std::string(info.param.name);
                         });

// Qwen3 split over two stages (layer 0 | layer 1 + tied head) gives the same logits, including
// through the per-head norms of the second stage.
TEST(ArchSynthSplit, Qwen3TwoStagesBitIdentical) {
  ArchModelSpec s;
  s.arch = "qwen3";
  s.qk_norm = true;
  s.head_dim = 32;
  s.seed = 21;
  const std::string path = TempModel("split");
  ASSERT_TRUE(pipeinfer::testing::WriteArchModel(pipeinfer::testing::MakeArchModel(s), path).ok());
  auto f = gguf::GgufFile::Open(path);
  unlink(path.c_str());
  ASSERT_TRUE(f.ok()) << f.status();
  std::shared_ptr<gguf::GgufFile> shared(std::move(*f));
  auto make = [&](gguf::StageSpec spec) {
    auto m = StageModel::FromFile(shared, spec);
    EXPECT_TRUE(m.ok()) << m.status();
    EngineOptions o;
    o.kv_capacity_tokens = 64;
    auto e = Engine::Create(std::move(*m), o);
    EXPECT_TRUE(e.ok()) << e.status();
    EXPECT_TRUE((*e)->kv().OpenSession(1).ok());
    return std::move(*e);
  };
  auto full = make({0, 2, true, true});
  auto s0 = make({0, 1, true, false});
  auto s1 = make({1, 2, false, true});
  const std::vector<int32_t> prompt = {3, 141, 59, 26, 5, 35, 89, 79};
  const std::vector<int32_t> rows = {0, 3, 7};
  ForwardInput in;
  in.session = 1;
  in.tokens = prompt;
  in.output_rows = rows;
  auto want = full->Forward(in);
  ASSERT_TRUE(want.ok()) << want.status();
  ForwardInput a;
  a.session = 1;
  a.tokens = prompt;
  auto mid = s0->Forward(a);
  ASSERT_TRUE(mid.ok()) << mid.status();
  ForwardInput b;
  b.session = 1;
  b.hidden = mid->hidden;
  b.output_rows = rows;
  auto got = s1->Forward(b);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->logits, want->logits);
  EXPECT_EQ(got->logits.size(), rows.size() * s.n_vocab);
}

}  // namespace
}  // namespace pipeinfer::engine
