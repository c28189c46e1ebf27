#include "cli/chat_template_commands.h"

#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "chat/model_template.h"
#include "gguf/llama.h"
#include "gguf/reader.h"

namespace pipeinfer::cli {
namespace {

struct ChatTemplateArgs {
  std::string model;
  std::string messages;
  bool add_generation_prompt = false;
  std::string chat_template;
  std::optional<bool> enable_thinking;
};

int Fail(const std::string& msg) {
  std::cerr << "error: " << msg << "\n";
  return 1;
}

std::optional<std::string> ReadAll(const std::string& path) {
  if (path == "-") {
    return std::string((std::istreambuf_iterator<char>(std::cin)),
                       std::istreambuf_iterator<char>());
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

int RunChatTemplate(const ChatTemplateArgs& a) {
  auto file = gguf::GgufFile::Open(a.model);
  if (!file.ok()) return Fail(std::string(file.status().message()));
  auto meta = gguf::TokenizerMetadata::FromGguf(**file);
  if (!meta.ok()) return Fail(a.model + ": " + std::string(meta.status().message()));
  const auto text_of = [&](int32_t id) {
    return id >= 0 && static_cast<size_t>(id) < meta->tokens.size() ? meta->tokens[id]
                                                                    : std::string();
  };
  chat::TemplateTokens tokens{text_of(meta->bos_id), text_of(meta->eos_id),
                              /*strip_leading_bos=*/false};
  auto tmpl = chat::ModelTemplate::Select(a.chat_template, meta->chat_template, tokens);
  if (!tmpl.ok()) return Fail(a.model + ": " + std::string(tmpl.status().message()));

  const std::optional<std::string> json = ReadAll(a.messages);
  if (!json) return Fail("cannot read " + a.messages);
  auto doc = chat::jinja::ParseJson(*json);
  if (!doc.ok()) return Fail(a.messages + ": " + std::string(doc.status().message()));
  chat::jinja::Value messages = *doc;
  chat::jinja::Dict extra;
  if (doc->kind == chat::jinja::Kind::kDict) {
    const chat::jinja::Value* m = doc->Find("messages");
    if (!m) return Fail(a.messages + ": the object has no \"messages\"");
    messages = *m;
    for (const auto& [k, v] : *doc->dict) {
      if (k != "messages") extra.emplace_back(k, v);
    }
  }
  if (messages.kind != chat::jinja::Kind::kList) {
    return Fail(a.messages + ": expected a list of messages or an object with \"messages\"");
  }
  if (a.enable_thinking) {
    extra.emplace_back("enable_thinking", chat::jinja::Value::Bool(*a.enable_thinking));
  }
  auto text = tmpl->RenderValues(messages, a.add_generation_prompt, extra);
  if (!text.ok()) return Fail(std::string(text.status().message()));
  std::cout << *text << std::flush;
  return 0;
}

}  // namespace

void RegisterChatTemplateCommands(CLI::App& app) {
  auto args = std::make_shared<ChatTemplateArgs>();
  CLI::App* cmd = app.add_subcommand("chat-template",
                                     "Print a conversation rendered with a model's chat template");
  cmd->add_option("--model,-m", args->model, "GGUF model whose tokenizer.chat_template is used")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--messages", args->messages,
                  "JSON file: a list of messages, or an object with \"messages\" and other "
                  "template variables (\"-\" = stdin)")
      ->required();
  cmd->add_flag("--add-generation-prompt", args->add_generation_prompt,
                "End with the header of the assistant turn to come");
  cmd->add_option("--chat-template", args->chat_template,
                  "Use a built-in format instead (chatml, llama2, mistral, zephyr, llama3, plain)");
  cmd->add_option("--enable-thinking", args->enable_thinking,
                  "Set the template variable enable_thinking (Qwen3)");
  cmd->final_callback([args] {
    const int rc = RunChatTemplate(*args);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace pipeinfer::cli
