// Architectures llama (Llama-3 conventions), qwen2 and qwen3 in the loader: hyperparameters of the
// shared fixtures (tests/fixtures/README.md §9.2), the architecture table's validation (missing,
// unexpected and mis-shaped tensors are errors naming the tensor), tied output embeddings, and
// the rope-scaling keys.
#include <unistd.h>

#include <string>

#include <gtest/gtest.h>

#include "gguf/architectures.h"
#include "gguf/llama.h"
#include "gguf/reader.h"
#include "testing/fixtures.h"
#include "unit/gguf/arch_model.h"

namespace pipeinfer::gguf {
namespace {

using pipeinfer::testing::ArchModelSpec;
using pipeinfer::testing::ArchModelTweaks;
using pipeinfer::testing::FixturePath;
using pipeinfer::testing::MakeArchModel;
using pipeinfer::testing::WriteArchModel;

std::unique_ptr<GgufFile> OpenOrDie(const std::string& path) {
  auto f = GgufFile::Open(path);
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? std::move(*f) : nullptr;
}

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "/gguf_arch_test." + std::to_string(getpid()) + "." + name +
         ".gguf";
}

// Writes a (possibly damaged) model and opens it.
std::unique_ptr<GgufFile> Written(const ArchModelSpec& spec, const std::string& name,
                                  const ArchModelTweaks& tweaks = {}) {
  const std::string path = TempPath(name);
  const absl::Status s = WriteArchModel(MakeArchModel(spec), path, tweaks);
  EXPECT_TRUE(s.ok()) << s;
  auto f = OpenOrDie(path);
  unlink(path.c_str());  // the mapping stays valid
  return f;
}

TEST(GgufArch, TableHasTheThreeArchitectures) {
  ASSERT_NE(FindArchitecture("llama"), nullptr);
  EXPECT_EQ(FindArchitecture("llama")->rope, RopeStyle::kNormal);
  ASSERT_NE(FindArchitecture("qwen2"), nullptr);
  EXPECT_EQ(FindArchitecture("qwen2")->rope, RopeStyle::kNeox);
  ASSERT_NE(FindArchitecture("qwen3"), nullptr);
  EXPECT_EQ(FindArchitecture("qwen3")->rope, RopeStyle::kNeox);
  EXPECT_EQ(FindArchitecture("gemma"), nullptr);
  EXPECT_EQ(SupportedArchitectureNames(), "llama, qwen2, qwen3");
}

TEST(GgufArch, Llama3TinyHyperparameters) {
  auto f = OpenOrDie(FixturePath("models/llama3-tiny-f16.gguf"));
  ASSERT_NE(f, nullptr);
  auto hp = LlamaHParams::FromGguf(*f);
  ASSERT_TRUE(hp.ok()) << hp.status();
  EXPECT_EQ(hp->arch, Arch::kLlama);
  EXPECT_EQ(hp->rope_style, RopeStyle::kNormal);
  EXPECT_EQ(hp->n_vocab, 128256u);
  EXPECT_EQ(hp->n_embd, 64u);
  EXPECT_EQ(hp->n_layer, 2u);
  EXPECT_EQ(hp->n_head, 4u);
  EXPECT_EQ(hp->n_head_kv, 1u);
  EXPECT_EQ(hp->head_dim(), 16u);
  EXPECT_EQ(hp->n_rot, 16u);
  EXPECT_EQ(hp->n_embd_q(), 64u);
  EXPECT_EQ(hp->n_embd_kv(), 16u);
  EXPECT_EQ(hp->n_ff, 192u);
  EXPECT_EQ(hp->n_ctx_train, 512u);
  EXPECT_FLOAT_EQ(hp->rope_freq_base, 500000.0f);
  EXPECT_FLOAT_EQ(hp->rms_norm_eps, 1e-5f);
  EXPECT_EQ(hp->rope_scaling, RopeScaling::kNone);
  EXPECT_EQ(hp->file_type, 1);
}

TEST(GgufArch, Qwen2TinyHyperparametersAndBiases) {
  auto f = OpenOrDie(FixturePath("models/qwen2-tiny-f16.gguf"));
  ASSERT_NE(f, nullptr);
  auto hp = LlamaHParams::FromGguf(*f);
  ASSERT_TRUE(hp.ok()) << hp.status();
  EXPECT_EQ(hp->arch, Arch::kQwen2);
  EXPECT_EQ(hp->rope_style, RopeStyle::kNeox);
  EXPECT_EQ(hp->n_vocab, 151936u);
  EXPECT_EQ(hp->n_head_kv, 2u);
  EXPECT_EQ(hp->head_dim(), 16u);  // no rope.dimension_count: n_embd / n_head
  EXPECT_EQ(hp->n_rot, 16u);
  EXPECT_FLOAT_EQ(hp->rope_freq_base, 1000000.0f);
  EXPECT_FLOAT_EQ(hp->rms_norm_eps, 1e-6f);
  auto st = SelectStageTensors(*f, *hp, {0, 2, true, true});
  ASSERT_TRUE(st.ok()) << st.status();
  ASSERT_EQ(st->layers.size(), 2u);
  ASSERT_NE(st->layers[1].bq, nullptr);
  EXPECT_EQ(st->layers[1].bq->name, "blk.1.attn_q.bias");
  EXPECT_EQ(st->layers[1].bk->shape, (std::vector<uint64_t>{32}));
  EXPECT_EQ(st->layers[1].bv->type, TensorType::kF32);
  EXPECT_EQ(st->layers[0].q_norm, nullptr);
  // Tied output: every tensor of the file, token_embd once.
  EXPECT_EQ(st->output, st->token_embd);
  EXPECT_EQ(st->all().size(), f->tensors().size());
}

TEST(GgufArch, TiedOutputOnAHeadOnlyStage) {
  auto f = OpenOrDie(FixturePath("models/llama3-tiny-f16.gguf"));
  ASSERT_NE(f, nullptr);
  auto hp = LlamaHParams::FromGguf(*f);
  ASSERT_TRUE(hp.ok()) << hp.status();
  auto last = SelectStageTensors(*f, *hp, {1, 2, false, true});
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(last->token_embd, nullptr);  // not embedding tokens...
  ASSERT_NE(last->output, nullptr);      // ...but the head is the embedding matrix
  EXPECT_EQ(last->output->name, "token_embd.weight");
  EXPECT_EQ(last->output->shape, (std::vector<uint64_t>{64, 128256}));
  bool counted = false;
  for (const TensorInfo* t : last->all()) counted |= t->name == "token_embd.weight";
  EXPECT_TRUE(counted) << "the head stage must read (and prefault) token_embd";
  auto first = SelectStageTensors(*f, *hp, {0, 1, true, false});
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->output, nullptr);
}

