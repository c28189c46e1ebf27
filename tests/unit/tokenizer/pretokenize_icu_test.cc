// The native pre-tokenizer regexes against ICU's regex engine as an independent oracle: both
// pre-tokenizer patterns, with \s written as \p{White_Space} (what llama.cpp's \s means), on
// random strings over an alphabet of letters, digits, marks, symbols, CR/LF, other whitespace,
// apostrophes and contraction letters. ICU 72 uses Unicode 15.0, like the generated tables.
// Built only where ICU is found.
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <unicode/regex.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include "tokenizer/pretokenize.h"
#include "tokenizer/unicode_tables.h"

namespace {

using pipeinfer::tokenizer::PreTokenizer;
using pipeinfer::tokenizer::SplitWords;

// The pattern of one pre-tokenizer, compiled once (never freed: the test process ends).
const icu::RegexPattern& Pattern(bool llama3) {
  static const icu::RegexPattern* patterns[2] = {nullptr, nullptr};
  const icu::RegexPattern*& p = patterns[llama3 ? 1 : 0];
  if (p == nullptr) {
    const std::string digits = llama3 ? "\\p{N}{1,3}" : "\\p{N}";
    const std::string pattern =
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|" +
        digits +
        "| ?[^\\p{White_Space}\\p{L}\\p{N}]+[\\r\\n]*|\\p{White_Space}*[\\r\\n]+|"
        "\\p{White_Space}+(?!\\P{White_Space})|\\p{White_Space}+";
    UErrorCode status = U_ZERO_ERROR;
    p = icu::RegexPattern::compile(icu::UnicodeString::fromUTF8(pattern), 0, status);
    EXPECT_TRUE(U_SUCCESS(status)) << u_errorName(status);
  }
  return *p;
}

std::vector<size_t> IcuSplit(const std::u32string& text, bool llama3) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::UnicodeString u = icu::UnicodeString::fromUTF32(
      reinterpret_cast<const UChar32*>(text.data()), static_cast<int32_t>(text.size()));
  icu::RegexMatcher* m = Pattern(llama3).matcher(u, status);
  std::vector<size_t> lengths;
  int32_t prev = 0;  // UTF-16 offset
  auto cps = [&u](int32_t a, int32_t b) { return static_cast<size_t>(u.countChar32(a, b - a)); };
  while (m->find(status)) {
    const int32_t s = m->start(status), e = m->end(status);
    if (s > prev) lengths.push_back(cps(prev, s));  // unmatched text is a word too
    if (e > s) lengths.push_back(cps(s, e));
    prev = e;
  }
  if (prev < u.length()) lengths.push_back(cps(prev, u.length()));
  delete m;
  return lengths;
}

TEST(PreTokenizerVsIcu, RandomStrings) {
  const std::u32string alphabet = {
      U'a',  U'Z',    U's',   U'T',   U'e',    U'l',   U'r',  U'v',     U'm',   U'd',   U'\'',
      U'1',  U'0',    U'9',   U' ',   U' ',    U'\n',  U'\r', U'\t',    U'\v',  U'.',   U',',
      U'!',  U'-',    U'(',   U'_',   U'\0',   0x85,   0xA0,  0x200B,   0x3000, 0x2028, 0xE9,
      0x301, 0x4E2D,  0x3042, 0xD55C, 0x3B1,   0x416,  0x627, 0x928,    0x94D,  0x663,  0x2167,
      0xBD,  0x1F600, 0x200D, 0xFE0F, 0x1F3FB, 0xFFFD, 0x378, 0x10FFFF, 0xE000, 0x2603};
  std::mt19937 rng(1234);
  int words = 0;
  for (bool llama3 : {true, false}) {
    for (int trial = 0; trial < 3000; ++trial) {
      std::u32string text;
      const int n = std::uniform_int_distribution<int>(1, 20)(rng);
      for (int k = 0; k < n; ++k) {
        text += alphabet[std::uniform_int_distribution<size_t>(0, alphabet.size() - 1)(rng)];
      }
      std::vector<uint32_t> cps(text.begin(), text.end());
      std::vector<size_t> got;
      SplitWords(llama3 ? PreTokenizer::kLlama3 : PreTokenizer::kQwen2, cps, &got);
      const std::vector<size_t> want = IcuSplit(text, llama3);
      std::string hex;
      for (char32_t c : text) hex += std::to_string(static_cast<uint32_t>(c)) + " ";
      ASSERT_EQ(got, want) << (llama3 ? "llama3: " : "qwen2: ") << hex;
      words += static_cast<int>(got.size());
    }
  }
  EXPECT_GT(words, 10000);
}

TEST(PreTokenizerVsIcu, TablesAgreeWithIcuCategories) {
  using pipeinfer::tokenizer::ClassifyCodepoint;
  using pipeinfer::tokenizer::CodepointClass;
  ASSERT_STREQ(U_UNICODE_VERSION, "15.0");
  for (UChar32 c = 0; c <= 0x10FFFF; ++c) {
    const int8_t cat = u_charType(c);
    const bool letter = U_GET_GC_MASK(c) & U_GC_L_MASK;
    const bool number = U_GET_GC_MASK(c) & U_GC_N_MASK;
    const bool space = u_hasBinaryProperty(c, UCHAR_WHITE_SPACE);
    const CodepointClass want = letter   ? CodepointClass::kLetter
                                : number ? CodepointClass::kNumber
                                : space  ? CodepointClass::kWhitespace
                                         : CodepointClass::kOther;
    ASSERT_EQ(ClassifyCodepoint(static_cast<uint32_t>(c)), want) << c << " type " << int{cat};
  }
}

}  // namespace
