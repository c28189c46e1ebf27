// `pipeinfer gguf inspect` on every fixture model: the real binary, its output and exit codes.
#include <fstream>

#include <gtest/gtest.h>

#include "testing/fixtures.h"

namespace {

using pipeinfer::testing::BinPath;
using pipeinfer::testing::FixturePath;
using pipeinfer::testing::RunCommand;

TEST(GgufInspectCli, PrintsHyperparametersAndTensorTable) {
  const char* models[] = {"tiny-f32",       "tiny-f16",    "tiny-q8_0", "tiny-q4_0",
                          "tiny-q4_0-pure", "tiny-q4_k_m", "tiny-q6_k"};
  for (const char* m : models) {
    SCOPED_TRACE(m);
    std::string out;
    const int rc = RunCommand(
        BinPath("pipeinfer") + " gguf inspect " + FixturePath(std::string("models/") + m + ".gguf"),
        &out);
    ASSERT_EQ(rc, 0) << out;
    for (const char* want :
         {"GGUF v3, alignment 32", "n_vocab 259", "n_embd 256", "n_layer 2", "n_head 4",
          "n_head_kv 2", "n_ff 512", "n_ctx_train 512", "rope_freq_base 10000",
          "rms_norm_eps 1e-05", "\"fixture-tiny\"", "model llama, 259 tokens, bos 1, eos 2, unk 0",
          "blk.1.ffn_down.weight", "[512, 256]", "output.weight", "[256, 259]", "total "}) {
      EXPECT_NE(out.find(want), std::string::npos) << "missing '" << want << "' in\n" << out;
    }
  }
  std::string out;
  ASSERT_EQ(
      RunCommand(BinPath("pipeinfer") + " gguf inspect " + FixturePath("models/tiny-q4_k_m.gguf"),
                 &out),
      0);
  // Type column: Q6_K overrides in the Q4_K_M mix, and exact byte sizes.
  EXPECT_NE(out.find("blk.1.attn_v.weight       q6_K"), std::string::npos) << out;
  EXPECT_NE(out.find("blk.0.attn_v.weight       q4_K"), std::string::npos) << out;
  EXPECT_NE(out.find("output_norm.weight        f32"), std::string::npos) << out;
}

TEST(GgufInspectCli, BadFilesFailWithAMessage) {
  const std::string bad = ::testing::TempDir() + "/not-a-model.gguf";
  std::ofstream(bad) << "this is not a gguf file at all";
  std::string out;
  EXPECT_EQ(RunCommand(BinPath("pipeinfer") + " gguf inspect " + bad, &out), 1);
  EXPECT_NE(out.find("error: "), std::string::npos) << out;
  EXPECT_NE(out.find("bad magic"), std::string::npos) << out;
  out.clear();
  EXPECT_NE(RunCommand(BinPath("pipeinfer") + " gguf inspect /no/such/file.gguf", &out), 0);
  EXPECT_NE(out.find("cannot open"), std::string::npos) << out;
  out.clear();
  EXPECT_NE(RunCommand(BinPath("pipeinfer") + " gguf inspect", &out), 0);
}

}  // namespace
