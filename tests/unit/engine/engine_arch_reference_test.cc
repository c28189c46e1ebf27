// Llama-3 (llama architecture, GQA with one KV head, rope base 500000, normal RoPE) and Qwen2
// (Q/K/V biases, NeoX RoPE) against llama.cpp's references for the byte-level BPE fixture models
// (tests/fixtures/README.md §9): every prompt row, the stored greedy rows, and the 32 greedy ids,
// run along the reference's own greedy path so that every step is checked.
//
// Tolerance (§9.8): F16 max |Δ| <= 0.05, rms <= 0.006; a greedy id (or a prompt row's argmax) must
// agree wherever the reference's top-1/top-2 margin exceeds 0.05. Both models tie the output to
// token_embd. A 2-stage split (layer 0 | layer 1 + head) gives bit-identical logits.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "engine/engine.h"
#include "kernels/interleave.h"
#include "kernels/kernels.h"
#include "testing/fixtures.h"
#include "unit/engine/reference_run.h"

namespace pipeinfer::engine {
namespace {

using pipeinfer::testing::FixturePath;
using pipeinfer::testing::ReadF32;
using pipeinfer::testing::ReadIds;

constexpr double kMaxTol = 0.05;
constexpr double kRmsTol = 0.006;

struct Case {
  const char* model;  // models/<model>.gguf, refs/<model>.p1.*
  int64_t n_vocab;
  size_t n_prompt;
  int32_t first_prompt_id;  // BOS for Llama-3; Qwen adds none
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.model; }

// A meta.txt line "<key> v0 v1 ..." as numbers.
std::vector<double> ReadMetaNumbers(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + " ", 0) != 0) continue;
    std::istringstream ss(line.substr(key.size() + 1));
    std::vector<double> out;
    double v;
    while (ss >> v) out.push_back(v);
    return out;
  }
  return {};
}

struct Refs {
  std::vector<int32_t> prompt, greedy;
  std::vector<float> prompt_logits, greedy_logits;  // greedy: the stored leading rows only
  // margins[s]: top-1 minus top-2 of the row returned by the decode of greedy id s, which decides
  // greedy id s + 1 (s = 31: next_after_last).
  std::vector<double> margins;
  int32_t next_after_last = -1;
  int64_t stored_greedy_rows = 0;
};

Refs LoadRefs(const Case& c) {
  const std::string base = FixturePath(std::string("refs/") + c.model + ".p1.");
  Refs r;
  r.prompt = ReadIds(base + "prompt_ids.txt");
  r.greedy = ReadIds(base + "greedy_ids.txt");
  r.prompt_logits = ReadF32(base + "prompt_logits.f32");
  r.greedy_logits = ReadF32(base + "greedy_logits.f32");
  r.margins = ReadMetaNumbers(base + "meta.txt", "greedy_margins_top1_minus_top2");
  const auto next = ReadMetaNumbers(base + "meta.txt", "next_after_last_greedy_step");
  if (next.size() == 1) r.next_after_last = static_cast<int32_t>(next[0]);
  r.stored_greedy_rows = static_cast<int64_t>(r.greedy_logits.size()) / c.n_vocab;
  return r;
}

std::unique_ptr<Engine> MakeEngine(std::shared_ptr<gguf::GgufFile> f, gguf::StageSpec spec) {
  auto m = StageModel::FromFile(std::move(f), spec);
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return nullptr;
  EngineOptions o;
  o.threads = 2;
  o.kv_type = kv::ElemType::kF16;  // as the references (llama.cpp's default)
  o.kv_capacity_tokens = 128;
  auto e = Engine::Create(std::move(*m), o);
  EXPECT_TRUE(e.ok()) << e.status();
  if (!e.ok()) return nullptr;
  EXPECT_TRUE((*e)->kv().OpenSession(1).ok());
  return std::move(*e);
}

std::shared_ptr<gguf::GgufFile> Open(const Case& c) {
  auto f = gguf::GgufFile::Open(FixturePath(std::string("models/") + c.model + ".gguf"));
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? std::shared_ptr<gguf::GgufFile>(std::move(*f)) : nullptr;
}

