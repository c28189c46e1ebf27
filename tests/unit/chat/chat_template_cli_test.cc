// `pipeinfer chat-template`: the fixture conversations rendered by the binary are byte-identical
// to the fixture renderings (@huggingface/jinja with the models' own templates), and bad input
// fails with a message.
#include <fstream>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "testing/fixtures.h"

namespace {

using ::pipeinfer::testing::BinPath;
using ::pipeinfer::testing::FixturePath;
using ::pipeinfer::testing::ReadText;
using ::pipeinfer::testing::RunCommand;
using ::testing::HasSubstr;

void CheckFixture(const std::string& model, const std::string& jsonl) {
  std::istringstream in(ReadText(FixturePath(jsonl)));
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line);
    SCOPED_TRACE(jsonl + " line " + std::to_string(n));
    const std::string file = ::testing::TempDir() + "/chat_template_cli_" + std::to_string(n++);
    {
      std::ofstream out(file, std::ios::binary);
      out << j["messages"].dump();
    }
    std::string out;
    const std::string cmd =
        BinPath("pipeinfer") + " chat-template --model " + FixturePath("models/" + model) +
        " --messages " + file +
        (j["add_generation_prompt"].get<bool>() ? " --add-generation-prompt" : "");
    ASSERT_EQ(RunCommand(cmd, &out, /*merge_stderr=*/false), 0) << cmd;
    EXPECT_EQ(out, j["rendered"].get<std::string>());
  }
  EXPECT_EQ(n, 4);
}

TEST(ChatTemplateCli, Llama3Fixture) {
  CheckFixture("llama3-tiny-f16.gguf", "chat/llama3.v1.jsonl");
}

TEST(ChatTemplateCli, Qwen3Fixture) { CheckFixture("qwen2-tiny-f16.gguf", "chat/qwen3.v1.jsonl"); }

TEST(ChatTemplateCli, ObjectWithVariablesAndErrors) {
  const std::string file = ::testing::TempDir() + "/chat_template_cli_obj.json";
  {
    std::ofstream out(file, std::ios::binary);
    out << R"({"messages": [{"role": "user", "content": "Hi"}], "enable_thinking": false})";
  }
  const std::string base = BinPath("pipeinfer") + " chat-template --model " +
                           FixturePath("models/qwen2-tiny-f16.gguf") + " --messages " + file;
  std::string out;
  ASSERT_EQ(RunCommand(base + " --add-generation-prompt", &out, false), 0);
  EXPECT_EQ(out, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  out.clear();
  ASSERT_EQ(RunCommand(base + " --chat-template llama3", &out, false), 1);
  out.clear();
  // A built-in format takes no extra variables; a missing "messages" and bad JSON are refused.
  EXPECT_EQ(RunCommand(base + " --chat-template nosuch", &out), 1);
  EXPECT_THAT(out, HasSubstr("--chat-template"));
  {
    std::ofstream o(file, std::ios::binary);
    o << "[{\"role\": ";
  }
  out.clear();
  EXPECT_EQ(RunCommand(base, &out), 1);
  EXPECT_THAT(out, HasSubstr("invalid JSON"));
}

}  // namespace
