// Byte-level BPE tokenizers (Llama-3 and Qwen vocabularies) against llama.cpp de3ff815: every
// vector of the fixture files in every id mode and every detokenization, the ids llama.cpp
// derives at load time (README §9.2), invalid UTF-8 input, streaming without half characters,
// and speed.
#include <chrono>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "gguf/llama.h"
#include "gguf/reader.h"
#include "testing/fixtures.h"
#include "testing/tokenizer_checks.h"
#include "tokenizer/tokenizer.h"

namespace {

using pipeinfer::gguf::GgufFile;
using pipeinfer::gguf::TokenizerMetadata;
using pipeinfer::gguf::TokenType;
using pipeinfer::testing::FixturePath;
using pipeinfer::tokenizer::IncrementalDetokenizer;
using pipeinfer::tokenizer::Tokenizer;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// --- helpers written independently of the library -----------------------------------------

using pipeinfer::testing::FromHex;
using pipeinfer::testing::Ids;
using pipeinfer::testing::ReadJsonl;
using pipeinfer::testing::ToHex;
using pipeinfer::testing::ValidUtf8;

std::unique_ptr<Tokenizer> Load(const std::string& rel) {
  return pipeinfer::testing::LoadTokenizer(rel);
}

const Tokenizer& Llama3() {
  static const std::unique_ptr<Tokenizer> t = Load("models/llama3-tiny-f16.gguf");
  return *t;
}

const Tokenizer& Qwen() {
  static const std::unique_ptr<Tokenizer> t = Load("models/qwen2-tiny-f16.gguf");
  return *t;
}

// Streams `ids` one at a time; every chunk must be valid UTF-8.
std::string StreamDecode(const Tokenizer& tok, const std::vector<int32_t>& ids,
                         size_t* max_pending = nullptr) {
  IncrementalDetokenizer detok(tok);
  std::string all;
  for (int32_t id : ids) {
    const std::string chunk = detok.Push(id);
    EXPECT_TRUE(ValidUtf8(chunk)) << "chunk " << ToHex(chunk) << " after id " << id;
    if (max_pending) *max_pending = std::max(*max_pending, detok.pending_bytes());
    all += chunk;
  }
  const std::string rest = detok.Flush();
  EXPECT_TRUE(ValidUtf8(rest)) << ToHex(rest);
  return all + rest;
}

// Checks every vector of a fixture file; returns how many lines passed completely.
int CheckVectors(const Tokenizer& tok, const std::string& rel) {
  const auto lines = ReadJsonl(rel);
  EXPECT_EQ(lines.size(), 46u);
  int passed = 0;
  for (const auto& j : lines) {
    const std::string text = FromHex(j["text_utf8_hex"].get<std::string>());
    EXPECT_EQ(text, j["text"].get<std::string>());
    SCOPED_TRACE(rel + " line " + std::to_string(j["index"].get<int>()) + ": " + ToHex(text));
    const int failures_before = ::testing::UnitTest::GetInstance()->failed_test_count();
    bool ok = true;
    struct Mode {
      const char* name;
      bool bos, special;
    };
    // "bos" modes are llama_tokenize(add_special=true): BOS only where the vocabulary says so.
    for (Mode m : {Mode{"bos", tok.add_bos(), false}, Mode{"nobos", false, false},
                   Mode{"bos_special", tok.add_bos(), true}}) {
      SCOPED_TRACE(m.name);
      const std::vector<int32_t> want = Ids(j[std::string("ids_") + m.name]);
      const std::vector<int32_t> got = tok.Encode(text, m.bos, m.special);
      EXPECT_EQ(got, want);
      ok = ok && got == want;
      // Detokenize the reference ids (so a tokenization mismatch does not hide detok errors).
      const std::string want_detok =
          FromHex(j[std::string("detok_") + m.name + "_utf8_hex"].get<std::string>());
      const std::string detok = tok.Decode(want);
      EXPECT_EQ(ToHex(detok), ToHex(want_detok));
      ok = ok && detok == want_detok;
      std::string pieces;
      for (int32_t id : want) pieces += tok.TokenToPiece(id);
      EXPECT_EQ(pieces, detok);
      const std::string streamed = StreamDecode(tok, want);
      EXPECT_EQ(ToHex(streamed), ToHex(want_detok));
      ok = ok && streamed == want_detok;
    }
    // special=true rendering over the special-parsed ids.
    const std::string want_rendered =
        FromHex(j["detok_bos_special_rendered_utf8_hex"].get<std::string>());
    const std::string rendered = tok.Decode(Ids(j["ids_bos_special"]), /*render_special=*/true);
    EXPECT_EQ(ToHex(rendered), ToHex(want_rendered));
    ok = ok && rendered == want_rendered;
    if (ok && ::testing::UnitTest::GetInstance()->failed_test_count() == failures_before) ++passed;
  }
  return passed;
}

// --- fixture vectors ------------------------------------------------------------------------

TEST(BpeVectors, Llama3AllLines) {
  ASSERT_EQ(Llama3().kind(), Tokenizer::Kind::kByteLevelBpe);
  const int passed = CheckVectors(Llama3(), "tokenizer/llama3-vocab.v1.jsonl");
  EXPECT_EQ(passed, 46);
  std::cout << "llama3-vocab vectors passed: " << passed << "/46\n";
}

TEST(BpeVectors, QwenAllLines) {
  ASSERT_EQ(Qwen().kind(), Tokenizer::Kind::kByteLevelBpe);
  const int passed = CheckVectors(Qwen(), "tokenizer/qwen3-vocab.v1.jsonl");
  EXPECT_EQ(passed, 46);
  std::cout << "qwen3-vocab vectors passed: " << passed << "/46\n";
}

TEST(BpeVectors, P1PromptIdsMatchTheLogitsReferences) {
  const std::string p1 = pipeinfer::testing::ReadText(FixturePath("prompts/p1.txt"));
  // README §9.7.
  EXPECT_THAT(Llama3().Encode(p1, Llama3().add_bos(), false),
              ElementsAre(128000, 791, 4062, 14198, 39935, 35308, 927, 279, 16053, 5679, 13));
  EXPECT_THAT(Qwen().Encode(p1, Qwen().add_bos(), false),
              ElementsAre(785, 3974, 13876, 38835, 34208, 916, 279, 15678, 5562, 13));
}

// --- what llama.cpp derives at load time (README §9.2) --------------------------------------

TEST(BpeVocab, Llama3SpecialIds) {
  const Tokenizer& t = Llama3();
  EXPECT_EQ(t.n_vocab(), 128256);
  EXPECT_TRUE(t.add_bos());
  EXPECT_EQ(t.bos_id(), 128000);
  EXPECT_EQ(t.eos_id(), 128001);
  EXPECT_EQ(t.eot_id(), 128009);
  EXPECT_THAT(t.eog_ids(), ElementsAre(128001, 128009));
  EXPECT_TRUE(t.IsEndOfGeneration(128009));
  EXPECT_FALSE(t.IsEndOfGeneration(128000));
  EXPECT_EQ(t.Type(128232), TokenType::kControl);  // <|reserved_special_token_227|>
  EXPECT_EQ(t.Piece(128232), "");
  EXPECT_EQ(t.RenderedPiece(128232), "<|reserved_special_token_227|>");
}

TEST(BpeVocab, QwenSpecialIdsIncludingTheEndOfSentenceQuirk) {
  const Tokenizer& t = Qwen();
  EXPECT_EQ(t.n_vocab(), 151936);
  EXPECT_FALSE(t.add_bos());
  EXPECT_EQ(t.bos_id(), 151643);
  EXPECT_EQ(t.eos_id(), 151645);
  EXPECT_EQ(t.eot_id(), 151645);
  EXPECT_THAT(t.eog_ids(), ElementsAre(128247, 151643, 151645, 151662, 151663, 151664));
  // "</s>" is NORMAL in the file; llama.cpp retypes it CONTROL.
  EXPECT_EQ(t.TokenText(128247), "</s>");
  EXPECT_EQ(t.Type(128247), TokenType::kControl);
  EXPECT_TRUE(t.IsSpecial(128247));
  // "<s>" is left alone.
  EXPECT_EQ(t.TokenText(128245), "<s>");
  EXPECT_EQ(t.Type(128245), TokenType::kNormal);
  EXPECT_EQ(t.Piece(128245), "<s>");
  // USER_DEFINED: their text in both renderings; UNUSED padding: nothing.
  EXPECT_EQ(t.Type(151667), TokenType::kUserDefined);
  EXPECT_EQ(t.Piece(151667), "<think>");
  EXPECT_EQ(t.RenderedPiece(151667), "<think>");
  EXPECT_EQ(t.Type(151900), TokenType::kUnused);
  EXPECT_EQ(t.Piece(151900), "");
  EXPECT_EQ(t.RenderedPiece(151900), "");
}

TEST(BpeVocab, UserDefinedTokensAreMatchedWithoutSpecialParsing) {
  const Tokenizer& t = Qwen();
  // <think> is 151667 and </think> 151668 in both modes (README §10); <|im_start|> only with
  // parse_special.
  for (bool special : {false, true}) {
    const auto ids = t.Encode("<think>x</think>", false, special);
    ASSERT_EQ(ids.size(), 3u) << special;
    EXPECT_EQ(ids[0], 151667);
    EXPECT_EQ(ids[2], 151668);
  }
  EXPECT_THAT(t.Encode("<|im_start|>", false, true), ElementsAre(151644));
  EXPECT_GT(t.Encode("<|im_start|>", false, false).size(), 1u);
  // Literal ranges (chat message content) keep even USER_DEFINED text plain.
  const std::string text = "<think>";
  const std::vector<std::pair<size_t, size_t>> literal = {{0, text.size()}};
  const auto plain = t.Encode(text, false, true, literal);
  EXPECT_GT(plain.size(), 1u);
  EXPECT_THAT(plain, ::testing::Not(::testing::Contains(151667)));
  EXPECT_EQ(t.Decode(plain), text);
}

TEST(BpeVocab, UnsupportedPreTokenizerIsRefusedByName) {
  auto f = GgufFile::Open(FixturePath("models/qwen2-tiny-f16.gguf"));
  ASSERT_TRUE(f.ok());
  auto meta = TokenizerMetadata::FromGguf(**f);
  ASSERT_TRUE(meta.ok()) << meta.status();
  EXPECT_EQ(meta->pre, "qwen2");
  TokenizerMetadata m = *meta;
  m.pre = "gpt-4o";
  auto t = Tokenizer::Create(m);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("'gpt-4o'"));
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("tokenizer.ggml.pre"));
  m.pre.clear();
  t = Tokenizer::Create(m);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("tokenizer.ggml.pre"));
  m = *meta;
  m.merges.clear();
  EXPECT_FALSE(Tokenizer::Create(m).ok());
}

