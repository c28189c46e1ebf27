// The built-in chat templates, rendered in plain C++: the prompt text for a conversation in the
// format a model family was fine-tuned on, chosen by name (--chat-template) or detected from a
// template's text. The router renders the GGUF's own `tokenizer.chat_template` with the Jinja
// interpreter instead (model_template.h, jinja.h); these formats are the overrides.
//
// BOS: the rendering NEVER starts with the BOS text ("<s>", "<|begin_of_text|>"). The router
// tokenizes the rendered prompt with add_bos=true and parse_special=true, so the tokenizer adds
// the one leading BOS token. (llama.cpp's built-in llama2/mistral renderings and the HF Jinja
// templates start with "<s>"; that text is deliberately left out here.) Control-token texts inside
// the rendering ("<|im_start|>", "[INST]", "</s>", a BOS "<s>" between llama2 turns, ...) are
// meant to be parsed as special tokens.
// Note for the integrator: with parse_special=true, control-token text inside message contents is
// parsed as control tokens too (prompt injection of turn markers); escape or reject it upstream if
// that matters.
//
// Formats (S = system, U = user, A = assistant content; "\n" is a newline):
//   chatml   <|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n
//            <|im_start|>assistant\nA<|im_end|>\n ... generation prompt: <|im_start|>assistant\n
//   llama3   <|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>
//            <|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|> ... (contents trimmed)
//            generation prompt: <|start_header_id|>assistant<|end_header_id|>\n\n
//   zephyr   <|system|>\nS</s>\n<|user|>\nU</s>\n<|assistant|>\nA</s>\n ...
//            generation prompt: <|assistant|>\n
//   llama2   [INST] <<SYS>>\nS\n<</SYS>>\n\nU1 [/INST] A1 </s><s>[INST] U2 [/INST]
//            (Meta's Llama-2-chat format; contents stripped of surrounding whitespace; the system
//            prompt goes inside the first user turn that follows it)
//   mistral  [INST] S\n\nU1 [/INST]A1</s> [INST] U2 [/INST]
//            (Mistral-7B-Instruct-v0.1's format, which has no system role: the system prompt is
//            prepended to the next user message, separated by a blank line; contents unchanged)
//   plain    S\n\nUser: U1\nAssistant: A1\nUser: U2\nAssistant:
//            (for models without a chat format: a system message is a bare paragraph, each turn
//            is one "User: " / "Assistant: " line; the generation prompt is "Assistant:" with no
//            trailing space, so the model produces the space itself; stop string "\nUser:")
// For llama2 and mistral the generation prompt is implicit (a user turn ends with "[/INST]"), so
// add_generation_prompt changes nothing there.
//
// Roles are exactly "system", "user" and "assistant" (anything else: InvalidArgument). Roles need
// not alternate: every message is rendered in order. Consecutive system messages in llama2/mistral
// are joined with a blank line; there a system message must be followed by a user message.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace pipeinfer::chat {

enum class TemplateId { kChatml, kLlama2, kMistral, kZephyr, kLlama3, kPlain };

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

// A byte range [offset, offset + length) of a rendered conversation.
struct TextRange {
  size_t offset = 0;
  size_t length = 0;
};

// InvalidArgument for an empty conversation, an unknown role, a llama2/mistral system message that
// no user message follows, or an out-of-range TemplateId. With `content_ranges`, also returns where
// message content landed in the text (in order, non-overlapping), so that the caller can tokenize
// special-token text inside messages as plain text (Tokenizer::Encode's literal ranges).
absl::StatusOr<std::string> Render(TemplateId id, std::span<const ChatMessage> messages,
                                   bool add_generation_prompt,
                                   std::vector<TextRange>* content_ranges = nullptr);

// "chatml", "llama2", "mistral", "zephyr", "llama3", "plain" (exact, lowercase); nullopt otherwise.
std::optional<TemplateId> TemplateByName(std::string_view name);
// The name TemplateByName accepts.
std::string_view TemplateName(TemplateId id);

// Recognizes the family of a GGUF `tokenizer.chat_template` Jinja string by distinctive markers,
// checked in this order:
//   "<|im_start|>" -> chatml; "<|start_header_id|>" -> llama3; "<|user|>" -> zephyr;
//   "[INST]" with "<<SYS>>" -> llama2; "[INST]" without it -> mistral.
// nullopt when none matches (also for an empty string).
std::optional<TemplateId> TryDetectTemplate(std::string_view gguf_chat_template);
// TryDetectTemplate, with chatml as the default for unknown or missing templates (llama.cpp's
// fallback too). Use TryDetectTemplate to log the fallback.
TemplateId DetectTemplate(std::string_view gguf_chat_template);

// Text that ends an assistant turn, for the stop-sequence matcher (in addition to the model's EOS
// token): chatml "<|im_end|>"; llama3 "<|eot_id|>"; llama2, mistral, zephyr "</s>"; plain
// "\nUser:".
std::vector<std::string> StopStrings(TemplateId id);

}  // namespace pipeinfer::chat
