// Running a fixture model against llama.cpp's reference logits (tests/fixtures/refs/<ref>.p1.*):
// the 64-token prompt in one batched forward, then greedy single-token steps for as long as the
// ids agree. The tests that include this decide the tolerances.
#pragma once

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "engine/engine.h"
#include "testing/fixtures.h"

namespace pipeinfer::engine {

inline int32_t Top1(const float* x, int64_t n) {
  return static_cast<int32_t>(std::max_element(x, x + n) - x);
}

// Top-1 minus top-2 logit.
inline float Margin(const float* x, int64_t n) {
  std::vector<float> r(x, x + n);
  std::partial_sort(r.begin(), r.begin() + 2, r.end(), std::greater<float>());
  return r[0] - r[1];
}

struct ReferenceRun {
  static constexpr int kGreedySteps = 32;
  int64_t n_vocab = 0;
  std::vector<int32_t> prompt, greedy_ids;
  std::vector<float> prompt_ref, greedy_ref;  // llama.cpp's logits
  std::unique_ptr<Engine> engine;
  std::vector<float> prompt_logits;  // ours, every prompt row
  double prompt_max = 0, prompt_rms = 0;
  int greedy_equal = 0;   // leading greedy ids that agree
  double greedy_max = 0;  // max |Δlogit| over the steps that agreed

  const float* ref_decision_row(
      int step) const {  // the reference row that chooses greedy_ids[step]
    return step == 0 ? &prompt_ref[(prompt.size() - 1) * n_vocab]
                     : &greedy_ref[(step - 1) * n_vocab];
  }
  // Leading greedy steps whose reference decision margin exceeds `threshold` (they must agree).
  int StepsWithMarginAbove(double threshold) const {
    int n = 0;
    while (n < kGreedySteps && Margin(ref_decision_row(n), n_vocab) > threshold) ++n;
    return n;
  }
};

// Loads models/<model>.gguf and refs/<ref>.p1.*, runs the prompt, fills the prompt error.
// `devices`: EngineOptions.devices ("cpu", "cuda:0", ...).
inline void RunPrompt(const std::string& model, const std::string& ref, kv::ElemType kv_type,
                      ReferenceRun* run, const std::string& devices = "cpu") {
  using pipeinfer::testing::FixturePath;
  auto m = StageModel::LoadFull(FixturePath("models/" + model + ".gguf"));
  ASSERT_TRUE(m.ok()) << m.status();
  EngineOptions opts;
  opts.threads = 2;
  opts.kv_type = kv_type;
  opts.kv_capacity_tokens = 512;
  opts.devices = devices;
  auto engine = Engine::Create(std::move(*m), opts);
  ASSERT_TRUE(engine.ok()) << engine.status();
  run->engine = std::move(*engine);
  const int64_t V = run->engine->model().hparams().n_vocab;
  ASSERT_EQ(V, 259);
  run->n_vocab = V;

  const std::string base = FixturePath("refs/" + ref + ".p1.");
  run->prompt = pipeinfer::testing::ReadIds(base + "prompt_ids.txt");
  run->prompt_ref = pipeinfer::testing::ReadF32(base + "prompt_logits.f32");
  run->greedy_ids = pipeinfer::testing::ReadIds(base + "greedy_ids.txt");
  run->greedy_ref = pipeinfer::testing::ReadF32(base + "greedy_logits.f32");
  ASSERT_EQ(run->prompt.size(), 64u);
  ASSERT_EQ(run->prompt_ref.size(), run->prompt.size() * V);
  ASSERT_EQ(run->greedy_ids.size(), size_t{ReferenceRun::kGreedySteps});
  ASSERT_EQ(run->greedy_ref.size(), ReferenceRun::kGreedySteps * V);

  Engine& e = *run->engine;
  ASSERT_TRUE(e.kv().OpenSession(1).ok());
  std::vector<int32_t> rows(run->prompt.size());
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<int32_t>(i);
  ForwardInput in;
  in.session = 1;
  in.tokens = run->prompt;
  in.output_rows = rows;
  auto out = e.Forward(in);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->logits.size(), run->prompt_ref.size());
  run->prompt_logits = out->logits;
  double sum_sq = 0;
  for (size_t i = 0; i < run->prompt_ref.size(); ++i) {
    const double d = std::abs(run->prompt_logits[i] - run->prompt_ref[i]);
    run->prompt_max = std::max(run->prompt_max, d);
    sum_sq += d * d;
  }
  run->prompt_rms = std::sqrt(sum_sq / run->prompt_ref.size());
}

// Greedy decoding after RunPrompt: g0 from the last prompt row, then one token per step, for as
// long as the ids agree with the reference; the first `must_match` ids have to.
inline void RunGreedy(int must_match, ReferenceRun* run) {
  const int64_t V = run->n_vocab;
  Engine& e = *run->engine;
  int32_t next = Top1(&run->prompt_logits[(run->prompt.size() - 1) * V], V);
  for (int s = 0; s < ReferenceRun::kGreedySteps; ++s) {
    if (s < must_match) {
      ASSERT_EQ(next, run->greedy_ids[s]) << "greedy step " << s;
    }
    if (next != run->greedy_ids[s]) break;
    ++run->greedy_equal;
    const int32_t tok = next;
    const int32_t row0 = 0;
    ForwardInput step;
    step.session = 1;
    step.tokens = std::span<const int32_t>(&tok, 1);
    step.output_rows = std::span<const int32_t>(&row0, 1);
    auto o = e.Forward(step);
    ASSERT_TRUE(o.ok()) << o.status();
    EXPECT_EQ(o->positions[0], static_cast<int32_t>(run->prompt.size()) + s);
    for (int64_t j = 0; j < V; ++j) {
      run->greedy_max =
          std::max<double>(run->greedy_max, std::abs(o->logits[j] - run->greedy_ref[s * V + j]));
    }
    next = Top1(o->logits.data(), V);
  }
}

// A gtest parameter name from a fixture name ("tiny-q4_0" -> "tiny_q4_0").
inline std::string FixtureTestName(std::string n) {
  for (char& ch : n) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  }
  return n;
}

}  // namespace pipeinfer::engine
