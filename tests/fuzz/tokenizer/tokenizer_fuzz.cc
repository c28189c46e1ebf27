// libFuzzer target for the tokenizers: random bytes through the SentencePiece vocabulary
// (tests/fixtures/tokenizer/ggml-vocab-llama.gguf) and the byte-level BPE ones (the llama3 and
// qwen2 fixture models), with and without special-token parsing and BOS. Checks: every id is in the
// vocabulary; for valid UTF-8 without special-token parsing, decoding gives the text back
// (SentencePiece: with its " " prefix; texts holding U+2581, which SentencePiece cannot tell from a
// space, are left out).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "gguf/reader.h"
#include "tokenizer/tokenizer.h"

namespace {

using pipeinfer::tokenizer::Tokenizer;

std::unique_ptr<Tokenizer> Load(const char* rel) {
  auto f = pipeinfer::gguf::GgufFile::Open(std::string(PIPEINFER_FIXTURES_DIR) + "/" + rel);
  if (!f.ok()) std::abort();
  auto t = Tokenizer::FromGguf(**f);
  if (!t.ok()) std::abort();
  return std::move(*t);
}

const std::vector<std::unique_ptr<Tokenizer>>& Tokenizers() {
  static auto* v = [] {
    auto* t = new std::vector<std::unique_ptr<Tokenizer>>();
    t->push_back(Load("tokenizer/ggml-vocab-llama.gguf"));
    t->push_back(Load("models/llama3-tiny-f16.gguf"));
    t->push_back(Load("models/qwen2-tiny-f16.gguf"));
    return t;
  }();
  return *v;
}

// Strict UTF-8 (no overlongs, surrogates or code points above U+10FFFF), written out here so that
// the check does not depend on the code under test.
bool ValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<uint8_t>(s[i]);
    size_t n = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      n = 1, cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      n = 2, cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      n = 3, cp = c & 0x07;
    } else {
      return false;
    }
    for (size_t k = 1; k <= n; ++k) {
      if (i + k >= s.size()) return false;
      const auto d = static_cast<uint8_t>(s[i + k]);
      if ((d & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3f);
    }
    if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
      return false;
    }
    i += n + 1;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto& toks = Tokenizers();
  const uint8_t flags = data[0];
  const Tokenizer& tok = *toks[(flags & 3) % toks.size()];
  const bool parse_special = flags & 4;
  const bool add_bos = flags & 8;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  const std::vector<int32_t> ids = tok.Encode(text, add_bos, parse_special);
  for (int32_t id : ids) {
    if (!tok.IsValid(id)) std::abort();
  }
  const std::string back = tok.Decode(ids);
  if (!parse_special && !add_bos && !text.empty() && ValidUtf8(text)) {
    if (tok.kind() == Tokenizer::Kind::kSentencePiece) {
      if (text.find("\xe2\x96\x81") == std::string::npos && back != " " + text) std::abort();
    } else if (back != text) {
      std::abort();
    }
  }
  // Rendered pieces of every id, including special ones.
  (void)tok.Decode(ids, /*render_special=*/true);
  return 0;
}
