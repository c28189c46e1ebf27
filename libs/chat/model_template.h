// The chat template a served model uses: one of the built-in formats (chat_template.h), chosen by
// name with --chat-template, or the GGUF's own `tokenizer.chat_template` rendered by the Jinja
// subset interpreter (jinja.h) exactly as Hugging Face renders it.
//
// BOS: a Jinja template may write `bos_token` itself (Llama-3, Llama-2). The router tokenizes the
// prompt with the vocabulary's add_bos flag, so with `strip_leading_bos` a rendering that starts
// with the BOS text loses that prefix, once (llama.cpp's common_chat_templates_apply does the
// same). BOS/EOS texts elsewhere in the rendering stay and are parsed as special tokens.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "chat/chat_template.h"
#include "chat/jinja.h"

namespace pipeinfer::chat {

struct TemplateTokens {
  std::string bos;  // text of the vocabulary's BOS token ("" when none): `bos_token`
  std::string eos;  // text of its EOS token: `eos_token`
  bool strip_leading_bos = false;
};

class ModelTemplate {
 public:
  ModelTemplate() = default;  // built-in chatml

  static ModelTemplate Builtin(TemplateId id);
  // Parses a Jinja chat template and renders probe conversations (user only; system, user,
  // assistant, user; with and without the generation prompt) to find syntax, filters or methods
  // outside the interpreter's subset now rather than at the first request. InvalidArgument naming
  // --chat-template when it cannot be used; a probe that the template itself refuses with
  // raise_exception (e.g. no system role) is fine, except for the user-only one.
  static absl::StatusOr<ModelTemplate> FromJinja(std::string source, TemplateTokens tokens);
  // The router's choice: `override_name` (a built-in name) when not empty; otherwise the GGUF
  // template through the interpreter; chatml when the GGUF has no template (llama.cpp's default
  // too; Describe() says so). Errors name --chat-template.
  static absl::StatusOr<ModelTemplate> Select(std::string_view override_name,
                                              const std::optional<std::string>& gguf_template,
                                              TemplateTokens tokens);

  // Renders a conversation ending with the assistant's turn to come when
  // `add_generation_prompt`. With `content_ranges`, also where message content landed (see
  // chat::Render). InvalidArgument when the template refuses the conversation.
  absl::StatusOr<std::string> Render(std::span<const ChatMessage> messages,
                                     bool add_generation_prompt,
                                     std::vector<TextRange>* content_ranges = nullptr) const;
  // The same for messages as JSON-like values (a list of dicts that may also carry tool_calls,
  // reasoning_content, ...) and extra template variables (tools, enable_thinking, ...). Built-in
  // formats accept only {role, content} string messages and no extra variables.
  absl::StatusOr<std::string> RenderValues(const jinja::Value& messages, bool add_generation_prompt,
                                           const jinja::Dict& extra,
                                           std::vector<TextRange>* content_ranges = nullptr) const;

  // Texts that end an assistant turn, for the stop-sequence matcher: the built-in format's
  // (chat::StopStrings), or for a Jinja template the known end-of-turn markers it contains
  // (<|im_end|>, <|eot_id|>, <|end|>, <end_of_turn>, <|end_of_turn|>) plus the EOS text when it
  // writes eos_token.
  std::vector<std::string> StopStrings() const;
  // "built-in llama3", "GGUF chat template (Jinja, 348 bytes; llama3 family)", ...
  std::string Describe() const;
  // The built-in format, or nullopt for a Jinja template.
  std::optional<TemplateId> builtin() const { return jinja_ ? std::nullopt : std::optional(id_); }

 private:
  TemplateId id_ = TemplateId::kChatml;
  std::optional<jinja::Template> jinja_;
  TemplateTokens tokens_;
  std::string note_;  // appended to Describe()
};

}  // namespace pipeinfer::chat
