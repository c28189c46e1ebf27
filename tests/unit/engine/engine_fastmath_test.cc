// The forward pass in QuantMath::kFast (activations quantized to Q8_0 / Q8_K, integer dot
// products, as llama.cpp's CPU backend does) against llama.cpp's references of the QUANTIZED
// models (tests/fixtures/refs/tiny-<v>.p1.*, not the `-deq` ones).
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
#include "kernels/kernels.h"
#include "unit/engine/reference_run.h"

namespace pipeinfer::engine {
namespace {

class EngineFastMath : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    old_ = kernels::GetQuantMath();
    kernels::SetQuantMath(kernels::QuantMath::kFast);
  }
  void TearDown() override { kernels::SetQuantMath(old_); }

 private:
  kernels::QuantMath old_ = kernels::QuantMath::kFast;
};

TEST_P(EngineFastMath, MatchesQuantizedReference) {
  const std::string name = GetParam();
  ReferenceRun run;
  ASSERT_NO_FATAL_FAILURE(RunPrompt(name, name, kv::ElemType::kF16, &run));
  std::printf("%s (fast) vs %s: prompt max|d| %.4f rms %.5f\n", name.c_str(), name.c_str(),
              run.prompt_max, run.prompt_rms);
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

INSTANTIATE_TEST_SUITE_P(Fixtures, EngineFastMath,
                         ::testing::Values("tiny-q8_0", "tiny-q4_0", "tiny-q4_0-pure",
                                           "tiny-q4_k_m", "tiny-q6_k"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return FixtureTestName(info.param);
                         });

}  // namespace
}  // namespace pipeinfer::engine