// --- invalid UTF-8 ----------------------------------------------------------------------------

// The text llama.cpp actually tokenizes (unicode_cpts_from_utf8 + re-encoding): a byte that does
// not start a sequence of the length its high bits announce, followed by 10xxxxxx bytes, becomes
// U+FFFD and only that byte is skipped; complete sequences are re-encoded from their value, so
// overlong forms shrink. Written here independently, by bit patterns.
std::string LlamaCppNormalized(const std::string& s) {
  std::string out;
  size_t i = 0;
  auto put = [&out](uint32_t cp) {
    if (cp > 0x10FFFF) cp = 0xFFFD;  // llama.cpp throws here; the library substitutes
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 63));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 63));
      out += static_cast<char>(0x80 | (cp & 63));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 63));
      out += static_cast<char>(0x80 | ((cp >> 6) & 63));
      out += static_cast<char>(0x80 | (cp & 63));
    }
  };
  while (i < s.size()) {
    const unsigned char c = s[i];
    int len = c < 0x80 ? 1 : c < 0xC0 ? 0 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : c < 0xF8 ? 4 : 0;
    bool ok = len > 0 && i + len <= s.size();
    uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; ok && k < len; ++k) {
      ok = (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if (!ok) {
      put(0xFFFD);
      ++i;
    } else {
      put(cp);
      i += len;
    }
  }
  return out;
}