TEST(GgufArch, Qwen3KeyLengthAndNorms) {
  ArchModelSpec s;
  s.arch = "qwen3";
  s.qk_norm = true;
  s.head_dim = 32;  // n_head * head_dim = 128 != n_embd = 64, as in real Qwen3 models
  auto f = Written(s, "qwen3");
  ASSERT_NE(f, nullptr);
  auto hp = LlamaHParams::FromGguf(*f);
  ASSERT_TRUE(hp.ok()) << hp.status();
  EXPECT_EQ(hp->arch, Arch::kQwen3);
  EXPECT_EQ(hp->rope_style, RopeStyle::kNeox);
  EXPECT_EQ(hp->head_dim(), 32u);
  EXPECT_EQ(hp->n_embd_q(), 128u);
  EXPECT_EQ(hp->n_embd_kv(), 64u);
  auto st = SelectStageTensors(*f, *hp, {1, 2, false, true});
  ASSERT_TRUE(st.ok()) << st.status();
  ASSERT_NE(st->layers[0].q_norm, nullptr);
  EXPECT_EQ(st->layers[0].k_norm->name, "blk.1.attn_k_norm.weight");
  EXPECT_EQ(st->layers[0].wo->shape, (std::vector<uint64_t>{128, 64}));
  EXPECT_EQ(st->layers[0].bq, nullptr);
}

// Runs validation on a damaged file and returns the error message ("" if it loaded).
std::string LoadError(const ArchModelSpec& s, const ArchModelTweaks& t, const std::string& name,
                      absl::StatusCode* code = nullptr) {
  auto f = Written(s, name, t);
  if (f == nullptr) return "open failed";
  auto hp = LlamaHParams::FromGguf(*f);
  if (!hp.ok()) return std::string(hp.status().message());
  auto st = SelectStageTensors(*f, *hp, {0, s.n_layer, true, true});
  if (code) *code = st.status().code();
  return st.ok() ? "" : std::string(st.status().message());
}

TEST(GgufArch, MissingTensorIsNamed) {
  ArchModelSpec s;
  s.arch = "qwen2";
  s.biases = true;
  EXPECT_EQ(LoadError(s, {}, "qwen2-ok"), "");
  ArchModelTweaks t;
  t.drop = {"blk.1.attn_k.bias"};
  absl::StatusCode code;
  const std::string msg = LoadError(s, t, "qwen2-nobias", &code);
  EXPECT_EQ(code, absl::StatusCode::kNotFound);
  EXPECT_NE(msg.find("tensor 'blk.1.attn_k.bias' not found (architecture 'qwen2' requires it)"),
            std::string::npos)
      << msg;
  // qwen3 without its norms.
  ArchModelSpec q3;
  q3.arch = "qwen3";
  q3.qk_norm = true;
  t.drop = {"blk.0.attn_q_norm.weight"};
  EXPECT_NE(LoadError(q3, t, "qwen3-nonorm").find("'blk.0.attn_q_norm.weight' not found"),
            std::string::npos);
  // A tied model without token_embd has no head at all.
  t.drop = {"token_embd.weight"};
  EXPECT_NE(LoadError(q3, t, "qwen3-noembd").find("'token_embd.weight' not found"),
            std::string::npos);
}