ForwardOutput RunOn(Engine& e, std::span<const int32_t> tokens, std::span<const float> hidden,
                    std::span<const int32_t> rows) {
  ForwardInput in;
  in.session = 1;
  in.tokens = tokens;
  in.hidden = hidden;
  in.output_rows = rows;
  auto out = e.Forward(in);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? std::move(*out) : ForwardOutput{};
}

struct Diff {
  double max = 0, sum_sq = 0;
  int64_t n = 0;
  void Add(const float* a, const float* b, int64_t len) {
    for (int64_t i = 0; i < len; ++i) {
      const double d = std::abs(static_cast<double>(a[i]) - b[i]);
      max = std::max(max, d);
      sum_sq += d * d;
    }
    n += len;
  }
  double rms() const { return n ? std::sqrt(sum_sq / n) : 0.0; }
};

class ArchReference : public ::testing::TestWithParam<Case> {};

TEST_P(ArchReference, PromptRowsAndGreedyPath) {
  const Case c = GetParam();
  const Refs r = LoadRefs(c);
  const int64_t V = c.n_vocab;
  ASSERT_EQ(r.prompt.size(), c.n_prompt);
  ASSERT_EQ(r.prompt.front(), c.first_prompt_id);
  ASSERT_EQ(r.prompt_logits.size(), c.n_prompt * V);
  ASSERT_EQ(r.greedy.size(), 32u);
  ASSERT_EQ(r.margins.size(), 32u);
  ASSERT_GE(r.stored_greedy_rows, 1);
  ASSERT_GE(r.next_after_last, 0);
  // The stored margins describe the stored greedy rows.
  for (int64_t s = 0; s < r.stored_greedy_rows; ++s) {
    EXPECT_NEAR(Margin(&r.greedy_logits[s * V], V), r.margins[s], 1e-4) << "greedy row " << s;
  }

  auto f = Open(c);
  ASSERT_NE(f, nullptr);
  auto engine = MakeEngine(f, {0, 2, true, true});
  ASSERT_NE(engine, nullptr);
  ASSERT_EQ(engine->model().hparams().n_vocab, V);

  std::vector<int32_t> rows(c.n_prompt);
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<int32_t>(i);
  const ForwardOutput prompt = RunOn(*engine, r.prompt, {}, rows);
  ASSERT_EQ(prompt.logits.size(), r.prompt_logits.size());
  Diff pd;
  pd.Add(prompt.logits.data(), r.prompt_logits.data(), static_cast<int64_t>(c.n_prompt) * V);
  std::printf("%s prompt rows: max|d| %.4f rms %.5f\n", c.model, pd.max, pd.rms());
  EXPECT_LE(pd.max, kMaxTol);
  EXPECT_LE(pd.rms(), kRmsTol);
  for (size_t row = 0; row < c.n_prompt; ++row) {
    const float* ref = &r.prompt_logits[row * V];
    if (Margin(ref, V) <= kMaxTol) continue;
    EXPECT_EQ(Top1(&prompt.logits[row * V], V), Top1(ref, V)) << "prompt row " << row;
  }

  // Greedy: feed the reference's ids, so every step sees the reference's context. The id after
  // each row must agree where the reference's margin for that row exceeds the tolerance.
  Diff gd;
  int checked = 0;
  const double first_margin = Margin(&r.prompt_logits[(c.n_prompt - 1) * V], V);
  if (first_margin > kMaxTol) {
    EXPECT_EQ(Top1(&prompt.logits[(c.n_prompt - 1) * V], V), r.greedy[0]) << "greedy id 0";
    ++checked;
  }
  for (int s = 0; s < 32; ++s) {
    const int32_t tok = r.greedy[s];
    const int32_t row0 = 0;
    const ForwardOutput o =
        RunOn(*engine, std::span<const int32_t>(&tok, 1), {}, std::span<const int32_t>(&row0, 1));
    ASSERT_EQ(o.logits.size(), static_cast<size_t>(V));
    EXPECT_EQ(o.positions[0], static_cast<int32_t>(c.n_prompt) + s);
    if (s < r.stored_greedy_rows) gd.Add(o.logits.data(), &r.greedy_logits[s * V], V);
    const int32_t want = s + 1 < 32 ? r.greedy[s + 1] : r.next_after_last;
    if (r.margins[s] > kMaxTol) {
      EXPECT_EQ(Top1(o.logits.data(), V), want)
          << "greedy id " << s + 1 << " (margin " << r.margins[s] << ")";
      ++checked;
    }
  }
  std::printf("%s greedy: %d/33 ids checked, stored rows %lld: max|d| %.4f\n", c.model, checked,
              static_cast<long long>(r.stored_greedy_rows), gd.max);
  EXPECT_EQ(checked, 33);  // every margin on these paths is above the tolerance (README §9.7)
  EXPECT_LE(gd.max, kMaxTol);
}

