// The model the router serves: tokenizer, chat template, id and context length, loaded from the
// target GGUF (the draft service may serve a shorter context; router.cc adjusts n_ctx).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "chat/chat_template.h"
#include "chat/model_template.h"
#include "tokenizer/tokenizer.h"

namespace pipeinfer::router {

struct ServedModel {
  std::unique_ptr<tokenizer::Tokenizer> tok;
  chat::ModelTemplate chat_template;  // the GGUF's (Jinja) or a built-in one
  std::string id;                     // the model id clients name
  uint32_t n_ctx = 0;                 // the GGUF's training context (0 when absent)
  int64_t created = 0;                // unix seconds, for /v1/models
};

// Loads the tokenizer and template of `path`. `template_name` (a built-in name) overrides the
// GGUF's template; without it the GGUF's tokenizer.chat_template is rendered by the Jinja
// interpreter, and one it cannot render is an error naming --chat-template (chatml when the file
// has no template). `model_id` empty = the file name without ".gguf".
absl::StatusOr<ServedModel> LoadServedModel(const std::string& path,
                                            const std::string& template_name,
                                            const std::string& model_id);

// The longest prompt text, in bytes, that can possibly fit in `n_ctx` tokens: n_ctx times the
// longest token text of the vocabulary (control tokens such as chat markers included). The
// tokenizer turns every byte of text into part of some token (a vocabulary piece, a byte-fallback
// token or <unk>), and one token covers at most its own text's length in input bytes (a "▁" is
// three bytes in the vocabulary but stands for one input space), so a longer text needs more
// than n_ctx tokens and can be refused before tokenizing it. 0 = no bound can be derived (a
// vocabulary without byte fallback and without <unk> may drop bytes).
size_t PromptBytesBound(const tokenizer::Tokenizer& tok, uint32_t n_ctx);

}  // namespace pipeinfer::router
