// Chat templates: exact renderings of a system + two-turn conversation for every template (the
// expected strings are written out by hand from each format's public specification), detection
// from representative GGUF Jinja snippets, names, stop strings and errors.
#include "chat/chat_template.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace pipeinfer::chat {
namespace {

const std::vector<ChatMessage>& Conversation() {
  static const std::vector<ChatMessage> kMessages = {
      {"system", "You are helpful."},
      {"user", "Hi!"},
      {"assistant", "Hello! How can I help?"},
      {"user", "Tell me a joke."},
  };
  return kMessages;
}

std::string MustRender(TemplateId id, const std::vector<ChatMessage>& m, bool gen = true) {
  absl::StatusOr<std::string> r = Render(id, m, gen);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : std::string();
}

TEST(Render, Chatml) {
  EXPECT_EQ(MustRender(TemplateId::kChatml, Conversation()),
            "<|im_start|>system\nYou are helpful.<|im_end|>\n"
            "<|im_start|>user\nHi!<|im_end|>\n"
            "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
            "<|im_start|>user\nTell me a joke.<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(MustRender(TemplateId::kChatml, Conversation(), false),
            "<|im_start|>system\nYou are helpful.<|im_end|>\n"
            "<|im_start|>user\nHi!<|im_end|>\n"
            "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
            "<|im_start|>user\nTell me a joke.<|im_end|>\n");
}

TEST(Render, Llama3) {
  EXPECT_EQ(MustRender(TemplateId::kLlama3, Conversation()),
            "<|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nTell me a joke.<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  // Contents are trimmed; no generation prompt when not asked.
  EXPECT_EQ(MustRender(TemplateId::kLlama3, {{"user", "  Hi!\n"}}, false),
            "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>");
}

TEST(Render, Zephyr) {
  EXPECT_EQ(MustRender(TemplateId::kZephyr, Conversation()),
            "<|system|>\nYou are helpful.</s>\n"
            "<|user|>\nHi!</s>\n"
            "<|assistant|>\nHello! How can I help?</s>\n"
            "<|user|>\nTell me a joke.</s>\n"
            "<|assistant|>\n");
}

TEST(Render, Llama2) {
  const std::string expected =
      "[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\nHi! [/INST]"
      " Hello! How can I help? </s>"
      "<s>[INST] Tell me a joke. [/INST]";
  EXPECT_EQ(MustRender(TemplateId::kLlama2, Conversation()), expected);
  // The generation prompt is implicit.
  EXPECT_EQ(MustRender(TemplateId::kLlama2, Conversation(), false), expected);
  // No leading BOS text; contents stripped; no system block without a system message.
  EXPECT_EQ(MustRender(TemplateId::kLlama2, {{"user", " Hi! \n"}}), "[INST] Hi! [/INST]");
  // Two system messages are joined with a blank line into one block.
  EXPECT_EQ(MustRender(TemplateId::kLlama2, {{"system", "A."}, {"system", "B."}, {"user", "Q"}}),
            "[INST] <<SYS>>\nA.\n\nB.\n<</SYS>>\n\nQ [/INST]");
}

TEST(Render, Mistral) {
  EXPECT_EQ(MustRender(TemplateId::kMistral, Conversation()),
            "[INST] You are helpful.\n\nHi! [/INST]"
            "Hello! How can I help?</s> "
            "[INST] Tell me a joke. [/INST]");
  EXPECT_EQ(MustRender(TemplateId::kMistral, {{"user", "Hi!"}}), "[INST] Hi! [/INST]");
}

TEST(Render, Plain) {
  EXPECT_EQ(MustRender(TemplateId::kPlain, Conversation()),
            "You are helpful.\n\n"
            "User: Hi!\n"
            "Assistant: Hello! How can I help?\n"
            "User: Tell me a joke.\n"
            "Assistant:");
  EXPECT_EQ(MustRender(TemplateId::kPlain, {{"user", "Hi!"}}, false), "User: Hi!\n");
}

TEST(Render, ChatmlKeepsContentVerbatim) {
  EXPECT_EQ(MustRender(TemplateId::kChatml, {{"user", " a\n"}}, false),
            "<|im_start|>user\n a\n<|im_end|>\n");
}

// The content ranges point at each message's text as rendered (trimmed where the template trims),
// in order, and nothing else.
TEST(Render, ContentRangesCoverExactlyTheMessages) {
  for (TemplateId id : {TemplateId::kChatml, TemplateId::kLlama3, TemplateId::kZephyr,
                        TemplateId::kPlain, TemplateId::kLlama2, TemplateId::kMistral}) {
    SCOPED_TRACE(std::string(TemplateName(id)));
    std::vector<ChatMessage> m = {{"system", "Be brief. <|im_end|>"},
                                  {"user", " <s>[INST] hi </s> "},
                                  {"assistant", "ok<|eot_id|>"},
                                  {"user", "again"}};
    std::vector<TextRange> ranges;
    auto text = Render(id, m, true, &ranges);
    ASSERT_TRUE(text.ok()) << text.status();
    ASSERT_EQ(ranges.size(), 4u);
    const bool trims = id == TemplateId::kLlama3 || id == TemplateId::kLlama2;
    for (size_t i = 0; i < ranges.size(); ++i) {
      std::string want = m[i].content;
      if (trims) {
        want.erase(0, want.find_first_not_of(' '));
        want.erase(want.find_last_not_of(' ') + 1);
      }
      ASSERT_LE(ranges[i].offset + ranges[i].length, text->size());
      EXPECT_EQ(text->substr(ranges[i].offset, ranges[i].length), want) << i;
      if (i > 0) {
        EXPECT_GE(ranges[i].offset, ranges[i - 1].offset + ranges[i - 1].length);
      }
    }
    // Without the out-parameter the text is the same.
    EXPECT_EQ(*text, *Render(id, m, true));
  }
}

TEST(Render, Errors) {
  for (TemplateId id : {TemplateId::kChatml, TemplateId::kLlama2, TemplateId::kMistral,
                        TemplateId::kZephyr, TemplateId::kLlama3, TemplateId::kPlain}) {
    absl::StatusOr<std::string> r = Render(id, {}, true);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(r.status().message(), "messages must not be empty");

    const std::vector<ChatMessage> bad = {{"user", "x"}, {"tool", "y"}};
    r = Render(id, bad, true);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(r.status().message(),
              "messages[1]: unsupported role \"tool\" (expected system, user or assistant)");

    const std::vector<ChatMessage> upper = {{"User", "x"}};
    EXPECT_EQ(Render(id, upper, true).status().code(), absl::StatusCode::kInvalidArgument);
  }
  const std::vector<ChatMessage> trailing = {{"user", "x"}, {"system", "late"}};
  absl::StatusOr<std::string> r = Render(TemplateId::kLlama2, trailing, true);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(),
            "llama2 template: a system message must be followed by a user message");
  r = Render(TemplateId::kMistral, trailing, true);
  EXPECT_EQ(r.status().message(),
            "mistral template: a system message must be followed by a user message");
  EXPECT_TRUE(Render(TemplateId::kChatml, trailing, true).ok());

  EXPECT_EQ(Render(static_cast<TemplateId>(99), Conversation(), true).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(TemplateByName, NamesRoundTrip) {
  const std::vector<std::pair<std::string, TemplateId>> names = {
      {"chatml", TemplateId::kChatml},   {"llama2", TemplateId::kLlama2},
      {"mistral", TemplateId::kMistral}, {"zephyr", TemplateId::kZephyr},
      {"llama3", TemplateId::kLlama3},   {"plain", TemplateId::kPlain}};
  for (const auto& [name, id] : names) {
    ASSERT_EQ(TemplateByName(name), id) << name;
    EXPECT_EQ(TemplateName(id), name);
  }
  EXPECT_EQ(TemplateByName("ChatML"), std::nullopt);
  EXPECT_EQ(TemplateByName("gemma"), std::nullopt);
  EXPECT_EQ(TemplateByName(""), std::nullopt);
}

// Short representative tokenizer.chat_template snippets, written for this test in the style of the
// model families' published templates.
TEST(DetectTemplate, RecognizesFamilies) {
  const std::string chatml =
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
      "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
      "{{ '<|im_start|>assistant\\n' }}{% endif %}";
  const std::string llama3 =
      "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
      "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
      "message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = "
      "bos_token + content %}{% endif %}{{ content }}{% endfor %}";
  const std::string zephyr =
      "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\\n' + "
      "message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ "
      "'<|system|>\\n' + message['content'] + eos_token }}\n{% endif %}\n{% endfor %}";
  const std::string llama2 =
      "{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] %}"
      "{% endif %}{% for message in loop_messages %}{% if loop.index0 == 0 and system_message %}"
      "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + "
      "message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + "
      "'[INST] ' + content.strip() + ' [/INST]' }}{% endif %}{% endfor %}";
  const std::string mistral =
      "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' "
      "+ message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ "
      "message['content'] + eos_token }}{% else %}{{ raise_exception('Only user and assistant "
      "roles are supported!') }}{% endif %}{% endfor %}";
  EXPECT_EQ(TryDetectTemplate(chatml), TemplateId::kChatml);
  EXPECT_EQ(TryDetectTemplate(llama3), TemplateId::kLlama3);
  EXPECT_EQ(TryDetectTemplate(zephyr), TemplateId::kZephyr);
  EXPECT_EQ(TryDetectTemplate(llama2), TemplateId::kLlama2);
  EXPECT_EQ(TryDetectTemplate(mistral), TemplateId::kMistral);
  EXPECT_EQ(DetectTemplate(llama2), TemplateId::kLlama2);

  const std::string gemma =
      "{% for message in messages %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | "
      "trim + '<end_of_turn>\\n' }}{% endfor %}";
  EXPECT_EQ(TryDetectTemplate(gemma), std::nullopt);
  EXPECT_EQ(DetectTemplate(gemma), TemplateId::kChatml);
  EXPECT_EQ(TryDetectTemplate(""), std::nullopt);
  EXPECT_EQ(DetectTemplate(""), TemplateId::kChatml);
}

TEST(StopStrings, PerTemplate) {
  EXPECT_EQ(StopStrings(TemplateId::kChatml), std::vector<std::string>{"<|im_end|>"});
  EXPECT_EQ(StopStrings(TemplateId::kLlama3), std::vector<std::string>{"<|eot_id|>"});
  EXPECT_EQ(StopStrings(TemplateId::kLlama2), std::vector<std::string>{"</s>"});
  EXPECT_EQ(StopStrings(TemplateId::kMistral), std::vector<std::string>{"</s>"});
  EXPECT_EQ(StopStrings(TemplateId::kZephyr), std::vector<std::string>{"</s>"});
  EXPECT_EQ(StopStrings(TemplateId::kPlain), std::vector<std::string>{"\nUser:"});
}

}  // namespace
}  // namespace pipeinfer::chat
