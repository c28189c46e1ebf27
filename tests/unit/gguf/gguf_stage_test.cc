// Stage loading: tensor selection per layer range, layer splitting, and the property that a stage
// only makes its own tensors resident (measured with the process RSS on a synthetic model).
#include <unistd.h>

#include <cstdio>
#include <numeric>

#include <gtest/gtest.h>

#include "common/mapped_file.h"
#include "gguf/llama.h"
#include "gguf/reader.h"
#include "gguf/writer.h"
#include "testing/fixtures.h"

namespace pipeinfer::gguf {
namespace {

using pipeinfer::testing::FixturePath;

TEST(GgufStage, SelectsOnlyTheRangeAndEnds) {
  auto f = GgufFile::Open(FixturePath("models/tiny-q4_k_m.gguf"));
  ASSERT_TRUE(f.ok()) << f.status();
  auto hp = LlamaHParams::FromGguf(**f);
  ASSERT_TRUE(hp.ok());
  auto first = SelectStageTensors(**f, *hp, {0, 1, true, false});
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_NE(first->token_embd, nullptr);
  EXPECT_EQ(first->output, nullptr);
  ASSERT_EQ(first->layers.size(), 1u);
  EXPECT_EQ(first->layers[0].wq->name, "blk.0.attn_q.weight");
  EXPECT_EQ(first->all().size(), 10u);
  auto last = SelectStageTensors(**f, *hp, {1, 2, false, true});
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(last->token_embd, nullptr);
  EXPECT_EQ(last->output->name, "output.weight");
  EXPECT_EQ(last->layers[0].w_down->name, "blk.1.ffn_down.weight");
  EXPECT_EQ(last->layers[0].w_down->type, TensorType::kQ6_K);
  EXPECT_EQ(first->total_bytes() + last->total_bytes(),
            std::accumulate((*f)->tensors().begin(), (*f)->tensors().end(), uint64_t{0},
                            [](uint64_t s, const TensorInfo& t) { return s + t.n_bytes; }));
  EXPECT_FALSE(SelectStageTensors(**f, *hp, {1, 3, false, true}).ok());
  EXPECT_FALSE(SelectStageTensors(**f, *hp, {1, 1, false, true}).ok());
}

TEST(GgufStage, SplitLayers) {
  auto even = SplitLayers(22, 4);
  ASSERT_TRUE(even.ok());
  uint32_t prev = 0;
  for (size_t i = 0; i < even->size(); ++i) {
    const auto& s = (*even)[i];
    EXPECT_EQ(s.first_layer, prev);
    EXPECT_GE(s.last_layer - s.first_layer, 5u);
    EXPECT_LE(s.last_layer - s.first_layer, 6u);
    EXPECT_EQ(s.embedding, i == 0);
    EXPECT_EQ(s.head, i + 1 == even->size());
    prev = s.last_layer;
  }
  EXPECT_EQ(prev, 22u);
  // The paper's "head gets 10%" split: 0.1, 0.15 x 6 over 80 layers.
  auto weighted = SplitLayers(80, 7, {0.1, 0.15, 0.15, 0.15, 0.15, 0.15, 0.15});
  ASSERT_TRUE(weighted.ok());
  EXPECT_EQ((*weighted)[0].last_layer, 8u);
  EXPECT_EQ(weighted->back().last_layer, 80u);
  for (const auto& s : *weighted) EXPECT_GE(s.last_layer - s.first_layer, 8u);
  // Every stage needs a layer, even with tiny weights.
  auto skewed = SplitLayers(4, 4, {100, 0.001, 0.001, 0.001});
  ASSERT_TRUE(skewed.ok());
  for (const auto& s : *skewed) EXPECT_EQ(s.last_layer - s.first_layer, 1u);
  EXPECT_FALSE(SplitLayers(2, 3).ok());
  EXPECT_FALSE(SplitLayers(8, 2, {1, -1}).ok());
  EXPECT_FALSE(SplitLayers(8, 2, {1}).ok());
}

// Writes a random-weight llama model large enough that residency is measurable.
std::string WriteSyntheticModel(uint32_t n_layer, uint32_t n_embd, uint32_t n_ff,
                                uint32_t n_vocab) {
  GgufWriter w;
  w.SetString("general.architecture", "llama");
  w.SetString("general.name", "synthetic-rss");
  w.SetUint32("llama.context_length", 256);
  w.SetUint32("llama.embedding_length", n_embd);
  w.SetUint32("llama.block_count", n_layer);
  w.SetUint32("llama.feed_forward_length", n_ff);
  w.SetUint32("llama.attention.head_count", 8);
  w.SetFloat32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.SetString("tokenizer.ggml.model", "llama");
  std::vector<std::string> tokens(n_vocab);
  for (uint32_t i = 0; i < n_vocab; ++i) tokens[i] = "t" + std::to_string(i);
  w.SetStringArray("tokenizer.ggml.tokens", tokens);
  uint8_t fill = 1;
  auto add = [&](const std::string& name, std::vector<uint64_t> shape) {
    uint64_t n = 1;
    for (auto d : shape) n *= d;
    ASSERT_TRUE(
        w.AddTensor(name, TensorType::kF32, shape, std::vector<uint8_t>(n * 4, fill++)).ok());
  };
  add("token_embd.weight", {n_embd, n_vocab});
  for (uint32_t l = 0; l < n_layer; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    add(p + "attn_norm.weight", {n_embd});
    add(p + "attn_q.weight", {n_embd, n_embd});
    add(p + "attn_k.weight", {n_embd, n_embd});
    add(p + "attn_v.weight", {n_embd, n_embd});
    add(p + "attn_output.weight", {n_embd, n_embd});
    add(p + "ffn_norm.weight", {n_embd});
    add(p + "ffn_gate.weight", {n_embd, n_ff});
    add(p + "ffn_up.weight", {n_embd, n_ff});
    add(p + "ffn_down.weight", {n_ff, n_embd});
  }
  add("output_norm.weight", {n_embd});
  add("output.weight", {n_embd, n_vocab});
  char path[] = "/tmp/pipeinfer-rss-XXXXXX";
  int fd = mkstemp(path);
  EXPECT_GE(fd, 0);
  close(fd);
  EXPECT_TRUE(w.WriteFile(path).ok());
  return path;
}

TEST(GgufStage, StageTouchesOnlyItsLayers) {
  // 8 layers of ~10 MiB each (F32, n_embd 512, n_ff 1024).
  const std::string path = WriteSyntheticModel(8, 512, 1024, 1000);
  {
    auto f = GgufFile::Open(path);
    ASSERT_TRUE(f.ok()) << f.status();
    auto hp = LlamaHParams::FromGguf(**f);
    ASSERT_TRUE(hp.ok()) << hp.status();
    auto st = SelectStageTensors(**f, *hp, {2, 4, false, false});
    ASSERT_TRUE(st.ok()) << st.status();
    const uint64_t stage_bytes = st->total_bytes();
    const uint64_t file_bytes = (*f)->file_size();
    ASSERT_GT(file_bytes, 70u << 20);
    EXPECT_EQ(stage_bytes, 2u * (4u * 512 * 512 + 3u * 512 * 1024 + 2u * 512) * 4u);

    const uint64_t before = CurrentRssBytes();
    ASSERT_GT(before, 0u);
    const uint64_t checksum = PrefaultStage(**f, *st);
    EXPECT_NE(checksum, 0u);
    const uint64_t after = CurrentRssBytes();
    const int64_t grown = static_cast<int64_t>(after) - static_cast<int64_t>(before);
    std::printf("stage bytes %llu, file bytes %llu, RSS grew by %lld bytes\n",
                static_cast<unsigned long long>(stage_bytes),
                static_cast<unsigned long long>(file_bytes), static_cast<long long>(grown));
    // ThreadSanitizer keeps shadow memory as large as every page the program reads, so there
    // RSS grows by twice what was touched.
#if defined(__SANITIZE_THREAD__)
    constexpr int64_t kShadow = 2;
#else
    constexpr int64_t kShadow = 1;
#endif
    // The stage's bytes became resident (within a page per tensor of slack)...
    EXPECT_GE(grown, static_cast<int64_t>(stage_bytes * 9 / 10));
    // ...and nothing like the rest of the file did.
    EXPECT_LT(grown, kShadow * static_cast<int64_t>(stage_bytes + (4u << 20)));
    EXPECT_LT(grown, kShadow * static_cast<int64_t>(file_bytes / 3));
  }
  std::remove(path.c_str());
}

}  // namespace
}  // namespace pipeinfer::gguf