TEST(BpeInvalidUtf8, BadBytesAreTokenizedAsReplacementCharacters) {
  for (const Tokenizer* t : {&Llama3(), &Qwen()}) {
    const std::string fffd = "\xEF\xBF\xBD";
    EXPECT_EQ(t->Encode("a\xFF"
                        "b",
                        false, false),
              t->Encode("a" + fffd + "b", false, false));
    // A truncated 3-byte sequence: each of its bytes becomes one U+FFFD.
    EXPECT_EQ(t->Encode("x\xE4\xB8", false, false), t->Encode("x" + fffd + fffd, false, false));
    // Overlong "A" (C1 81) is read as "A".
    EXPECT_EQ(t->Encode("\xC1\x81", false, false), t->Encode("A", false, false));
    EXPECT_EQ(t->Decode(t->Encode("a\xFF"
                                  "b",
                                  false, false)),
              "a" + fffd + "b");
  }
}

TEST(BpeInvalidUtf8, RandomBytesRoundTripToTheNormalizedText) {
  // Byte-level BPE is lossless on what it tokenizes, so Decode(Encode(x)) is x as normalized.
  std::mt19937 rng(15);
  const std::string alphabet[] = {"a",
                                  "Z",
                                  "7",
                                  " ",
                                  "\n",
                                  "'",
                                  "s",
                                  "\xC3\xA9",
                                  "\xE4\xB8\xAD",
                                  "\xF0\x9F\x98\x80",
                                  "\xFF",
                                  "\x80",
                                  "\xE4",
                                  "\xF0\x9F",
                                  "\xC0\x80",
                                  "\xF5\x80\x80\x80",
                                  "\xED\xA0\x80",
                                  "<|im_end|>",
                                  "<think>"};
  for (const Tokenizer* t : {&Llama3(), &Qwen()}) {
    for (int trial = 0; trial < 300; ++trial) {
      std::string text;
      const int n = std::uniform_int_distribution<int>(0, 24)(rng);
      for (int k = 0; k < n; ++k) {
        text += alphabet[std::uniform_int_distribution<size_t>(0, std::size(alphabet) - 1)(rng)];
      }
      const std::string want = LlamaCppNormalized(text);
      EXPECT_EQ(ToHex(t->Decode(t->Encode(text, false, false))), ToHex(want)) << ToHex(text);
      // With special parsing, control tokens vanish from the special=false rendering but come
      // back with render_special.
      EXPECT_EQ(ToHex(t->Decode(t->Encode(text, false, true), true)), ToHex(want)) << ToHex(text);
    }
  }
}