TEST(GgufArch, UnexpectedTensorIsNamed) {
  ArchModelSpec s;
  s.arch = "qwen2";
  s.biases = true;
  ArchModelTweaks t;
  t.extra = {{"blk.0.attn_q_norm.weight", {16}}};  // a qwen3 tensor in a qwen2 file
  std::string msg = LoadError(s, t, "qwen2-extra");
  EXPECT_NE(msg.find("unexpected tensor 'blk.0.attn_q_norm.weight'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'qwen2'"), std::string::npos) << msg;
  t.extra = {{"blk.2.attn_q.bias", {64}}};  // a block the model does not have
  msg = LoadError(s, t, "qwen2-block2");
  EXPECT_NE(msg.find("unexpected tensor 'blk.2.attn_q.bias'"), std::string::npos) << msg;
  ArchModelSpec q3;
  q3.arch = "qwen3";
  q3.qk_norm = true;
  q3.biases = true;  // qwen3 has no biases
  msg = LoadError(q3, {}, "qwen3-bias");
  EXPECT_NE(msg.find("unexpected tensor 'blk.0.attn_q.bias'"), std::string::npos) << msg;
}

TEST(GgufArch, MisShapedTensorIsNamed) {
  ArchModelSpec s;
  s.arch = "qwen3";
  s.qk_norm = true;
  ArchModelTweaks t;
  t.reshape = {{"blk.1.attn_k_norm.weight", {64}}};  // n_embd instead of head_dim
  std::string msg = LoadError(s, t, "qwen3-shape");
  EXPECT_NE(msg.find("tensor 'blk.1.attn_k_norm.weight' has shape [64], expected [16]"),
            std::string::npos)
      << msg;
  ArchModelSpec l;
  l.arch = "llama";
  l.n_head_kv = 1;
  t.reshape = {{"blk.0.attn_v.weight", {64, 32}}};  // KV width of 2 heads with 1 KV head
  msg = LoadError(l, t, "llama-shape");
  EXPECT_NE(msg.find("tensor 'blk.0.attn_v.weight' has shape [64, 32], expected [64, 16]"),
            std::string::npos)
      << msg;
  ArchModelSpec b = l;
  b.arch = "qwen2";
  b.biases = true;
  t.reshape = {{"blk.0.attn_q.bias", {16}}};
  msg = LoadError(b, t, "qwen2-bshape");
  EXPECT_NE(msg.find("'blk.0.attn_q.bias' has shape [16], expected [64]"), std::string::npos)
      << msg;
}

TEST(GgufArch, UnknownArchitectureListsTheSupportedOnes) {
  ArchModelSpec s;
  s.arch = "gemma";
  auto f = Written(s, "gemma");
  ASSERT_NE(f, nullptr);
  auto hp = LlamaHParams::FromGguf(*f);
  ASSERT_FALSE(hp.ok());
  EXPECT_NE(hp.status().message().find("architecture 'gemma' is not supported (only llama, "
                                       "qwen2, qwen3)"),
            std::string::npos)
      << hp.status();
}

TEST(GgufArch, RopeScalingKeysAndFreqsTensor) {
  ArchModelSpec s;
  s.arch = "llama";
  s.llama3_scaling = true;
  s.scaling_factor = 8.0f;
  s.low_freq_factor = 1.0f;
  s.high_freq_factor = 4.0f;
  s.orig_ctx = 8192;
  s.rope_freqs = std::vector<float>(8, 2.0f);
  auto f = Written(s, "llama31");
  ASSERT_NE(f, nullptr);
  auto hp = LlamaHParams::FromGguf(*f);
  ASSERT_TRUE(hp.ok()) << hp.status();
  EXPECT_EQ(hp->rope_scaling, RopeScaling::kLlama3);
  EXPECT_FLOAT_EQ(hp->rope_scaling_factor, 8.0f);
  EXPECT_FLOAT_EQ(hp->rope_low_freq_factor, 1.0f);
  EXPECT_FLOAT_EQ(hp->rope_high_freq_factor, 4.0f);
  EXPECT_EQ(hp->rope_orig_ctx, 8192u);
  EXPECT_FLOAT_EQ(hp->rope_freq_scale, 1.0f);  // llama3 scaling works through the factors
  // Every stage with layers gets the (global) frequency factors.
  auto st = SelectStageTensors(*f, *hp, {1, 2, false, true});
  ASSERT_TRUE(st.ok()) << st.status();
  ASSERT_NE(st->rope_freqs, nullptr);
  EXPECT_EQ(st->rope_freqs->shape, (std::vector<uint64_t>{8}));

  ArchModelTweaks t;
  t.reshape = {{"rope_freqs.weight", {16}}};
  const std::string msg = LoadError(s, t, "llama31-shape");
  EXPECT_NE(msg.find("'rope_freqs.weight' has shape [16], expected [8]"), std::string::npos) << msg;
}

}  // namespace
}  // namespace pipeinfer::gguf
