// GGUF chat templates through the Jinja-subset interpreter: the fixture renderings (made by
// @huggingface/jinja from the models' own templates, tests/fixtures/chat/), templates of other
// families written here with expected outputs worked out by hand from their published formats,
// and the router's selection rules.
#include <string>
#include <vector>

#include "chat/model_template.h"
#include "gguf/reader.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "testing/fixtures.h"

namespace pipeinfer::chat {
namespace {

using ::pipeinfer::testing::FixturePath;
using ::pipeinfer::testing::ReadText;
using ::testing::HasSubstr;

std::string GgufTemplate(const std::string& model) {
  auto f = gguf::GgufFile::Open(FixturePath("models/" + model));
  EXPECT_TRUE(f.ok()) << f.status();
  if (!f.ok()) return "";
  auto t = (*f)->GetString("tokenizer.chat_template");
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *t : "";
}

struct Case {
  std::vector<ChatMessage> messages;
  bool add_generation_prompt;
  std::string bos, eos, rendered;
};

std::vector<Case> ReadCases(const std::string& rel) {
  std::vector<Case> cases;
  std::istringstream in(ReadText(FixturePath(rel)));
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line);
    Case c;
    for (const auto& m : j["messages"]) c.messages.push_back({m["role"], m["content"]});
    c.add_generation_prompt = j["add_generation_prompt"];
    c.bos = j["bos_token"];
    c.eos = j["eos_token"];
    c.rendered = j["rendered"];
    cases.push_back(std::move(c));
  }
  return cases;
}

std::string StripAscii(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\n\r");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\n\r") + 1 - b);
}

void CheckFixture(const std::string& model, const std::string& rel, bool trims_content) {
  const std::string source = GgufTemplate(model);
  const std::vector<Case> cases = ReadCases(rel);
  ASSERT_EQ(cases.size(), 4u);
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    auto t = ModelTemplate::FromJinja(source, {c.bos, c.eos, /*strip_leading_bos=*/false});
    ASSERT_TRUE(t.ok()) << t.status();
    std::vector<TextRange> ranges;
    auto text = t->Render(c.messages, c.add_generation_prompt, &ranges);
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(*text, c.rendered) << rel << " case " << i;
    // Where the content landed: each message's (trimmed, for Llama-3) content, in order.
    ASSERT_EQ(ranges.size(), c.messages.size()) << rel << " case " << i;
    for (size_t m = 0; m < ranges.size(); ++m) {
      const std::string want =
          trims_content ? StripAscii(c.messages[m].content) : c.messages[m].content;
      EXPECT_EQ(text->substr(ranges[m].offset, ranges[m].length), want);
    }
    // The router's view: the tokenizer adds BOS, so a leading BOS text is dropped (as llama.cpp's
    // Jinja path does) and the ranges move with it.
    auto routed = ModelTemplate::FromJinja(source, {c.bos, c.eos, /*strip_leading_bos=*/true});
    ASSERT_TRUE(routed.ok());
    std::vector<TextRange> routed_ranges;
    auto r = routed->Render(c.messages, c.add_generation_prompt, &routed_ranges);
    ASSERT_TRUE(r.ok());
    const std::string expected =
        c.rendered.rfind(c.bos, 0) == 0 ? c.rendered.substr(c.bos.size()) : c.rendered;
    EXPECT_EQ(*r, expected);
    ASSERT_EQ(routed_ranges.size(), ranges.size());
    for (size_t m = 0; m < ranges.size(); ++m) {
      EXPECT_EQ(r->substr(routed_ranges[m].offset, routed_ranges[m].length),
                text->substr(ranges[m].offset, ranges[m].length));
    }
  }
}

TEST(GgufTemplate, Llama3FixtureRenderingsAreByteIdentical) {
  CheckFixture("llama3-tiny-f16.gguf", "chat/llama3.v1.jsonl", /*trims_content=*/true);
}

