// The pre-tokenization step of byte-level BPE (llama.cpp's unicode_regex_split): the text is read
// as code points, cut into words by the vocabulary's regex, and each word is tokenized on its own.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace pipeinfer::tokenizer {

// The supported `tokenizer.ggml.pre` regexes.
enum class PreTokenizer {
  // llama-bpe (Llama-3):
  // (?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
  //  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  kLlama3,
  // qwen2: the same with \p{N} instead of \p{N}{1,3}.
  kQwen2,
};

// Maps a `tokenizer.ggml.pre` value to its pre-tokenizer (std::nullopt when unsupported).
std::optional<PreTokenizer> PreTokenizerByName(std::string_view name);
// The accepted names, for error messages.
std::string SupportedPreTokenizerNames();
// Whether the vocabulary emits a word that is itself a token whole, without merging
// (llama.cpp's ignore_merges; true for the Llama-3 family).
bool IgnoresMerges(PreTokenizer pre);

// Decodes UTF-8 as llama.cpp's unicode_cpts_from_utf8 does: the lead byte's high bits give the
// length, the continuation bytes must be 10xxxxxx (overlong forms and surrogates are accepted as
// the value they spell), and a byte that does not start such a sequence becomes U+FFFD and is
// skipped alone. Values above U+10FFFF also become U+FFFD (llama.cpp throws on those).
void DecodeUtf8Lenient(std::string_view text, std::vector<uint32_t>* out);

// Appends the UTF-8 encoding of a code point (<= U+10FFFF, surrogates included).
void AppendUtf8(uint32_t cp, std::string* out);

// Cuts `cps` into words by the regex of `pre`; appends each word's length in code points.
// The lengths add up to cps.size() and are all positive.
void SplitWords(PreTokenizer pre, std::span<const uint32_t> cps, std::vector<size_t>* lengths);

}  // namespace pipeinfer::tokenizer
