// The forward pass against llama.cpp's reference logits (tests/fixtures/refs): every prompt row
// from one batched run, and 32 greedy single-token steps, for every fixture model.
//
// Numerics: activations are F32 and weights exactly dequantized, so quantized models are compared
// with the `-deq` references (llama.cpp run on exactly dequantized weights); F32/F16 models with
// their own references. Bound: max |Δlogit| <= 0.03 (tests/fixtures/README.md §5).
#include <cstdio>
#include <string>

#include <gtest/gtest.h>

#include "engine/engine.h"
#include "kernels/kernels.h"
#include "unit/engine/reference_run.h"

namespace pipeinfer::engine {
namespace {

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
  ReferenceRun run;
  ASSERT_NO_FATAL_FAILURE(RunPrompt(c.model, c.ref, c.kv_type, &run));
  std::printf("%s vs %s: prompt max|d| %.4f rms %.5f\n", c.model, c.ref, run.prompt_max,
              run.prompt_rms);
  EXPECT_LE(run.prompt_max, 0.03);
  const int64_t V = run.n_vocab;
  for (size_t r = 0; r < run.prompt.size(); ++r) {
    EXPECT_EQ(Top1(&run.prompt_logits[r * V], V), Top1(&run.prompt_ref[r * V], V)) << "row " << r;
  }

  int must = c.greedy_must_match;
  if (must < 0) {
    must = run.StepsWithMarginAbove(2 * run.prompt_max);
    std::printf("greedy ids required to match: %d\n", must);
  }
  ASSERT_NO_FATAL_FAILURE(RunGreedy(must, &run));
  std::printf("%s vs %s: greedy max|d| %.4f\n", c.model, c.ref, run.greedy_max);
  EXPECT_LE(run.greedy_max, 0.03);
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
                      Case{"tiny-q6_k", "tiny-q6_k-deq", kv::ElemType::kF16, -1},
                      Case{"tiny-q4_1-pure", "tiny-q4_1-pure-deq", kv::ElemType::kF16, -1},
                      Case{"tiny-q5_0-pure", "tiny-q5_0-pure-deq", kv::ElemType::kF16, -1},
                      Case{"tiny-q5_1-pure", "tiny-q5_1-pure-deq", kv::ElemType::kF16, -1},
                      Case{"tiny-q2_k-pure", "tiny-q2_k-pure-deq", kv::ElemType::kF16, -1},
                      Case{"tiny-q3_k-pure", "tiny-q3_k-pure-deq", kv::ElemType::kF16, -1},
                      Case{"tiny-q3_k_m", "tiny-q3_k_m-deq", kv::ElemType::kF16, -1},
                      Case{"tiny-q5_k-pure", "tiny-q5_k-pure-deq", kv::ElemType::kF16, -1}),
    [](const ::testing::TestParamInfo<Case>& info) { return FixtureTestName(info.param.ref); });

}  // namespace
}  // namespace pipeinfer::engine
