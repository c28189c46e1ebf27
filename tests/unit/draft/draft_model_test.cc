// The draft service's model wrapper: a session's drafter feeds only what changed and rolls its KV
// back to the longest common prefix, and every answer equals a fresh forward pass over the whole
// sequence; a draft with another vocabulary is refused; draft noise is deterministic; the emulated
// draft cost pads every pass.
#include "draft_server/draft_model.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>
#include <vector>

#include "testing/fixtures.h"

namespace pipeinfer::draft_server {
namespace {

const std::string kModels = PIPEINFER_MODELS_DIR;

std::unique_ptr<DraftModel> LoadDemo(double noise = 0.0, int64_t emulate_us_per_token = 0) {
  DraftModelOptions o;
  o.path = kModels + "/demo-draft-q8_0.gguf";
  o.target_path = kModels + "/demo-target-q8_0.gguf";
  o.noise = noise;
  o.emulate_us_per_token = emulate_us_per_token;
  auto m = DraftModel::Load(o);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? std::move(*m) : nullptr;
}

// Logits of a brand-new session fed the whole sequence in one go.
std::vector<float> Fresh(DraftModel& m, uint64_t session, const std::vector<int32_t>& seq) {
  SessionDrafter d(&m, session);
  auto l = d.NextLogits(seq);
  EXPECT_TRUE(l.ok()) << l.status();
  return l.ok() ? std::vector<float>(l->begin(), l->end()) : std::vector<float>{};
}

TEST(DraftModel, IncrementalAndRolledBackLogitsEqualAFreshPass) {
  auto m = LoadDemo();
  ASSERT_TRUE(m);
  SessionDrafter d(m.get(), 1);
  const std::vector<int32_t> prompt = {1, 450, 12, 77, 901, 33, 5, 260};
  std::vector<std::vector<int32_t>> steps;
  std::vector<int32_t> s = prompt;
  steps.push_back(s);
  for (int32_t t : {11, 12, 13}) {  // extend one token at a time
    s.push_back(t);
    steps.push_back(s);
  }
  s.resize(prompt.size() + 1);  // a rejection: roll back and take another branch
  s.push_back(400);
  s.push_back(401);
  steps.push_back(s);
  steps.push_back(s);  // the same sequence again (cached)
  steps.push_back(std::vector<int32_t>(s.begin(), s.end() - 1));  // a strict prefix
  steps.push_back({1, 2, 3});                                     // nothing in common but BOS
  uint64_t session = 100;
  for (size_t i = 0; i < steps.size(); ++i) {
    SCOPED_TRACE(i);
    auto got = d.NextLogits(steps[i]);
    ASSERT_TRUE(got.ok()) << got.status();
    const std::vector<float> want = Fresh(*m, session++, steps[i]);
    ASSERT_EQ(got->size(), want.size());
    ASSERT_EQ(want.size(), m->n_vocab());
    float max_diff = 0;
    for (size_t k = 0; k < want.size(); ++k)
      max_diff = std::max(max_diff, std::abs((*got)[k] - want[k]));
    EXPECT_LT(max_diff, 1e-3f);
    EXPECT_EQ(std::max_element(got->begin(), got->end()) - got->begin(),
              std::max_element(want.begin(), want.end()) - want.begin());
  }
  // Only what changed was fed: the prompt (8), three single tokens (3), the two tokens after the
  // rollback (2), nothing for the repeat, the strict prefix's last token again to get its logits
  // (1), and the unrelated sequence after the shared BOS (2): 16 in all.
  EXPECT_EQ(d.tokens_fed(), 16u);
}

// With committed tokens adopted into canonical (multibuffering), speculative cuts above them and a
// divergence below them still give a fresh pass's logits.
TEST(DraftModel, CommittedPrefixIsAdoptedAndCutsStayExact) {
  auto m = LoadDemo();
  ASSERT_TRUE(m);
  SessionDrafter d(m.get(), 1);
  const std::vector<int32_t> prompt = {1, 450, 12, 77, 901, 33};
  std::vector<int32_t> spec = prompt;
  for (int32_t t : {5, 6, 7, 8}) spec.push_back(t);
  ASSERT_TRUE(d.NextLogits(spec).ok());
  // The prompt and the first two guesses are committed; the third guess is rejected.
  std::vector<int32_t> committed(spec.begin(), spec.begin() + 8);
  d.Committed(committed);
  EXPECT_EQ(d.canonical_length(), 8u);
  committed.push_back(99);  // the correction (not fed yet) is not adopted
  d.Committed(committed);
  EXPECT_EQ(d.canonical_length(), 8u);
  uint64_t session = 100;
  for (const std::vector<int32_t>& seq :
       {committed,
        [&] {
          auto s = committed;
          s.push_back(3);
          return s;
        }(),
        std::vector<int32_t>(prompt.begin(), prompt.begin() + 4)}) {  // below the committed part
    auto got = d.NextLogits(seq);
    ASSERT_TRUE(got.ok()) << got.status();
    const std::vector<float> want = Fresh(*m, session++, seq);
    ASSERT_EQ(got->size(), want.size());
    float max_diff = 0;
    for (size_t k = 0; k < want.size(); ++k) {
      max_diff = std::max(max_diff, std::abs((*got)[k] - want[k]));
    }
    EXPECT_LT(max_diff, 1e-3f) << seq.size();
  }
  EXPECT_EQ(d.canonical_length(), 3u);  // cut back to what still matched
}

TEST(DraftModel, AnotherVocabularyIsRefused) {
  DraftModelOptions o;
  o.path = testing::FixturePath("models/tiny-f32.gguf");
  o.target_path = kModels + "/demo-target-q8_0.gguf";
  auto m = DraftModel::Load(o);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(std::string(m.status().message()).find("vocabular"), std::string::npos) << m.status();
}

TEST(DraftModel, NoiseIsDeterministicAndMovesTheTopToken) {
  auto clean = LoadDemo(0.0);
  auto noisy = LoadDemo(1.0);
  ASSERT_TRUE(clean && noisy);
  const std::vector<int32_t> seq = {1, 450, 12, 77};
  const std::vector<float> c = Fresh(*clean, 1, seq);
  const std::vector<float> n1 = Fresh(*noisy, 1, seq);
  const std::vector<float> n2 = Fresh(*noisy, 2, seq);
  EXPECT_EQ(n1, n2);
  EXPECT_NE(std::max_element(c.begin(), c.end()) - c.begin(),
            std::max_element(n1.begin(), n1.end()) - n1.begin());
}

// --emulate-draft-us: a pass of n tokens lasts at least n x U from its start (the lower bound is
// strict; the upper bounds are loose, the machine is shared).
TEST(DraftModel, EmulatedDraftCostPadsEachPassPerToken) {
  constexpr int64_t kUs = 4000;
  auto slow = LoadDemo(0.0, kUs);
  auto fast = LoadDemo(0.0, 0);
  ASSERT_TRUE(slow && fast);
  std::vector<double> pass_seconds;
  slow->SetPassObserver([&](size_t, double s) { pass_seconds.push_back(s); });
  std::vector<int32_t> seq = {1};
  for (int32_t i = 0; i < 23; ++i) seq.push_back(300 + 7 * i);
  using Clock = std::chrono::steady_clock;
  auto elapsed_us = [](Clock::time_point t0) {
    return std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count();
  };
  SessionDrafter d(slow.get(), 1);
  auto t0 = Clock::now();
  ASSERT_TRUE(d.NextLogits(seq).ok());  // one pass of 24 tokens
  EXPECT_GE(elapsed_us(t0), 24 * kUs);
  seq.push_back(42);
  t0 = Clock::now();
  ASSERT_TRUE(d.NextLogits(seq).ok());  // one pass of 1 token
  const int64_t one = elapsed_us(t0);
  EXPECT_GE(one, kUs);
  EXPECT_LT(one, 20 * kUs);  // per token, not per prompt
  ASSERT_EQ(pass_seconds.size(), 2u);
  EXPECT_GE(pass_seconds[0], 24 * kUs * 1e-6);  // the metrics see the padded pass
  EXPECT_GE(pass_seconds[1], kUs * 1e-6);

  // U = 0 pads nothing: the same 24-token pass takes far less than the padded one.
  SessionDrafter f(fast.get(), 1);
  seq.resize(24);
  t0 = Clock::now();
  ASSERT_TRUE(f.NextLogits(seq).ok());
  EXPECT_LT(elapsed_us(t0), 24 * kUs);
}

TEST(DraftModel, NegativeEmulatedDraftCostIsRefused) {
  DraftModelOptions o;
  o.path = kModels + "/demo-draft-q8_0.gguf";
  o.target_path = kModels + "/demo-target-q8_0.gguf";
  o.emulate_us_per_token = -1;
  EXPECT_FALSE(DraftModel::Load(o).ok());
}

}  // namespace
}  // namespace pipeinfer::draft_server
