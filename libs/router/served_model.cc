#include "router/served_model.h"

#include <chrono>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "gguf/llama.h"
#include "gguf/reader.h"
#include "router/error.h"

namespace pipeinfer::router {

absl::StatusOr<ServedModel> LoadServedModel(const std::string& path,
                                            const std::string& template_name,
                                            const std::string& model_id) {
  auto file = gguf::GgufFile::Open(path);
  if (!file.ok()) return file.status();
  auto meta = gguf::TokenizerMetadata::FromGguf(**file);
  if (!meta.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", S(meta.status().message())));
  }
  auto tok = tokenizer::Tokenizer::FromGguf(**file);
  if (!tok.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", S(tok.status().message())));
  }
  ServedModel m;
  m.tok = std::move(*tok);
  auto hp = gguf::LlamaHParams::FromGguf(**file);
  if (hp.ok()) m.n_ctx = hp->n_ctx_train;
  // bos_token / eos_token are the texts of the vocabulary's BOS/EOS ids (what llama.cpp passes);
  // the tokenizer adds the BOS token itself, so a rendering's leading BOS text is dropped.
  chat::TemplateTokens tokens;
  const auto text_of = [&](int32_t id) {
    return id >= 0 && static_cast<size_t>(id) < meta->tokens.size() ? meta->tokens[id]
                                                                    : std::string();
  };
  tokens.bos = text_of(meta->bos_id);
  tokens.eos = text_of(meta->eos_id);
  tokens.strip_leading_bos = m.tok->add_bos();
  auto tmpl = chat::ModelTemplate::Select(template_name, meta->chat_template, std::move(tokens));
  if (!tmpl.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", S(tmpl.status().message())));
  }
  m.chat_template = std::move(*tmpl);
  m.id = model_id;
  if (m.id.empty()) {
    std::string base = path.substr(path.find_last_of('/') + 1);
    if (base.size() > 5 && base.compare(base.size() - 5, 5, ".gguf") == 0) {
      base.resize(base.size() - 5);
    }
    m.id = base;
  }
  m.created = std::chrono::duration_cast<std::chrono::seconds>(
                  std::chrono::system_clock::now().time_since_epoch())
                  .count();
  return m;
}

size_t PromptBytesBound(const tokenizer::Tokenizer& tok, uint32_t n_ctx) {
  // Byte-level BPE covers every byte; a token's stored text (bytes mapped to printable
  // characters) is at least as long as the bytes it stands for, so the bound below holds.
  if (tok.unk_id() < 0 && tok.kind() != tokenizer::Tokenizer::Kind::kByteLevelBpe) {
    for (int b = 0; b < 256; ++b) {
      char text[8];
      std::snprintf(text, sizeof(text), "<0x%02X>", b);
      if (!tok.FindToken(text)) return 0;  // this byte would be dropped: no bound
    }
  }
  size_t longest = 1;
  for (int32_t id = 0; id < tok.n_vocab(); ++id) {
    longest = std::max(longest, tok.TokenText(id).size());
  }
  return static_cast<size_t>(n_ctx) * longest;
}

}  // namespace pipeinfer::router