// --- streaming --------------------------------------------------------------------------------

TEST(BpeStreaming, IdByIdNeverEmitsHalfACharacter) {
  size_t checked = 0, max_pending = 0;
  for (const auto& [tok, rel] : {std::pair{&Llama3(), "tokenizer/llama3-vocab.v1.jsonl"},
                                 std::pair{&Qwen(), "tokenizer/qwen3-vocab.v1.jsonl"}}) {
    for (const auto& j : ReadJsonl(rel)) {
      const std::string text = FromHex(j["text_utf8_hex"].get<std::string>());
      const std::vector<int32_t> ids = tok->Encode(text, tok->add_bos(), true);
      const std::string full = tok->Decode(ids);
      ASSERT_TRUE(ValidUtf8(full));
      EXPECT_EQ(ToHex(StreamDecode(*tok, ids, &max_pending)), ToHex(full));
      ++checked;
    }
  }
  EXPECT_EQ(checked, 92u);
  // The vectors do split characters over tokens (emoji, Hindi, ...), so something was held back.
  EXPECT_GE(max_pending, 1u);
}

TEST(BpeStreaming, EmojiSplitOverByteTokens) {
  const Tokenizer& t = Qwen();
  const std::string text = "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9";  // man ZWJ woman
  const std::vector<int32_t> ids = t.Encode(text, false, false);
  IncrementalDetokenizer detok(t);
  std::string out;
  int partial_tokens = 0;
  for (int32_t id : ids) {
    if (!ValidUtf8(t.Piece(id))) ++partial_tokens;
    const std::string chunk = detok.Push(id);
    EXPECT_TRUE(ValidUtf8(chunk)) << ToHex(chunk);
    out += chunk;
  }
  out += detok.Flush();
  EXPECT_GT(partial_tokens, 0);  // the test exercises split characters
  EXPECT_EQ(out, text);
}

// --- speed ------------------------------------------------------------------------------------

TEST(BpeSpeed, FourThousandTokenPromptIsFast) {
  // Mixed prose, code, numbers and CJK, repeated to about 4k tokens.
  const std::string unit =
      "The quick brown fox jumps over the lazy dog. It's 3.14159 and 2024-12-06, isn't it? "
      "def f(x):\n    return x * 2  # "
      "double\n\t\"\xE4\xBD\xA0\xE5\xA5\xBD\xE4\xB8\x96\xE7\x95\x8C\" "
      "\xCE\xB1\xCE\xB2\xCE\xB3 \xF0\x9F\x98\x80\n";
  for (const Tokenizer* t : {&Llama3(), &Qwen()}) {
    std::string text;
    while (t->Encode(text, false, false).size() < 4096) text += unit;
    size_t n = 0;
    const auto start = std::chrono::steady_clock::now();
    constexpr int kReps = 5;
    for (int r = 0; r < kReps; ++r) n = t->Encode(text, true, true).size();
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
            .count() /
        kReps;
    std::cout << "encoded " << n << " tokens (" << text.size() << " bytes) in " << ms << " ms\n";
    EXPECT_GE(n, 4096u);
    EXPECT_LT(ms, 50.0);
  }
}

}  // namespace
