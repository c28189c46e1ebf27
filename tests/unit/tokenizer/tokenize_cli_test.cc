// `pipeinfer tokenize` / `pipeinfer detokenize`: the real binary against the fixture vectors.
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "testing/fixtures.h"

namespace {

using pipeinfer::testing::BinPath;
using pipeinfer::testing::FixturePath;
using pipeinfer::testing::RunCommand;

std::string FromHex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

std::string Join(const std::vector<int>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? " " : "") + std::to_string(ids[i]);
  return s;
}

std::vector<nlohmann::json> ReadJsonl(const std::string& rel) {
  std::ifstream in(FixturePath(rel));
  std::vector<nlohmann::json> out;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  }
  return out;
}

std::string Tool() { return BinPath("pipeinfer"); }

// Runs the binary on the vectors of a fixture file: every `stride`-th line, one of the three modes
// per line in turn (the library test checks every line in every mode; this checks the plumbing
// while keeping the number of process starts down). Detokenizes through --ids and stdin in turn.
void CheckFile(const std::string& model, const std::string& jsonl, int stride) {
  const std::string tmp = ::testing::TempDir() + "/tokenize_cli_input.txt";
  const std::string ids_file = ::testing::TempDir() + "/tokenize_cli_ids.txt";
  struct Mode {
    const char* field;
    const char* flags;
  };
  const Mode kModes[] = {{"bos", ""}, {"nobos", " --no-bos"}, {"bos_special", " --special"}};
  int checked = 0;
  for (const auto& j : ReadJsonl(jsonl)) {
    const int index = j["index"].get<int>();
    if (index % stride != 0) continue;
    const Mode m = kModes[(index / stride) % 3];
    SCOPED_TRACE(jsonl + " line " + std::to_string(index) + " mode " + m.field);
    {
      std::ofstream out(tmp, std::ios::binary);
      out << FromHex(j["text_utf8_hex"].get<std::string>());
    }
    const auto ids = j[std::string("ids_") + m.field].get<std::vector<int>>();
    std::string out;
    ASSERT_EQ(RunCommand(Tool() + " tokenize --model " + model + m.flags + " --file " + tmp, &out),
              0)
        << out;
    EXPECT_EQ(out, Join(ids) + "\n");

    const std::string want = FromHex(j[std::string("detok_") + m.field + "_utf8_hex"]);
    std::string bytes;
    if (index % 2 == 0) {
      ASSERT_EQ(RunCommand(Tool() + " detokenize --model " + model + " --ids '" + Join(ids) + "'",
                           &bytes),
                0);
    } else {
      std::ofstream(ids_file) << Join(ids) << "\n";
      ASSERT_EQ(RunCommand(Tool() + " detokenize --model " + model + " < " + ids_file, &bytes), 0);
    }
    EXPECT_EQ(bytes, want);
    ++checked;
  }
  EXPECT_GT(checked, 10);
}

TEST(TokenizeCli, LlamaVocabVectorsThroughFiles) {
  CheckFile(FixturePath("tokenizer/ggml-vocab-llama.gguf"), "tokenizer/llama-vocab.v1.jsonl", 1);
}

TEST(TokenizeCli, ByteVocabVectorsThroughFiles) {
  CheckFile(FixturePath("models/tiny-f32.gguf"), "tokenizer/byte-vocab.v1.jsonl", 3);
}

// Byte-level BPE vocabularies (llama.cpp de3ff815 vectors); each start loads a 25 MB model.
TEST(TokenizeCli, Llama3VocabVectorsThroughFiles) {
  CheckFile(FixturePath("models/llama3-tiny-f16.gguf"), "tokenizer/llama3-vocab.v1.jsonl", 4);
}

TEST(TokenizeCli, QwenVocabVectorsThroughFiles) {
  CheckFile(FixturePath("models/qwen2-tiny-f16.gguf"), "tokenizer/qwen3-vocab.v1.jsonl", 4);
}

TEST(TokenizeCli, TextOption) {
  const std::string model = FixturePath("tokenizer/ggml-vocab-llama.gguf");
  std::string out;
  ASSERT_EQ(RunCommand(Tool() + " tokenize --model " + model + " --text 'Hello world'", &out), 0);
  EXPECT_EQ(out, "1 15043 3186\n");
  out.clear();
  ASSERT_EQ(RunCommand(Tool() + " tokenize --model " + model + " --special --text '<s> Hello </s>'",
                       &out),
            0);
  EXPECT_EQ(out, "1 1 15043 29871 2\n");
  out.clear();
  ASSERT_EQ(RunCommand(Tool() + " tokenize --model " + model + " --no-bos --text ''", &out), 0);
  EXPECT_EQ(out, "\n");
  // The P1 prompt with the byte vocab equals the reference prompt ids.
  out.clear();
  ASSERT_EQ(RunCommand(Tool() + " tokenize --model " + FixturePath("models/tiny-q8_0.gguf") +
                           " --file " + FixturePath("prompts/p1.txt"),
                       &out),
            0);
  EXPECT_EQ(out, pipeinfer::testing::ReadText(FixturePath("refs/tiny-q8_0.p1.prompt_ids.txt")));
}

TEST(TokenizeCli, Errors) {
  const std::string model = FixturePath("tokenizer/ggml-vocab-llama.gguf");
  struct Case {
    std::string args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {" tokenize --model /no/such/model.gguf --text hi", "error: "},
      {" tokenize --model " + model + " --file /no/such/input.txt", "error: cannot open"},
      {" tokenize --model " + model, "error: give exactly one of --text and --file"},
      {" detokenize --model /no/such/model.gguf --ids 1", "error: "},
      {" detokenize --model " + model + " --ids '1 2x 3'", "error: bad token id '2x'"},
      {" detokenize --model " + model + " --ids '1 32000'", "error: token id 32000 is outside"},
      {" detokenize --model " + model + " --ids '-1'", "error: token id -1 is outside"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.args);
    std::string out;
    EXPECT_EQ(RunCommand(Tool() + c.args, &out), 1) << out;
    EXPECT_NE(out.find(c.message), std::string::npos) << out;
  }
  // A file that is not a GGUF.
  const std::string bad = ::testing::TempDir() + "/not-a-model.gguf";
  std::ofstream(bad) << "not a gguf file";
  std::string out;
  EXPECT_EQ(RunCommand(Tool() + " tokenize --model " + bad + " --text hi", &out), 1);
  EXPECT_NE(out.find("error: "), std::string::npos) << out;
  // Both inputs at once is a usage error.
  out.clear();
  EXPECT_NE(RunCommand(Tool() + " tokenize --model " + model + " --text a --file b", &out), 0);
}

}  // namespace
