// The forward pass against llama.cpp's reference logits (tests/fixtures/refs): every prompt row
// from one batched run, and 32 greedy single-token steps, for every fixture model.
//
// Numerics: activations are F32 and weights exactly dequantized, so quantized models are compared
// with the `-deq` references (llama.cpp run on exactly dequantized weights); F32/F16 models with
// their own references. Bound: max |Δlogit| <= 0.03 (tests/fixtures/README.md §5).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <sstream>

#include <gtest/gtest.h>

#include "engine/engine.h"
#include "kernels/kernels.h"
#include "testing/fixtures.h"

namespace pipeinfer::engine {
namespace {

using pipeinfer::testing::FixturePath;
using pipeinfer::testing::ReadF32;
using pipeinfer::testing::ReadIds;

int32_t Argmax(const float* x, int64_t n) {
  return static_cast<int32_t>(std::max_element(x, x + n) - x);
}

struct Case {
  const char* model;  // models/<model>.gguf
  const char* ref;    // refs/<ref>.p1.*
  kv::ElemType kv_type;
  // Greedy ids that must agree; -1: as long as the reference's top-1/top-2 margin exceeds twice
  // the measured prompt error (a smaller margin may legitimately flip).
  int greedy_must_match;
};

// The exact numerics (the fast, llama.cpp-like ones are checked by engine_fastmath_test).
class ExactMath : public ::testing::Environment {
 public:
  void SetUp() override { kernels::SetQuantMath(kernels::QuantMath::kExact); }
};
const auto* const kExactMath = ::testing::AddGlobalTestEnvironment(new ExactMath);

class EngineReference : public ::testing::TestWithParam<Case> {};

TEST_P(EngineReference, PromptAndGreedyLogits) {
  const Case c = GetParam();
  auto model = StageModel::LoadFull(FixturePath(std::string("models/") + c.model + ".gguf"));
  ASSERT_TRUE(model.ok()) << model.status();
  EngineOptions opts;
  opts.threads = 2;
  opts.kv_type = c.kv_type;
  opts.kv_capacity_tokens = 512;
  auto engine = Engine::Create(std::move(*model), opts);
  ASSERT_TRUE(engine.ok()) << engine.status();
  Engine& e = **engine;
  const int64_t V = e.model().hparams().n_vocab;
  ASSERT_EQ(V, 259);

  const std::string base = FixturePath(std::string("refs/") + c.ref + ".p1.");
  const auto prompt = ReadIds(base + "prompt_ids.txt");
  const auto prompt_ref = ReadF32(base + "prompt_logits.f32");
  const auto greedy_ids = ReadIds(base + "greedy_ids.txt");
  const auto greedy_ref = ReadF32(base + "greedy_logits.f32");
  ASSERT_EQ(prompt.size(), 64u);
  ASSERT_EQ(prompt_ref.size(), prompt.size() * V);
  ASSERT_EQ(greedy_ids.size(), 32u);
  ASSERT_EQ(greedy_ref.size(), 32u * V);

  ASSERT_TRUE(e.kv().OpenSession(1).ok());
  std::vector<int32_t> rows(prompt.size());
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<int32_t>(i);
  ForwardInput in;
  in.session = 1;
  in.tokens = prompt;
  in.output_rows = rows;
  auto out = e.Forward(in);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->logits.size(), prompt_ref.size());
  double max_d = 0, sum_sq = 0;
  for (size_t i = 0; i < prompt_ref.size(); ++i) {
    const double d = std::abs(out->logits[i] - prompt_ref[i]);
    max_d = std::max(max_d, d);
    sum_sq += d * d;
  }
  std::printf("%s vs %s: prompt max|d| %.4f rms %.5f\n", c.model, c.ref, max_d,
              std::sqrt(sum_sq / prompt_ref.size()));
  EXPECT_LE(max_d, 0.03);
  for (size_t r = 0; r < prompt.size(); ++r) {
    EXPECT_EQ(Argmax(&out->logits[r * V], V), Argmax(&prompt_ref[r * V], V)) << "row " << r;
  }

  // Reference margin of each greedy step's decision (row producing g_s).
  auto margin = [&](const float* row) {
    std::vector<float> r(row, row + V);
    std::partial_sort(r.begin(), r.begin() + 2, r.end(), std::greater<float>());
    return r[0] - r[1];
  };
  int must = c.greedy_must_match;
  if (must < 0) {
    must = 0;
    while (must < 32) {
      const float* row =
          must == 0 ? &prompt_ref[(prompt.size() - 1) * V] : &greedy_ref[(must - 1) * V];
      if (margin(row) <= 2 * max_d) break;
      ++must;
    }
    std::printf("greedy ids required to match: %d\n", must);
  }

  // Greedy: g0 from the last prompt row, then one token per step.
  int32_t next = Argmax(&out->logits[(prompt.size() - 1) * V], V);
  double greedy_max = 0;
  for (int s = 0; s < 32; ++s) {
    if (s < must) ASSERT_EQ(next, greedy_ids[s]) << "greedy step " << s;
    if (next != greedy_ids[s]) break;
    const int32_t tok = next;
    const int32_t row0 = 0;
    ForwardInput step;
    step.session = 1;
    step.tokens = std::span<const int32_t>(&tok, 1);
    step.output_rows = std::span<const int32_t>(&row0, 1);
    auto o = e.Forward(step);
    ASSERT_TRUE(o.ok()) << o.status();
    EXPECT_EQ(o->positions[0], static_cast<int32_t>(prompt.size()) + s);
    for (int64_t j = 0; j < V; ++j) {
      greedy_max = std::max<double>(greedy_max, std::abs(o->logits[j] - greedy_ref[s * V + j]));
    }
    next = Argmax(o->logits.data(), V);
  }
  std::printf("%s vs %s: greedy max|d| %.4f\n", c.model, c.ref, greedy_max);
  EXPECT_LE(greedy_max, 0.03);
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, EngineReference,
    ::testing::Values(Case{"tiny-f32", "tiny-f32", kv::ElemType::kF16, 32},
                      Case{"tiny-f32", "tiny-f32-kvf32", kv::ElemType::kF32, 32},
                      Case{"tiny-f16", "tiny-f16", kv::ElemType::kF16, 32},
                      Case{"tiny-f16", "tiny-f16-deq", kv::ElemType::kF16, 32},
                      Case{"tiny-q8_0", "tiny-q8_0-deq", kv::ElemType::kF16, -1},
                      Case{"tiny-q4_0", "tiny-q4_0-deq", kv::ElemType::kF16, -1},
                      Case{"tiny-q4_0-pure", "tiny-q4_0-pure-deq", kv::ElemType::kF16, -1},
                      Case{"tiny-q4_k_m", "tiny-q4_k_m-deq", kv::ElemType::kF16, -1},
                      Case{"tiny-q6_k", "tiny-q6_k-deq", kv::ElemType::kF16, -1}),
    [](const ::testing::TestParamInfo<Case>& info) {
      std::string n = info.param.ref;
      for (char& ch : n) {
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      }
      return n;
    });

}  // namespace
}  // namespace pipeinfer::engine
