// Byte-level BPE models with their GGUF chat templates, served by a real 2-stage cluster
// (`pipeinfer up --detach`, plain mode) through /v1/chat/completions: the Llama-3-vocabulary
// fixture (llama architecture, Llama-3 template) and the Qwen fixture (qwen2 architecture with QKV
// biases, Qwen3 template). The models have random weights, so their output is arbitrary bytes:
// every streamed event must still be valid UTF-8 JSON, the streamed text must equal the whole
// answer's, and the answer must stop at the requested length.
#include <httplib.h>

#include <chrono>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "testing/cluster_harness.h"
#include "testing/detached_cluster_test.h"
#include "testing/fixtures.h"
#include "testing/tokenizer_checks.h"

namespace pipeinfer {
namespace {

using json = nlohmann::json;
using pipeinfer::testing::BinPath;
using pipeinfer::testing::CommandResult;
using pipeinfer::testing::FixturePath;
using pipeinfer::testing::RunCmd;

using pipeinfer::testing::ValidUtf8;  // strict, independent of libs/tokenizer

class ModernModelsTest : public testing::DetachedClusterTest,
                         public ::testing::WithParamInterface<const char*> {
 protected:
  ModernModelsTest() : DetachedClusterTest("modern_models_test") {}
};

TEST_P(ModernModelsTest, TwoStagesServeAChatWithTheGgufTemplate) {
  const std::string model = FixturePath(std::string("models/") + GetParam());
  const CommandResult up =
      UpOnFreePorts({"--model", model, "--stages", "2", "--kv-tokens", "1024"}, 7);
  const int http_port = http_port_;
  ASSERT_EQ(up.exit_code, 0) << up.output;

  // The chat template is the GGUF's: `pipeinfer chat-template` renders the same conversation.
  const json messages = {{{"role", "system"}, {"content", "You are terse."}},
                         {{"role", "user"}, {"content", "Name a colour. ¿Qué? 色"}}};
  const json body = {{"messages", messages}, {"max_tokens", 24}, {"temperature", 0}};
  httplib::Client c("127.0.0.1", http_port);
  c.set_read_timeout(60, 0);

  auto whole = c.Post("/v1/chat/completions", body.dump(), "application/json");
  ASSERT_TRUE(whole);
  ASSERT_EQ(whole->status, 200) << whole->body;
  ASSERT_TRUE(ValidUtf8(whole->body));
  const json w = json::parse(whole->body);
  const std::string text = w["choices"][0]["message"]["content"];
  EXPECT_EQ(w["usage"]["completion_tokens"].get<int>() <= 24, true) << whole->body;
  if (w["choices"][0]["finish_reason"] == "length") {
    EXPECT_EQ(w["usage"]["completion_tokens"], 24);
  }
  EXPECT_GT(w["usage"]["prompt_tokens"].get<int>(), 10);

  json streamed_body = body;
  streamed_body["stream"] = true;
  std::string raw;
  auto s = c.Post("/v1/chat/completions", streamed_body.dump(), "application/json");
  ASSERT_TRUE(s);
  ASSERT_EQ(s->status, 200) << s->body;
  // Every event is valid UTF-8 on its own (no character split across events) and valid JSON.
  std::string joined;
  std::istringstream in(s->body);
  int events = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("data: ", 0) != 0 || line == "data: [DONE]") continue;
    const std::string payload = line.substr(6);
    ASSERT_TRUE(ValidUtf8(payload)) << "event " << events << " is not valid UTF-8";
    const json ev = json::parse(payload);
    ++events;
    if (ev["choices"].empty()) continue;
    const json& delta = ev["choices"][0]["delta"];
    if (delta.contains("content") && delta["content"].is_string()) {
      const std::string piece = delta["content"];
      EXPECT_TRUE(ValidUtf8(piece));
      joined += piece;
    }
  }
  EXPECT_GT(events, 2);
  EXPECT_EQ(joined, text) << "streamed and whole answers differ (greedy)";

  // The rendered prompt: the CLI with the GGUF template gives the same prompt token count.
  const std::string messages_file = dir_ + "/messages.json";
  {
    std::FILE* f = std::fopen(messages_file.c_str(), "w");
    ASSERT_NE(f, nullptr);
    const std::string m = messages.dump();
    std::fwrite(m.data(), 1, m.size(), f);
    std::fclose(f);
  }
  const CommandResult rendered = RunCmd({BinPath("pipeinfer"), "chat-template", "--model", model,
                                         "--messages", messages_file, "--add-generation-prompt"},
                                        std::chrono::seconds(30));
  ASSERT_EQ(rendered.exit_code, 0) << rendered.output;
  EXPECT_NE(rendered.output.find("Name a colour. ¿Qué? 色"), std::string::npos) << rendered.output;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ModernModelsTest,
                         ::testing::Values("llama3-tiny-f16.gguf", "qwen2-tiny-f16.gguf"),
                         [](const ::testing::TestParamInfo<const char*>& p) {
                           return std::string(p.param).substr(0, 5);
                         });

}  // namespace
}  // namespace pipeinfer
