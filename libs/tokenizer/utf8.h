// UTF-8 helpers shared by the tokenizer and the incremental detokenizer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace pipeinfer::tokenizer {

// Length of the sequence that a lead byte announces, judged by its high nibble only (the rule
// llama.cpp uses to split text into characters): 0x00-0xBF -> 1 (continuation bytes count as
// one-byte characters), 0xC0-0xDF -> 2, 0xE0-0xEF -> 3, 0xF0-0xFF -> 4.
inline size_t Utf8LeadLength(uint8_t lead) {
  static constexpr uint8_t kLen[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLen[lead >> 4];
}

enum class Utf8Step {
  kValid,       // a complete, well-formed code point of `length` bytes
  kIncomplete,  // the bytes so far are a proper prefix of a well-formed sequence
  kInvalid,     // `length` bytes (the maximal subpart, >= 1) can never start a valid sequence
};

struct Utf8Scan {
  Utf8Step step;
  size_t length;
};

// Classifies the sequence at the start of `s` (non-empty) by the Unicode well-formedness table
// (no overlongs, no surrogates, nothing above U+10FFFF).
Utf8Scan ScanUtf8(std::string_view s);

// True when all of `s` is well-formed UTF-8.
bool IsValidUtf8(std::string_view s);

// Appends the well-formed prefix of `*pending` to `*out` and removes it from `*pending`. Invalid
// sequences become U+FFFD (one per maximal subpart). A trailing incomplete sequence stays in
// `*pending`, unless `final` is set: then it becomes one U+FFFD as well.
void DrainUtf8(std::string* pending, bool final, std::string* out);

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

}  // namespace pipeinfer::tokenizer