TEST(GgufTemplate, Qwen3FixtureRenderingsAreByteIdentical) {
  CheckFixture("qwen2-tiny-f16.gguf", "chat/qwen3.v1.jsonl", /*trims_content=*/false);
}

TEST(GgufTemplate, FixtureTemplatesAreTheExpectedSizeAndFamily) {
  const std::string llama3 = GgufTemplate("llama3-tiny-f16.gguf");
  const std::string qwen = GgufTemplate("qwen2-tiny-f16.gguf");
  EXPECT_EQ(llama3.size(), 348u);
  EXPECT_EQ(qwen.size(), 4116u);
  auto t = ModelTemplate::FromJinja(llama3, {"<|begin_of_text|>", "<|end_of_text|>", true});
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->StopStrings(), std::vector<std::string>{"<|eot_id|>"});
  EXPECT_THAT(t->Describe(), HasSubstr("llama3 family"));
  auto q = ModelTemplate::FromJinja(qwen, {"<|endoftext|>", "<|im_end|>", false});
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->StopStrings(), std::vector<std::string>{"<|im_end|>"});
}

// Qwen3's thinking markers, tool calls and tool results, beyond what the fixtures cover. The
// expected texts follow the template's own rules, worked out by hand.
TEST(GgufTemplate, Qwen3ThinkingAndTools) {
  auto q = ModelTemplate::FromJinja(GgufTemplate("qwen2-tiny-f16.gguf"),
                                    {"<|endoftext|>", "<|im_end|>", false});
  ASSERT_TRUE(q.ok()) << q.status();
  auto messages = jinja::ParseJson(R"([{"role": "user", "content": "2+2?"}])");
  ASSERT_TRUE(messages.ok());
  auto off = q->RenderValues(*messages, true, {{"enable_thinking", jinja::Value::Bool(false)}});
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_EQ(*off,
            "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  auto on = q->RenderValues(*messages, true, {{"enable_thinking", jinja::Value::Bool(true)}});
  ASSERT_TRUE(on.ok());
  EXPECT_EQ(*on, "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n");

  // The last assistant turn after the last user query keeps its reasoning inside <think>.
  auto thought = jinja::ParseJson(R"([
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "<think>\nadd them\n</think>\n\nFour."}])");
  ASSERT_TRUE(thought.ok());
  auto t = q->RenderValues(*thought, false, {});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t,
            "<|im_start|>user\n2+2?<|im_end|>\n"
            "<|im_start|>assistant\n<think>\nadd them\n</think>\n\nFour.<|im_end|>\n");
  // Before the last user query, the reasoning is dropped.
  auto earlier = jinja::ParseJson(R"([
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "<think>\nadd them\n</think>\n\nFour."},
    {"role": "user", "content": "3+3?"}])");
  ASSERT_TRUE(earlier.ok());
  auto e = q->RenderValues(*earlier, false, {});
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(*e,
            "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\nFour.<|im_end|>\n"
            "<|im_start|>user\n3+3?<|im_end|>\n");

  auto tools = jinja::ParseJson(R"([
    {"role": "user", "content": "Weather?"},
    {"role": "assistant", "content": "", "tool_calls": [
      {"function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]},
    {"role": "tool", "content": "sunny"}])");
  ASSERT_TRUE(tools.ok());
  auto spec = jinja::ParseJson(R"([{"type": "function", "function": {"name": "get_weather"}}])");
  ASSERT_TRUE(spec.ok());
  auto w = q->RenderValues(*tools, true, {{"tools", *spec}});
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(*w,
            "<|im_start|>system\n# Tools\n\nYou may call one or more functions to assist with the "
            "user query.\n\nYou are provided with function signatures within <tools></tools> XML "
            "tags:\n<tools>\n"
            R"({"type": "function", "function": {"name": "get_weather"}})"
            "\n</tools>\n\nFor each function call, return a json object with function name and "
            "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": "
            "<function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n"
            "<|im_start|>user\nWeather?<|im_end|>\n"
            "<|im_start|>assistant\n<tool_call>\n"
            R"({"name": "get_weather", "arguments": {"city": "Paris", "days": 2}})"
            "\n</tool_call><|im_end|>\n"
            "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n");
}

// Other families, written for this test in the style of their published templates.
TEST(JinjaFamilies, GemmaStyle) {
  const std::string gemma =
      "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
      "{{ raise_exception('This model has no system role.') }}{% endif %}"
      "{% for message in messages %}"
      "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
      "{{ raise_exception('Turns must alternate between user and assistant.') }}{% endif %}"
      "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
      "{{ '<start_of_turn>' ~ role ~ '\\n' ~ message['content'] | trim ~ '<end_of_turn>\\n' }}"
      "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}";
  auto t = ModelTemplate::FromJinja(gemma, {"<bos>", "<eos>", false});
  ASSERT_TRUE(t.ok()) << t.status();
  const std::vector<ChatMessage> conv = {{"user", " Hi "}, {"assistant", "Hello"}, {"user", "Bye"}};
  auto r = t->Render(conv, true);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r,
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
            "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n");
  auto no_gen = t->Render(conv, false);
  ASSERT_TRUE(no_gen.ok());
  EXPECT_EQ(*no_gen, r->substr(0, r->size() - std::string("<start_of_turn>model\n").size()));
  const std::vector<ChatMessage> sys = {{"system", "S"}, {"user", "U"}};
  auto refused = t->Render(sys, true);
  EXPECT_TRUE(absl::IsInvalidArgument(refused.status()));
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("This model has no system role."));
  EXPECT_EQ(t->StopStrings(), std::vector<std::string>{"<end_of_turn>"});
}