TEST_P(ArchReference, TwoStageSplitIsBitIdentical) {
  const Case c = GetParam();
  const Refs r = LoadRefs(c);
  const int64_t V = c.n_vocab;
  auto f = Open(c);
  ASSERT_NE(f, nullptr);
  auto full = MakeEngine(f, {0, 2, true, true});
  auto s0 = MakeEngine(f, {0, 1, true, false});
  auto s1 = MakeEngine(f, {1, 2, false, true});
  ASSERT_TRUE(full && s0 && s1);
  // The head stage ties its output to token_embd, which it does not use for embedding.
  const auto* embd = f->FindTensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  // (CPU stages read a copy of it in huge pages, maybe in groups of rows:
  // engine_weight_memory_test.)
  const kernels::Matrix& head = s1->model().output();
  ASSERT_EQ(head.rows * head.row_bytes, embd->n_bytes);
  std::vector<uint8_t> head_rows(embd->n_bytes);
  if (head.interleave == 1) {
    std::memcpy(head_rows.data(), head.data, embd->n_bytes);
  } else {
    kernels::internal::DeinterleaveRows(head, 0, head.rows, head_rows.data());
  }
  EXPECT_EQ(std::memcmp(head_rows.data(), embd->data, embd->n_bytes), 0);
  EXPECT_EQ(s1->model().token_embd().data, nullptr);

  std::vector<int32_t> rows(c.n_prompt);
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<int32_t>(i);
  const ForwardOutput want = RunOn(*full, r.prompt, {}, rows);
  const ForwardOutput mid = RunOn(*s0, r.prompt, {}, {});
  ASSERT_EQ(mid.hidden.size(), c.n_prompt * 64);
  const ForwardOutput got = RunOn(*s1, {}, mid.hidden, rows);
  ASSERT_EQ(got.logits.size(), want.logits.size());
  EXPECT_EQ(got.logits, want.logits);
  Diff d;
  d.Add(got.logits.data(), r.prompt_logits.data(), static_cast<int64_t>(c.n_prompt) * V);
  EXPECT_LE(d.max, kMaxTol);

  // And the steps of the greedy path that have stored rows.
  for (int s = 0; s < 2; ++s) {
    const int32_t tok = r.greedy[s];
    const int32_t row0 = 0;
    const ForwardOutput a =
        RunOn(*full, std::span<const int32_t>(&tok, 1), {}, std::span<const int32_t>(&row0, 1));
    const ForwardOutput h = RunOn(*s0, std::span<const int32_t>(&tok, 1), {}, {});
    const ForwardOutput b = RunOn(*s1, {}, h.hidden, std::span<const int32_t>(&row0, 1));
    EXPECT_EQ(a.logits, b.logits) << "step " << s;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ArchReference,
                         ::testing::Values(Case{"llama3-tiny-f16", 128256, 11, 128000},
                                           Case{"qwen2-tiny-f16", 151936, 10, 785}),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return FixtureTestName(info.param.model);
                         });

}  // namespace
}  // namespace pipeinfer::engine
