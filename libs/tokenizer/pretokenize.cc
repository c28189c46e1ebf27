#include "tokenizer/pretokenize.h"

#include <algorithm>
#include <array>

#include "tokenizer/unicode_tables.h"

namespace pipeinfer::tokenizer {
namespace {

bool InRanges(const CodepointRange* ranges, size_t n, uint32_t cp) {
  // First range whose end is >= cp.
  const CodepointRange* end = ranges + n;
  const CodepointRange* it = std::lower_bound(
      ranges, end, cp, [](const CodepointRange& r, uint32_t v) { return r.last < v; });
  return it != end && it->first <= cp;
}

std::array<CodepointClass, 128> BuildAsciiClasses() {
  std::array<CodepointClass, 128> out{};
  for (uint32_t c = 0; c < 128; ++c) {
    if (InRanges(kLetterRanges, kLetterRangesSize, c)) {
      out[c] = CodepointClass::kLetter;
    } else if (InRanges(kNumberRanges, kNumberRangesSize, c)) {
      out[c] = CodepointClass::kNumber;
    } else if (InRanges(kWhitespaceRanges, kWhitespaceRangesSize, c)) {
      out[c] = CodepointClass::kWhitespace;
    } else {
      out[c] = CodepointClass::kOther;
    }
  }
  return out;
}

constexpr uint32_t kReplacement = 0xFFFD;

// The regex engine of both supported pre-tokenizers; `max_digits` is the {1,3} of \p{N}{1,3}.
class WordSplitter {
 public:
  WordSplitter(std::span<const uint32_t> cps, size_t max_digits)
      : cps_(cps), max_digits_(max_digits) {
    cls_.reserve(cps.size());
    for (uint32_t cp : cps) cls_.push_back(ClassifyCodepoint(cp));
  }

  // Length of the word that starts at `p` (< size), by the first alternative that matches.
  size_t Match(size_t p) const {
    const size_t n = cps_.size();
    // (?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])
    if (cps_[p] == '\'' && p + 1 < n) {
      const uint32_t a = Lower(cps_[p + 1]);
      if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
      if (p + 2 < n) {
        const uint32_t b = Lower(cps_[p + 2]);
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
      }
    }
    // [^\r\n\p{L}\p{N}]?\p{L}+
    {
      size_t q = p;
      if (!Is(q, CodepointClass::kLetter) && !IsCrLf(q) && !Is(q, CodepointClass::kNumber) &&
          Is(q + 1, CodepointClass::kLetter)) {
        ++q;  // the optional leading character
      }
      if (Is(q, CodepointClass::kLetter)) {
        while (Is(q, CodepointClass::kLetter)) ++q;
        return q - p;
      }
    }
    // \p{N}{1,max_digits}
    if (Is(p, CodepointClass::kNumber)) {
      size_t q = p;
      while (q - p < max_digits_ && Is(q, CodepointClass::kNumber)) ++q;
      return q - p;
    }
    //  ?[^\s\p{L}\p{N}]+[\r\n]*
    {
      size_t q = cps_[p] == ' ' ? p + 1 : p;
      if (Is(q, CodepointClass::kOther)) {
        while (Is(q, CodepointClass::kOther)) ++q;
        while (IsCrLf(q)) ++q;
        return q - p;
      }
    }
    // Whitespace: \s*[\r\n]+ | \s+(?!\S) | \s+
    size_t run_end = p;
    size_t after_last_crlf = 0;
    while (Is(run_end, CodepointClass::kWhitespace)) {
      if (IsCrLf(run_end)) after_last_crlf = run_end + 1;
      ++run_end;
    }
    if (after_last_crlf > 0) return after_last_crlf - p;  // \s*[\r\n]+ ends at the last CR/LF
    const size_t run = run_end - p;
    if (run > 1 && run_end < n) return run - 1;  // \s+(?!\S): leave one space for the next word
    if (run > 0) return run;                     // \s+
    return 1;  // not reached: every code point is in one of the classes above
  }

 private:
  bool Is(size_t i, CodepointClass c) const { return i < cls_.size() && cls_[i] == c; }
  bool IsCrLf(size_t i) const { return i < cps_.size() && (cps_[i] == '\r' || cps_[i] == '\n'); }
  static uint32_t Lower(uint32_t cp) { return cp >= 'A' && cp <= 'Z' ? cp + ('a' - 'A') : cp; }

  std::span<const uint32_t> cps_;
  size_t max_digits_;
  std::vector<CodepointClass> cls_;
};

}  // namespace

CodepointClass ClassifyCodepoint(uint32_t cp) {
  static const std::array<CodepointClass, 128> kAscii = BuildAsciiClasses();
  if (cp < 128) return kAscii[cp];
  if (InRanges(kLetterRanges, kLetterRangesSize, cp)) return CodepointClass::kLetter;
  if (InRanges(kNumberRanges, kNumberRangesSize, cp)) return CodepointClass::kNumber;
  if (InRanges(kWhitespaceRanges, kWhitespaceRangesSize, cp)) return CodepointClass::kWhitespace;
  return CodepointClass::kOther;
}

std::optional<PreTokenizer> PreTokenizerByName(std::string_view name) {
  // The names llama.cpp maps to these regexes with the same settings.
  if (name == "llama-bpe" || name == "llama3" || name == "llama-v3") return PreTokenizer::kLlama3;
  if (name == "qwen2" || name == "deepseek-r1-qwen") return PreTokenizer::kQwen2;
  return std::nullopt;
}

std::string SupportedPreTokenizerNames() {
  return "llama-bpe, llama3, llama-v3, qwen2, deepseek-r1-qwen";
}

bool IgnoresMerges(PreTokenizer pre) { return pre == PreTokenizer::kLlama3; }

void DecodeUtf8Lenient(std::string_view text, std::vector<uint32_t>* out) {
  out->reserve(out->size() + text.size());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const auto b0 = static_cast<uint8_t>(text[i]);
    size_t len;
    uint32_t cp;
    if (b0 < 0x80) {
      out->push_back(b0);
      ++i;
      continue;
    } else if ((b0 & 0xE0) == 0xC0) {
      len = 2;
      cp = b0 & 0x1F;
    } else if ((b0 & 0xF0) == 0xE0) {
      len = 3;
      cp = b0 & 0x0F;
    } else if ((b0 & 0xF8) == 0xF0) {
      len = 4;
      cp = b0 & 0x07;
    } else {  // a continuation byte or F8..FF
      out->push_back(kReplacement);
      ++i;
      continue;
    }
    bool ok = i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) {
      const auto b = static_cast<uint8_t>(text[i + k]);
      ok = (b & 0xC0) == 0x80;
      cp = (cp << 6) | (b & 0x3F);
    }
    if (!ok) {
      out->push_back(kReplacement);
      ++i;
      continue;
    }
    out->push_back(cp <= 0x10FFFF ? cp : kReplacement);
    i += len;
  }
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

void SplitWords(PreTokenizer pre, std::span<const uint32_t> cps, std::vector<size_t>* lengths) {
  const WordSplitter splitter(cps, pre == PreTokenizer::kLlama3 ? 3 : 1);
  for (size_t p = 0; p < cps.size();) {
    const size_t len = splitter.Match(p);
    lengths->push_back(len);
    p += len;
  }
}

}  // namespace pipeinfer::tokenizer
