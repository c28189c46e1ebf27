// The bundled demo pair (models/): our engine against the training code's own forward pass
// (PyTorch float32 on the shipped F16 weights, dumped at export time into tests/fixtures/demo), and
// our tokenizer against SentencePiece's `spm_encode` on edge-case sentences.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>

#include <gtest/gtest.h>

#include "engine/engine.h"
#include "testing/fixtures.h"
#include "tokenizer/tokenizer.h"

namespace pipeinfer {
namespace {

using testing::FixturePath;
using testing::ParseIds;
using testing::ReadF32;
using testing::ReadIds;
using testing::ReadText;

std::string ModelPath(const std::string& name) {
  return std::string(PIPEINFER_MODELS_DIR) + "/" + name;
}

class DemoModel : public ::testing::TestWithParam<const char*> {};

TEST_P(DemoModel, EngineMatchesTrainingCode) {
  const std::string name = GetParam();
  auto model = engine::StageModel::LoadFull(ModelPath(name + "-f16.gguf"));
  ASSERT_TRUE(model.ok()) << model.status();
  auto tok = tokenizer::Tokenizer::FromGguf((*model)->file());
  ASSERT_TRUE(tok.ok()) << tok.status();
  engine::EngineOptions o;
  o.threads = 2;
  o.kv_type = kv::ElemType::kF32;  // the reference attends in exact F32
  auto e = engine::Engine::Create(std::move(*model), o);
  ASSERT_TRUE(e.ok()) << e.status();
  const int64_t V = (*e)->model().hparams().n_vocab;

  const std::string base = FixturePath("demo/" + name + ".");
  const auto prompt = ReadIds(base + "prompt_ids.txt");
  // The tokenizer produces the same prompt ids as the training code.
  EXPECT_EQ(tok->get()->Encode(ReadText(FixturePath("demo/prompt.txt")), true, false), prompt);
  const auto ref = ReadF32(base + "prompt_logits.f32");
  const auto greedy = ReadIds(base + "greedy_ids.txt");
  const auto greedy_ref = ReadF32(base + "greedy_logits.f32");
  ASSERT_EQ(ref.size(), prompt.size() * V);
  ASSERT_EQ(greedy_ref.size(), greedy.size() * V);

  ASSERT_TRUE((*e)->kv().OpenSession(1).ok());
  std::vector<int32_t> rows(prompt.size());
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<int32_t>(i);
  engine::ForwardInput in;
  in.session = 1;
  in.tokens = prompt;
  in.output_rows = rows;
  auto out = (*e)->Forward(in);
  ASSERT_TRUE(out.ok()) << out.status();
  double max_d = 0;
  for (size_t i = 0; i < ref.size(); ++i)
    max_d = std::max<double>(max_d, std::abs(out->logits[i] - ref[i]));
  std::printf("%s: prompt max|d| %.5f\n", name.c_str(), max_d);
  EXPECT_LE(max_d, 0.03);

  auto margin = [&](const float* row) {
    std::vector<float> r(row, row + V);
    std::partial_sort(r.begin(), r.begin() + 2, r.end(), std::greater<float>());
    return r[0] - r[1];
  };
  int32_t next = static_cast<int32_t>(
      std::max_element(&out->logits[(prompt.size() - 1) * V], &out->logits[prompt.size() * V]) -
      &out->logits[(prompt.size() - 1) * V]);
  double greedy_max = 0;
  for (size_t s = 0; s < greedy.size(); ++s) {
    const float* decided_by = s == 0 ? &ref[(prompt.size() - 1) * V] : &greedy_ref[(s - 1) * V];
    if (margin(decided_by) <= 2 * std::max(max_d, 1e-3)) break;  // may legitimately flip
    ASSERT_EQ(next, greedy[s]) << "step " << s;
    const int32_t row = 0;
    engine::ForwardInput step;
    step.session = 1;
    step.tokens = std::span<const int32_t>(&next, 1);
    step.output_rows = std::span<const int32_t>(&row, 1);
    auto o = (*e)->Forward(step);
    ASSERT_TRUE(o.ok());
    for (int64_t j = 0; j < V; ++j) {
      greedy_max = std::max<double>(greedy_max, std::abs(o->logits[j] - greedy_ref[s * V + j]));
    }
    next = static_cast<int32_t>(std::max_element(o->logits.begin(), o->logits.end()) -
                                o->logits.begin());
  }
  EXPECT_LE(greedy_max, 0.03);
}

INSTANTIATE_TEST_SUITE_P(Pair, DemoModel, ::testing::Values("demo-target", "demo-draft"));

TEST(DemoModel, TokenizerMatchesSpmEncode) {
  auto f = gguf::GgufFile::Open(ModelPath("demo-target-f16.gguf"));
  ASSERT_TRUE(f.ok());
  auto tok = tokenizer::Tokenizer::FromGguf(**f);
  ASSERT_TRUE(tok.ok()) << tok.status();
  std::istringstream sentences(ReadText(FixturePath("demo/spm_sentences.txt")));
  std::istringstream ids(ReadText(FixturePath("demo/spm_ids.txt")));
  std::string s, line;
  int n = 0;
  while (std::getline(sentences, s) && std::getline(ids, line)) {
    EXPECT_EQ((*tok)->Encode(s, /*add_bos=*/false, /*parse_special=*/false), ParseIds(line))
        << "sentence " << n << ": " << s;
    ++n;
  }
  EXPECT_EQ(n, 27);
}

TEST(DemoModel, DraftSharesTheTargetVocabulary) {
  auto t = gguf::GgufFile::Open(ModelPath("demo-target-q8_0.gguf"));
  auto d = gguf::GgufFile::Open(ModelPath("demo-draft-q8_0.gguf"));
  ASSERT_TRUE(t.ok() && d.ok());
  auto tt = gguf::TokenizerMetadata::FromGguf(**t);
  auto dt = gguf::TokenizerMetadata::FromGguf(**d);
  ASSERT_TRUE(tt.ok() && dt.ok());
  EXPECT_EQ(tt->tokens, dt->tokens);
  EXPECT_EQ(tt->bos_id, dt->bos_id);
  EXPECT_EQ(tt->eos_id, dt->eos_id);
  EXPECT_TRUE(tt->chat_template.has_value());
}

}  // namespace
}  // namespace pipeinfer
