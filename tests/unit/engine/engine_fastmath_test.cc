// The forward pass in QuantMath::kFast (activations quantized to Q8_0 / Q8_1 / Q8_K, integer dot
// products, as llama.cpp's CPU backend does) against llama.cpp's references of the QUANTIZED
// models (tests/fixtures/refs/tiny-<v>.p1.*, not the `-deq` ones). The shared T1 references were
// made with llama.cpp 9656026 (2023), the `-pure` and Q3_K_M ones (tests/fixtures/README.md,
// "Local additions") with llama.cpp 0.5.0 (2026); each is compared with the activation quantizer
// of its llama.cpp generation (kernels/act_quant.h).
//
// Bit-matching llama.cpp is not realistic (tests/fixtures/README.md §5: its rounding flips depend
// on its accumulation order, and it rounds more in F16), so the bounds are loose: on the prompt
// rows max |Δlogit| <= 0.5 and rms <= 0.1; the argmax agrees on every prompt row whose reference
// top-1/top-2 margin exceeds twice the measured max error; greedy ids agree for as long as the
// reference margin of each decision exceeds twice that error.
#include <cstdio>
#include <string>

#include <gtest/gtest.h>

#include "engine/engine.h"
#include "kernels/act_quant.h"
#include "kernels/kernels.h"
#include "unit/engine/reference_run.h"

namespace pipeinfer::engine {
namespace {

using kernels::ActQuantScheme;

struct Case {
  const char* name;  // models/<name>.gguf and refs/<name>.p1.*
  ActQuantScheme scheme;
};

class EngineFastMath : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    old_ = kernels::GetQuantMath();
    old_scheme_ = kernels::GetActQuantScheme();
    kernels::SetQuantMath(kernels::QuantMath::kFast);
    kernels::SetActQuantScheme(GetParam().scheme);
  }
  void TearDown() override {
    kernels::SetQuantMath(old_);
    kernels::SetActQuantScheme(old_scheme_);
  }

 private:
  kernels::QuantMath old_ = kernels::QuantMath::kFast;
  ActQuantScheme old_scheme_ = ActQuantScheme::kLlamaCpp2023;
};

TEST_P(EngineFastMath, MatchesQuantizedReference) {
  const std::string name = GetParam().name;
  ReferenceRun run;
  ASSERT_NO_FATAL_FAILURE(RunPrompt(name, name, kv::ElemType::kF16, &run));
  std::printf("%s (fast, %s) vs %s: prompt max|d| %.4f rms %.5f\n", name.c_str(),
              kernels::ActQuantSchemeName(GetParam().scheme), name.c_str(), run.prompt_max,
              run.prompt_rms);
  EXPECT_LE(run.prompt_max, 0.5);
  EXPECT_LE(run.prompt_rms, 0.1);
  const int64_t V = run.n_vocab;
  int argmax_checked = 0;
  for (size_t r = 0; r < run.prompt.size(); ++r) {
    const float* ref_row = &run.prompt_ref[r * V];
    if (Margin(ref_row, V) <= 2 * run.prompt_max) continue;
    ++argmax_checked;
    EXPECT_EQ(Top1(&run.prompt_logits[r * V], V), Top1(ref_row, V)) << "row " << r;
  }
  std::printf("argmax checked on %d of %zu prompt rows\n", argmax_checked, run.prompt.size());

  // Greedy: required to match while the reference's decision margin exceeds 2 * max_d.
  const int must = run.StepsWithMarginAbove(2 * run.prompt_max);
  ASSERT_NO_FATAL_FAILURE(RunGreedy(must, &run));
  std::printf("greedy: %d required, %d equal, max|d| over them %.4f\n", must, run.greedy_equal,
              run.greedy_max);
  EXPECT_LE(run.greedy_max, 0.5);
}

// Q3_K (and Q2_K) times Q8_K with the activation quantizer of the reference's llama.cpp: the
// integer sums are exact on both sides, so only float rounding and attention details remain and
// the prompt logits agree far more closely than the general bound. A wrong dot product (a lost
// high bit, a scale off by one, a sign flip of a -128 quant) or the other generation's quantizer
// (printed for comparison: independent rounding noise) is well outside it.
TEST(EngineFastMathQ3K, MatchesLlamaCppArithmetic) {
  struct Restore {
    kernels::QuantMath math = kernels::GetQuantMath();
    ActQuantScheme scheme = kernels::GetActQuantScheme();
    ~Restore() {
      kernels::SetQuantMath(math);
      kernels::SetActQuantScheme(scheme);
    }
  } restore;
  kernels::SetQuantMath(kernels::QuantMath::kFast);
  for (const char* name : {"tiny-q3_k-pure", "tiny-q2_k-pure"}) {
    for (ActQuantScheme scheme : {ActQuantScheme::kLlamaCpp2024, ActQuantScheme::kLlamaCpp2023}) {
      kernels::SetActQuantScheme(scheme);
      ReferenceRun run;
      ASSERT_NO_FATAL_FAILURE(RunPrompt(name, name, kv::ElemType::kF16, &run));
      std::printf("%s (fast, %s): prompt max|d| %.4f rms %.5f\n", name,
                  kernels::ActQuantSchemeName(scheme), run.prompt_max, run.prompt_rms);
      if (scheme == ActQuantScheme::kLlamaCpp2024) {
        EXPECT_LE(run.prompt_max, 0.15) << name;
        EXPECT_LE(run.prompt_rms, 0.015) << name;
      }
    }
  }
}

constexpr ActQuantScheme k2023 = ActQuantScheme::kLlamaCpp2023;
constexpr ActQuantScheme k2024 = ActQuantScheme::kLlamaCpp2024;

INSTANTIATE_TEST_SUITE_P(
    Fixtures, EngineFastMath,
    ::testing::Values(Case{"tiny-q8_0", k2023}, Case{"tiny-q4_0", k2023},
                      Case{"tiny-q4_0-pure", k2023}, Case{"tiny-q4_k_m", k2023},
                      Case{"tiny-q6_k", k2023}, Case{"tiny-q4_1-pure", k2024},
                      Case{"tiny-q5_0-pure", k2024}, Case{"tiny-q5_1-pure", k2024},
                      Case{"tiny-q2_k-pure", k2024}, Case{"tiny-q3_k-pure", k2024},
                      Case{"tiny-q3_k_m", k2024}, Case{"tiny-q5_k-pure", k2024}),
    [](const ::testing::TestParamInfo<Case>& info) { return FixtureTestName(info.param.name); });

}  // namespace
}  // namespace pipeinfer::engine
