// Reads the llama.cpp-produced fixture models and checks every value against what
// tests/fixtures/README.md states (hyperparameters, tokenizer, tensor table, file sizes), and that
// tensor data is located correctly by decoding it against the F32 original.
#include <cmath>
#include <cstring>
#include <map>

#include <gtest/gtest.h>

#include "gguf/llama.h"
#include "gguf/reader.h"
#include "testing/fixtures.h"

namespace pipeinfer::gguf {
namespace {

using pipeinfer::testing::FixturePath;
using pipeinfer::testing::HalfToFloat;

std::unique_ptr<GgufFile> OpenOrDie(const std::string& rel) {
  auto f = GgufFile::Open(FixturePath(rel));
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? std::move(*f) : nullptr;
}

struct Variant {
  const char* file;
  uint64_t size;
  int64_t file_type;
  TensorType base;  // type of token_embd and of 2-D tensors not listed in `overrides`
  std::map<std::string, TensorType> overrides;
  bool quantized_by_llama;  // written by llama.cpp's quantize (has quantization_version)
};

const std::vector<Variant>& Variants() {
  static const std::vector<Variant> v = {
      {"models/tiny-f32.gguf", 5262080, 0, TensorType::kF32, {}, false},
      {"models/tiny-f16.gguf", 2637568, 1, TensorType::kF16, {}, false},
      {"models/tiny-q8_0.gguf", 1407392, 7, TensorType::kQ8_0, {}, true},
      {"models/tiny-q4_0.gguf",
       768352,
       2,
       TensorType::kQ4_0,
       {{"output.weight", TensorType::kQ6_K}},
       true},
      {"models/tiny-q4_0-pure.gguf", 751264, 2, TensorType::kQ4_0, {}, true},
      {"models/tiny-q4_k_m.gguf",
       810592,
       15,
       TensorType::kQ4_K,
       {{"blk.1.attn_v.weight", TensorType::kQ6_K},
        {"blk.1.ffn_down.weight", TensorType::kQ6_K},
        {"output.weight", TensorType::kQ6_K}},
       true},
      {"models/tiny-q6_k.gguf", 1089568, 18, TensorType::kQ6_K, {}, true},
  };
  return v;
}

TEST(GgufReader, TinyModelsMatchFixtureReadme) {
  for (const auto& var : Variants()) {
    SCOPED_TRACE(var.file);
    auto f = OpenOrDie(var.file);
    ASSERT_NE(f, nullptr);
    EXPECT_EQ(f->file_size(), var.size);
    EXPECT_EQ(f->version(), 3u);
    EXPECT_EQ(f->alignment(), 32u);
    EXPECT_EQ(f->Find("general.alignment"), nullptr);
    EXPECT_EQ(*f->GetString("general.name"), "fixture-tiny");
    EXPECT_EQ(*f->GetInt("general.file_type"), var.file_type);
    if (var.quantized_by_llama) {
      EXPECT_EQ(*f->GetUint("general.quantization_version"), 2u);
    }

    auto hp = LlamaHParams::FromGguf(*f);
    ASSERT_TRUE(hp.ok()) << hp.status();
    EXPECT_EQ(hp->architecture, "llama");
    EXPECT_EQ(hp->n_vocab, 259u);
    EXPECT_EQ(hp->n_embd, 256u);
    EXPECT_EQ(hp->n_layer, 2u);
    EXPECT_EQ(hp->n_head, 4u);
    EXPECT_EQ(hp->n_head_kv, 2u);
    EXPECT_EQ(hp->head_dim(), 64u);
    EXPECT_EQ(hp->n_rot, 64u);
    EXPECT_EQ(hp->n_ff, 512u);
    EXPECT_EQ(hp->n_ctx_train, 512u);
    EXPECT_FLOAT_EQ(hp->rope_freq_base, 10000.0f);
    EXPECT_FLOAT_EQ(hp->rope_freq_scale, 1.0f);
    EXPECT_FLOAT_EQ(hp->rms_norm_eps, 1e-5f);
    EXPECT_EQ(hp->file_type, var.file_type);

    // Tensor table: 1 embedding + 9 per layer + output norm + output.
    ASSERT_EQ(f->tensors().size(), 2u + 9u * 2u + 1u);
    const std::map<std::string, std::vector<uint64_t>> shapes = {
        {"token_embd.weight", {256, 259}},   {"output_norm.weight", {256}},
        {"output.weight", {256, 259}},       {"blk.0.attn_norm.weight", {256}},
        {"blk.0.attn_q.weight", {256, 256}}, {"blk.1.attn_k.weight", {256, 128}},
        {"blk.1.attn_v.weight", {256, 128}}, {"blk.0.attn_output.weight", {256, 256}},
        {"blk.1.ffn_norm.weight", {256}},    {"blk.0.ffn_gate.weight", {256, 512}},
        {"blk.1.ffn_up.weight", {256, 512}}, {"blk.1.ffn_down.weight", {512, 256}},
    };
    for (const auto& [name, shape] : shapes) {
      auto t = f->GetTensor(name);
      ASSERT_TRUE(t.ok()) << t.status();
      EXPECT_EQ((*t)->shape, shape) << name;
    }
    for (const auto& t : f->tensors()) {
      SCOPED_TRACE(t.name);
      TensorType want = var.base;
      if (t.shape.size() == 1) want = TensorType::kF32;  // norms stay F32
      if (auto it = var.overrides.find(t.name); it != var.overrides.end()) want = it->second;
      EXPECT_EQ(t.type, want) << TypeInfo(t.type).name;
      const auto& info = TypeInfo(t.type);
      EXPECT_EQ(t.n_bytes, t.n_elements / info.block_size * info.type_size);
      EXPECT_EQ(t.file_offset % 32, 0u);
      EXPECT_EQ(t.file_offset, f->data_offset() + t.offset);
      EXPECT_LE(t.file_offset + t.n_bytes, f->file_size());
    }
    // The full model selects as one stage; the output head is separate (not tied).
    auto st = SelectStageTensors(*f, *hp, {0, 2, true, true});
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_NE(st->output, st->token_embd);
    EXPECT_EQ(st->all().size(), f->tensors().size());
  }
}

TEST(GgufReader, ByteVocabularyMatchesReadme) {
  auto f = OpenOrDie("models/tiny-f32.gguf");
  ASSERT_NE(f, nullptr);
  auto tok = TokenizerMetadata::FromGguf(*f);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(tok->model, "llama");
  ASSERT_EQ(tok->tokens.size(), 259u);
  ASSERT_EQ(tok->scores.size(), 259u);
  ASSERT_EQ(tok->token_types.size(), 259u);
  EXPECT_EQ(tok->tokens[0], "<unk>");
  EXPECT_EQ(tok->tokens[1], "<s>");
  EXPECT_EQ(tok->tokens[2], "</s>");
  EXPECT_EQ(tok->token_types[0], TokenType::kUnknown);
  EXPECT_EQ(tok->token_types[1], TokenType::kControl);
  EXPECT_EQ(tok->token_types[2], TokenType::kControl);
  for (int b = 0; b < 256; ++b) {
    char want[8];
    std::snprintf(want, sizeof(want), "<0x%02X>", b);
    EXPECT_EQ(tok->tokens[b + 3], want);
    EXPECT_EQ(tok->token_types[b + 3], TokenType::kByte);
  }
  for (float s : tok->scores) EXPECT_EQ(s, 0.0f);
  EXPECT_EQ(tok->bos_id, 1);
  EXPECT_EQ(tok->eos_id, 2);
  EXPECT_EQ(tok->unk_id, 0);
  EXPECT_TRUE(tok->add_bos);
}

TEST(GgufReader, Llama2VocabOnlyFile) {
  auto f = OpenOrDie("tokenizer/ggml-vocab-llama.gguf");
  ASSERT_NE(f, nullptr);
  EXPECT_TRUE(f->tensors().empty());
  auto tok = TokenizerMetadata::FromGguf(*f);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(tok->model, "llama");
  EXPECT_EQ(tok->tokens.size(), 32000u);
  EXPECT_EQ(tok->scores.size(), 32000u);
  EXPECT_EQ(tok->bos_id, 1);
  EXPECT_EQ(tok->eos_id, 2);
  EXPECT_EQ(tok->unk_id, 0);
  // Spot checks from the tokenizer vectors: "▁Hello" is 15043, "\r" is 30004, byte <0x0A> is 13.
  EXPECT_EQ(tok->tokens[15043], "\xE2\x96\x81Hello");
  EXPECT_EQ(tok->tokens[30004], "\r");
  EXPECT_EQ(tok->tokens[13], "<0x0A>");
  EXPECT_EQ(tok->tokens[29871], "\xE2\x96\x81");
  // A vocab-only file is not a model: selecting weights fails with a clear message.
  auto hp = LlamaHParams::FromGguf(*f);
  ASSERT_TRUE(hp.ok()) << hp.status();
  EXPECT_EQ(hp->n_vocab, 32000u);
  auto st = SelectStageTensors(*f, *hp, {0, 1, true, false});
  EXPECT_EQ(st.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(st.status().message().find("tensor 'token_embd.weight' not found"), std::string::npos)
      << st.status();
}

// F16 and Q8_0 tensor data decoded at the reader's offsets must reproduce the F32 model: proves the
// data offsets and sizes are right, independently of any engine code.
TEST(GgufReader, TensorDataAgreesAcrossVariants) {
  auto f32 = OpenOrDie("models/tiny-f32.gguf");
  auto f16 = OpenOrDie("models/tiny-f16.gguf");
  auto q8 = OpenOrDie("models/tiny-q8_0.gguf");
  ASSERT_TRUE(f32 && f16 && q8);
  for (const auto& t : f32->tensors()) {
    SCOPED_TRACE(t.name);
    const float* ref = reinterpret_cast<const float*>(t.data);
    const TensorInfo* h = f16->FindTensor(t.name);
    const TensorInfo* q = q8->FindTensor(t.name);
    ASSERT_TRUE(h && q);
    ASSERT_EQ(h->n_elements, t.n_elements);
    if (h->type == TensorType::kF16) {
      const uint16_t* hv = reinterpret_cast<const uint16_t*>(h->data);
      for (uint64_t i = 0; i < t.n_elements; ++i) {
        ASSERT_NEAR(HalfToFloat(hv[i]), ref[i], std::abs(ref[i]) * 1e-3 + 1e-7) << i;
      }
    }
    if (q->type == TensorType::kQ8_0) {
      for (uint64_t b = 0; b < t.n_elements / 32; ++b) {
        const uint8_t* blk = q->data + b * 34;
        uint16_t dh;
        std::memcpy(&dh, blk, 2);
        const float d = HalfToFloat(dh);
        for (int j = 0; j < 32; ++j) {
          const float x = d * static_cast<int8_t>(blk[2 + j]);
          // Rounding to the grid (d/2) plus the F16 rounding of the scale (127 * d * 2^-11).
          ASSERT_NEAR(x, ref[b * 32 + j], d * 0.57f + 1e-6f) << b << ":" << j;
        }
      }
    }
  }
}

TEST(GgufReader, TypedGettersReportWrongTypesAndMissingKeys) {
  auto f = OpenOrDie("models/tiny-f32.gguf");
  ASSERT_NE(f, nullptr);
  auto missing = f->GetUint("llama.no_such_key");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("llama.no_such_key"), std::string::npos);
  auto wrong = f->GetUint("general.name");
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(wrong.status().message().find("string"), std::string::npos);
  EXPECT_FALSE(f->GetString("llama.block_count").ok());
  EXPECT_FALSE(f->GetFloatArray("tokenizer.ggml.tokens").ok());
  EXPECT_EQ(*f->GetUintOr("llama.no_such_key", 7), 7u);
  auto t = f->GetTensor("blk.9.attn_q.weight");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
}

TEST(GgufReader, MissingFileIsNotFound) {
  auto f = GgufFile::Open("/nonexistent/model.gguf");
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(f.status().message().find("/nonexistent/model.gguf"), std::string::npos);
}

}  // namespace
}  // namespace pipeinfer::gguf
