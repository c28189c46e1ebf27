// The engine tools as a user runs them: `pipeinfer logits` writes the fixture formats and matches
// llama.cpp's references, `pipeinfer generate` reproduces the reference greedy ids, and
// `pipeinfer gguf synth` writes a model the engine runs.
#include <cmath>
#include <cstring>
#include <sstream>

#include <gtest/gtest.h>

#include "testing/fixtures.h"

namespace {

using pipeinfer::testing::BinPath;
using pipeinfer::testing::FixturePath;
using pipeinfer::testing::ReadF32;
using pipeinfer::testing::ReadText;
using pipeinfer::testing::RunCommand;

TEST(EngineCli, LogitsWritesFixtureFormats) {
  const std::string prefix = ::testing::TempDir() + "/cli-q6k";
  std::string out;
  ASSERT_EQ(
      // The exact numerics match the `-deq` reference (the default, kFast, is llama.cpp-like).
      RunCommand("PIPEINFER_QUANT_MATH=exact " + BinPath("pipeinfer") + " logits --model " +
                     FixturePath("models/tiny-q6_k.gguf") + " --prompt-file " +
                     FixturePath("prompts/p1.txt") + " --out-prefix " + prefix + " --greedy 32",
                 &out),
      0)
      << out;
  const std::string ref = FixturePath("refs/tiny-q6_k-deq.p1.");
  EXPECT_EQ(ReadText(prefix + ".prompt_ids.txt"), ReadText(ref + "prompt_ids.txt"));
  EXPECT_EQ(ReadText(prefix + ".greedy_ids.txt"), ReadText(ref + "greedy_ids.txt"));
  for (const char* kind : {"prompt_logits.f32", "greedy_logits.f32"}) {
    const auto got = ReadF32(prefix + "." + kind);
    const auto want = ReadF32(ref + kind);
    ASSERT_EQ(got.size(), want.size()) << kind;
    double m = 0;
    for (size_t i = 0; i < got.size(); ++i) m = std::max<double>(m, std::abs(got[i] - want[i]));
    EXPECT_LE(m, 0.03) << kind;
  }
}

TEST(EngineCli, GenerateReproducesReferenceGreedyIds) {
  std::string out;
  ASSERT_EQ(RunCommand(BinPath("pipeinfer") + " generate -m " +
                           FixturePath("models/tiny-f32.gguf") + " -p \"$(cat " +
                           FixturePath("prompts/p1.txt") + ")\" -n 32 --ignore-eos --print-ids",
                       &out, false),
            0)
      << out;
  EXPECT_EQ(out, ReadText(FixturePath("refs/tiny-f32.p1.greedy_ids.txt")));
  // Without --ignore-eos generation stops at </s>: tiny-q4_0 emits it at step 12.
  out.clear();
  ASSERT_EQ(
      RunCommand(BinPath("pipeinfer") + " generate -m " + FixturePath("models/tiny-q4_0.gguf") +
                     " -p \"$(cat " + FixturePath("prompts/p1.txt") + ")\" -n 32 --print-ids",
                 &out, false),
      0);
  std::istringstream ids(out);
  int n = 0, v;
  while (ids >> v) {
    EXPECT_NE(v, 2);
    ++n;
  }
  EXPECT_EQ(n, 12);
}

TEST(EngineCli, SynthModelRuns) {
  const std::string path = ::testing::TempDir() + "/synth-q4k.gguf";
  std::string out;
  ASSERT_EQ(RunCommand(BinPath("pipeinfer") + " gguf synth --out " + path +
                           " --type q4_K --n-layer 2 --n-embd 256 --n-ff 512 --n-head 4 "
                           "--n-head-kv 2 --n-vocab 300",
                       &out),
            0)
      << out;
  out.clear();
  ASSERT_EQ(RunCommand(BinPath("pipeinfer") + " gguf inspect " + path, &out), 0) << out;
  EXPECT_NE(out.find("tensors: complete"), std::string::npos) << out;
  EXPECT_NE(out.find("n_head_kv 2"), std::string::npos);
  out.clear();
  ASSERT_EQ(RunCommand(BinPath("pipeinfer") + " generate -m " + path +
                           " -p hello -n 8 --ignore-eos --print-ids",
                       &out, false),
            0)
      << out;
  std::istringstream ids(out);
  int n = 0, v;
  while (ids >> v) {
    EXPECT_GE(v, 0);
    EXPECT_LT(v, 300);
    ++n;
  }
  EXPECT_EQ(n, 8);
  out.clear();
  EXPECT_NE(RunCommand(BinPath("pipeinfer") + " gguf synth --out " + path + " --type q9_9", &out),
            0);
  EXPECT_NE(out.find("unknown tensor type"), std::string::npos) << out;
}

TEST(EngineCli, BadModelIsAReadableError) {
  std::string out;
  EXPECT_EQ(RunCommand(BinPath("pipeinfer") + " generate -m " +
                           FixturePath("tokenizer/ggml-vocab-llama.gguf") + " -p hi -n 2",
                       &out),
            1);
  EXPECT_NE(out.find("error: "), std::string::npos) << out;
  EXPECT_NE(out.find("token_embd.weight"), std::string::npos) << out;
}

}  // namespace