TEST(JinjaFamilies, MistralStyleWithWhitespaceControl) {
  const std::string mistral =
      "{{- bos_token }}\n"
      "{%- for message in messages %}\n"
      "    {%- if message.role == 'user' %}\n"
      "        {{- '[INST] ' + message.content + ' [/INST]' }}\n"
      "    {%- elif message.role == 'assistant' %}\n"
      "        {{- message.content + eos_token }}\n"
      "    {%- else %}\n"
      "        {{- raise_exception('Only user and assistant roles are supported!') }}\n"
      "    {%- endif %}\n"
      "{%- endfor %}\n";
  auto t = ModelTemplate::FromJinja(mistral, {"<s>", "</s>", /*strip_leading_bos=*/false});
  ASSERT_TRUE(t.ok()) << t.status();
  const std::vector<ChatMessage> conv = {{"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}};
  auto r = t->Render(conv, true);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, "<s>[INST] Hi [/INST]Hello</s>[INST] Bye [/INST]");
  EXPECT_EQ(t->StopStrings(), std::vector<std::string>{"</s>"});
  auto routed = ModelTemplate::FromJinja(mistral, {"<s>", "</s>", /*strip_leading_bos=*/true});
  ASSERT_TRUE(routed.ok());
  EXPECT_EQ(*routed->Render(conv, true), "[INST] Hi [/INST]Hello</s>[INST] Bye [/INST]");
}

// A ChatML template that relies on trim_blocks / lstrip_blocks instead of "-" markers.
TEST(JinjaFamilies, ChatmlStyleWithTrimAndLstripBlocks) {
  const std::string chatml =
      "{% for message in messages %}\n"
      "  {% if loop.first and message.role != 'system' %}\n"
      "<|im_start|>system\n"
      "You are a helpful assistant.<|im_end|>\n"
      "  {% endif %}\n"
      "<|im_start|>{{ message.role }}\n"
      "{{ message.content }}<|im_end|>\n"
      "{% endfor %}\n"
      "{% if add_generation_prompt %}\n"
      "<|im_start|>assistant\n"
      "{% endif %}\n";
  auto t = ModelTemplate::FromJinja(chatml, {"", "<|im_end|>", false});
  ASSERT_TRUE(t.ok()) << t.status();
  const std::vector<ChatMessage> conv = {{"user", "Hi"}};
  auto r = t->Render(conv, true);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  const std::vector<ChatMessage> with_system = {{"system", "S"}, {"user", "U"}};
  auto s = t->Render(with_system, false);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(*s, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n");
}

// The demo models carry a Llama-2-chat template; its rendering for the router (BOS dropped, the
// tokenizer adds it) follows Meta's format.
TEST(JinjaFamilies, DemoModelLlama2Template) {
  const std::string demo =
      "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set "
      "system_message = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}{% else "
      "%}{% set loop_messages = messages %}{% set system_message = '' %}{% endif %}{% for "
      "message in loop_messages %}{% if loop.index0 == 0 %}{% set content = system_message + "
      "message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if "
      "message['role'] == 'user' %}{{ bos_token + '[INST] ' + content + ' [/INST]' }}{% elif "
      "message['role'] == 'assistant' %}{{ ' ' + content + eos_token }}{% endif %}{% endfor %}";
  auto t = ModelTemplate::FromJinja(demo, {"<s>", "</s>", true});
  ASSERT_TRUE(t.ok()) << t.status();
  const std::vector<ChatMessage> conv = {
      {"system", "S"}, {"user", "U1"}, {"assistant", "A1"}, {"user", "U2"}};
  std::vector<TextRange> ranges;
  auto r = t->Render(conv, true, &ranges);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, "[INST] <<SYS>>\nS\n<</SYS>>\n\nU1 [/INST] A1</s><s>[INST] U2 [/INST]");
  ASSERT_EQ(ranges.size(), 4u);
  EXPECT_EQ(r->substr(ranges[0].offset, ranges[0].length), "S");
  EXPECT_EQ(r->substr(ranges[1].offset, ranges[1].length), "U1");
  EXPECT_EQ(r->substr(ranges[3].offset, ranges[3].length), "U2");
  EXPECT_EQ(t->StopStrings(), std::vector<std::string>{"</s>"});
}

TEST(Select, OverrideMissingAndUnusableTemplates) {
  const TemplateTokens tokens{"<s>", "</s>", true};
  auto o = ModelTemplate::Select("llama3", std::string("{{ x | frobnicate }}"), tokens);
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->builtin(), TemplateId::kLlama3);
  auto none = ModelTemplate::Select("", std::nullopt, tokens);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->builtin(), TemplateId::kChatml);
  EXPECT_THAT(none->Describe(), HasSubstr("no tokenizer.chat_template"));
  auto unknown = ModelTemplate::Select("gemma", std::nullopt, tokens);
  EXPECT_THAT(std::string(unknown.status().message()), HasSubstr("--chat-template"));

  // Outside the subset when parsing (a filter) and only when rendering (a method, a function).
  for (const std::string bad :
       {"{{ messages | frobnicate }}", "{% include 'other.jinja' %}",
        "{% for m in messages %}{{ m.content.zfill(3) }}{% endfor %}",
        "{{ messages[0].content }}{% if messages | length > 1 %}{{ undefined_fn() }}{% endif %}",
        "{{ messages[0].content", "{% if true %}"}) {
    auto s = ModelTemplate::Select("", bad, tokens);
    ASSERT_FALSE(s.ok()) << bad;
    EXPECT_THAT(std::string(s.status().message()), HasSubstr("--chat-template")) << bad;
    EXPECT_THAT(std::string(s.status().message()), HasSubstr("line 1, column")) << bad;
  }
  // A template that refuses a system prompt by itself is usable.
  auto strict = ModelTemplate::Select(
      "",
      std::string("{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no') }}"
                  "{% endif %}{{ m.content }}{% endfor %}"),
      tokens);
  EXPECT_TRUE(strict.ok()) << strict.status();
}

}  // namespace
}  // namespace pipeinfer::chat
