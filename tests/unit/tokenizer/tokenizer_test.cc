// Tokenizer against llama.cpp 9656026: every vector of the fixture files (ids with/without BOS,
// with special parsing, detokenized bytes), the incremental detokenizer, and the algorithm's
// corner cases on small hand-made vocabularies.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "gguf/llama.h"
#include "gguf/reader.h"
#include "testing/fixtures.h"
#include "testing/time_scale.h"
#include "testing/tokenizer_checks.h"

namespace {

using pipeinfer::gguf::GgufFile;
using pipeinfer::gguf::TokenizerMetadata;
using pipeinfer::gguf::TokenType;
using pipeinfer::testing::FixturePath;
using pipeinfer::tokenizer::IncrementalDetokenizer;
using pipeinfer::tokenizer::Tokenizer;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;

// --- helpers written independently of the library -----------------------------------------

using pipeinfer::testing::FromHex;
using pipeinfer::testing::Ids;
using pipeinfer::testing::ReadJsonl;
using pipeinfer::testing::ToHex;
using pipeinfer::testing::ValidUtf8;

std::unique_ptr<Tokenizer> Load(const std::string& rel) {
  return pipeinfer::testing::LoadTokenizer(rel);
}

const Tokenizer& LlamaVocab() {
  static const std::unique_ptr<Tokenizer> t = Load("tokenizer/ggml-vocab-llama.gguf");
  return *t;
}

const Tokenizer& ByteVocab() {
  static const std::unique_ptr<Tokenizer> t = Load("models/tiny-f32.gguf");
  return *t;
}

// Streams `ids` through an IncrementalDetokenizer; checks each chunk is valid UTF-8.
std::string StreamDecode(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  IncrementalDetokenizer detok(tok);
  std::string all;
  for (int32_t id : ids) {
    const std::string chunk = detok.Push(id);
    EXPECT_TRUE(ValidUtf8(chunk)) << "chunk " << ToHex(chunk) << " after id " << id;
    all += chunk;
  }
  const std::string rest = detok.Flush();
  EXPECT_TRUE(ValidUtf8(rest)) << ToHex(rest);
  return all + rest;
}

// Checks every vector of a fixture file; returns how many lines passed completely.
int CheckVectors(const Tokenizer& tok, const std::string& rel) {
  const auto lines = ReadJsonl(rel);
  EXPECT_EQ(lines.size(), 42u);
  int passed = 0;
  for (const auto& j : lines) {
    const std::string text = FromHex(j["text_utf8_hex"].get<std::string>());
    SCOPED_TRACE(rel + " line " + std::to_string(j["index"].get<int>()) + ": " + ToHex(text));
    struct Mode {
      const char* name;
      bool bos, special;
    };
    bool ok = true;
    for (Mode m :
         {Mode{"bos", true, false}, Mode{"nobos", false, false}, Mode{"bos_special", true, true}}) {
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
      // Streaming gives the same bytes, in valid chunks.
      const std::string streamed = StreamDecode(tok, want);
      EXPECT_EQ(ToHex(streamed), ToHex(want_detok));
      ok = ok && streamed == want_detok && !::testing::Test::HasFailure();
    }
    if (ok) ++passed;
  }
  return passed;
}

// --- fixture vectors ------------------------------------------------------------------------

TEST(TokenizerVectors, LlamaVocabAllLines) {
  const int passed = CheckVectors(LlamaVocab(), "tokenizer/llama-vocab.v1.jsonl");
  EXPECT_EQ(passed, 42);
  std::cout << "llama-vocab vectors passed: " << passed << "/42\n";
}

TEST(TokenizerVectors, ByteVocabAllLines) {
  const int passed = CheckVectors(ByteVocab(), "tokenizer/byte-vocab.v1.jsonl");
  EXPECT_EQ(passed, 42);
  std::cout << "byte-vocab vectors passed: " << passed << "/42\n";
}

TEST(TokenizerVectors, ByteVocabP1Prompt) {
  const Tokenizer& tok = ByteVocab();
  const std::string p1 = pipeinfer::testing::ReadText(FixturePath("prompts/p1.txt"));
  ASSERT_EQ(p1, "The quick brown fox jumps over the lazy dog.");
  const std::vector<int32_t> ids = tok.Encode(p1, tok.add_bos(), false);
  const std::vector<int32_t> want = {
      1,   229, 153, 132, 87,  107, 104, 229, 153, 132, 116, 120, 108, 102, 110, 229,
      153, 132, 101, 117, 114, 122, 113, 229, 153, 132, 105, 114, 123, 229, 153, 132,
      109, 120, 112, 115, 118, 229, 153, 132, 114, 121, 104, 117, 229, 153, 132, 119,
      107, 104, 229, 153, 132, 111, 100, 125, 124, 229, 153, 132, 103, 114, 106, 49};
  EXPECT_EQ(ids.size(), 64u);
  EXPECT_EQ(ids, want);
  // Same as the reference prompt ids used by the logits fixtures.
  std::istringstream ref(
      pipeinfer::testing::ReadText(FixturePath("refs/tiny-f32.p1.prompt_ids.txt")));
  std::vector<int32_t> ref_ids;
  for (int32_t v; ref >> v;) ref_ids.push_back(v);
  EXPECT_EQ(ids, ref_ids);
  // Round trip keeps the "▁" (no NORMAL tokens in this vocab).
  EXPECT_EQ(tok.Decode(ids),
            "\xE2\x96\x81The\xE2\x96\x81quick\xE2\x96\x81"
            "brown\xE2\x96\x81"
            "fox\xE2\x96\x81jumps\xE2\x96\x81over\xE2\x96\x81the\xE2\x96\x81lazy"
            "\xE2\x96\x81"
            "dog.");
}

// --- vocab properties -----------------------------------------------------------------------

TEST(Tokenizer, LlamaVocabBasics) {
  const Tokenizer& tok = LlamaVocab();
  EXPECT_EQ(tok.n_vocab(), 32000);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.unk_id(), 0);
  EXPECT_TRUE(tok.add_bos());
  EXPECT_TRUE(tok.IsControl(1));
  EXPECT_TRUE(tok.IsControl(2));
  EXPECT_FALSE(tok.IsControl(0));
  EXPECT_FALSE(tok.IsControl(15043));
  EXPECT_TRUE(tok.IsEndOfGeneration(2));
  EXPECT_FALSE(tok.IsEndOfGeneration(1));
  EXPECT_FALSE(tok.IsEndOfGeneration(-1));
  EXPECT_EQ(tok.TokenText(15043), "\xE2\x96\x81Hello");
  EXPECT_EQ(tok.TokenText(-5), "");
  EXPECT_EQ(tok.TokenText(32000), "");
  EXPECT_EQ(tok.FindToken("\xE2\x96\x81Hello"), 15043);
  EXPECT_EQ(tok.FindToken("<0x0A>"), 13);
  EXPECT_EQ(tok.FindToken("no such token at all"), std::nullopt);
  // Pieces.
  EXPECT_EQ(tok.TokenToPiece(15043), " Hello");
  EXPECT_EQ(tok.TokenToPiece(0), "\xE2\x96\x85");
  EXPECT_EQ(tok.TokenToPiece(1), "");
  EXPECT_EQ(tok.TokenToPiece(2), "");
  EXPECT_EQ(tok.TokenToPiece(13), "\n");
  EXPECT_EQ(tok.TokenToPiece(3), std::string(1, '\0'));
  EXPECT_EQ(tok.TokenToPiece(258), "\xFF");
  EXPECT_EQ(tok.TokenToPiece(30004), "\r");
  EXPECT_EQ(tok.TokenToPiece(-1), "");
  EXPECT_EQ(tok.TokenToPiece(32000), "");
}

TEST(Tokenizer, SpecialTokensAreTheUnsplittableOnes) {
  // llama.cpp 9656026 logs "special tokens definition check successful ( 259/32000 )" for this
  // vocab: the unsplittable multi-character texts are exactly the 259 non-NORMAL tokens.
  const Tokenizer& tok = LlamaVocab();
  int special = 0;
  for (int32_t id = 0; id < tok.n_vocab(); ++id) {
    if (tok.IsSpecial(id)) {
      ++special;
      EXPECT_NE(tok.Type(id), TokenType::kNormal) << id << " " << tok.TokenText(id);
    }
  }
  EXPECT_EQ(special, 259);
  EXPECT_TRUE(tok.IsSpecial(0));
  EXPECT_TRUE(tok.IsSpecial(1));
  EXPECT_TRUE(tok.IsSpecial(2));
  EXPECT_TRUE(tok.IsSpecial(13));
  EXPECT_FALSE(tok.IsSpecial(15043));
  // Byte-token texts are therefore parsed in special mode, like in llama.cpp.
  EXPECT_THAT(tok.Encode("<0x41>", false, true), ElementsAre(68));
  EXPECT_THAT(tok.Encode("<0x41>", false, false),
              ElementsAre(529, 29900, 29916, 29946, 29896, 29958));
  // Text after a special token gets no "▁" prefix; the first fragment does.
  EXPECT_THAT(tok.Encode("Hello</s>Hello", true, true), ElementsAre(1, 15043, 2, 10994));
  EXPECT_THAT(tok.Encode("</s></s>", false, true), ElementsAre(2, 2));
  EXPECT_THAT(tok.Encode("a<s", false, true), ElementsAreArray(tok.Encode("a<s", false, false)));
}

// Special-token text inside a literal range is plain text; outside it is still a control token.
TEST(Tokenizer, LiteralRangesKeepSpecialTextPlain) {
  const Tokenizer& t = LlamaVocab();
  const std::string text = "<s>Hello </s> world</s>";
  const auto special = t.Encode(text, false, true);
  const auto plain = t.Encode(text, false, false);
  ASSERT_NE(special, plain);
  using R = std::pair<size_t, size_t>;
  EXPECT_EQ(t.Encode(text, false, true, std::vector<R>{{0, text.size()}}), plain);
  EXPECT_EQ(t.Encode(text, false, true, std::vector<R>{}), special);
  // Only the middle "</s>" (bytes 9..12) is content: the first and last markers stay special.
  const auto mixed = t.Encode(text, false, true, std::vector<R>{{6, 8}});
  ASSERT_GE(mixed.size(), 3u);
  EXPECT_EQ(mixed.front(), 1);  // <s>
  EXPECT_EQ(mixed.back(), 2);   // </s>
  EXPECT_EQ(std::count(mixed.begin(), mixed.end(), 2), 1);
  EXPECT_GT(mixed.size(), special.size());
}

TEST(Tokenizer, ByteVocabSpecials) {
  const Tokenizer& tok = ByteVocab();
  EXPECT_EQ(tok.n_vocab(), 259);
  EXPECT_THAT(tok.Encode("<s>x</s>", false, true), ElementsAre(1, 'x' + 3, 2));
  EXPECT_THAT(tok.Encode("<unk>", true, true), ElementsAre(1, 0));
  EXPECT_EQ(tok.Decode(std::vector<int32_t>{0, 1, 2, 'h' + 3, 'i' + 3}), "\xE2\x96\x85hi");
}

// --- incremental detokenizer ----------------------------------------------------------------

TEST(IncrementalDetokenizer, EmojiFromByteTokensAppearsWhenComplete) {
  const Tokenizer& tok = LlamaVocab();
  const std::vector<int32_t> ids = tok.Encode("\xF0\x9F\x91\x8B!", false, false);  // 👋!
  ASSERT_THAT(ids, ElementsAre(29871, 243, 162, 148, 142, 29991));
  IncrementalDetokenizer d(tok);
  EXPECT_EQ(d.Push(29871), " ");
  EXPECT_EQ(d.Push(243), "");
  EXPECT_EQ(d.pending_bytes(), 1u);
  EXPECT_EQ(d.Push(162), "");
  EXPECT_EQ(d.Push(148), "");
  EXPECT_EQ(d.pending_bytes(), 3u);
  EXPECT_EQ(d.Push(142), "\xF0\x9F\x91\x8B");
  EXPECT_EQ(d.pending_bytes(), 0u);
  EXPECT_EQ(d.Push(29991), "!");
  EXPECT_EQ(d.Flush(), "");
}

TEST(IncrementalDetokenizer, ControlTokensEmitNothingAndDoNotBreakSequences) {
  const Tokenizer& tok = LlamaVocab();
  IncrementalDetokenizer d(tok);
  EXPECT_EQ(d.Push(1), "");
  EXPECT_EQ(d.Push(0xE2 + 3), "");
  EXPECT_EQ(d.Push(2), "");  // control: "" and the pending lead byte stays
  EXPECT_EQ(d.Push(0x82 + 3), "");
  EXPECT_EQ(d.Push(0xAC + 3), "\xE2\x82\xAC");  // €
}

TEST(IncrementalDetokenizer, FlushOnTruncatedSequence) {
  const Tokenizer& tok = LlamaVocab();
  IncrementalDetokenizer d(tok);
  EXPECT_EQ(d.Push(15043), " Hello");
  EXPECT_EQ(d.Push(0xF0 + 3), "");
  EXPECT_EQ(d.Push(0x9F + 3), "");
  EXPECT_EQ(d.Flush(), "\xEF\xBF\xBD");  // one U+FFFD for the incomplete sequence
  EXPECT_EQ(d.pending_bytes(), 0u);
  EXPECT_EQ(d.Flush(), "");
  // Usable again after Flush.
  EXPECT_EQ(d.Push(0xC3 + 3), "");
  EXPECT_EQ(d.Push(0xA9 + 3), "\xC3\xA9");
}

TEST(IncrementalDetokenizer, InvalidBytesBecomeReplacementCharacters) {
  const Tokenizer& tok = LlamaVocab();
  IncrementalDetokenizer d(tok);
  EXPECT_EQ(d.Push(0xFF + 3), "\xEF\xBF\xBD");  // never valid: emitted at once
  EXPECT_EQ(d.Push(0x80 + 3), "\xEF\xBF\xBD");  // stray continuation byte
  EXPECT_EQ(d.Push(0xE2 + 3), "");
  // A lead byte followed by a non-continuation: U+FFFD, then the new text.
  EXPECT_EQ(d.Push(15043), "\xEF\xBF\xBD Hello");
  EXPECT_EQ(d.Push(0xED + 3), "");
  EXPECT_EQ(d.Push(0xA0 + 3), "\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate range: 2 maximal subparts
  EXPECT_EQ(d.Flush(), "");
}

TEST(IncrementalDetokenizer, EveryPrefixOfEveryVectorStreamsValidUtf8) {
  const Tokenizer& tok = LlamaVocab();
  for (const auto& j : ReadJsonl("tokenizer/llama-vocab.v1.jsonl")) {
    const std::vector<int32_t> ids = Ids(j["ids_nobos"]);
    const std::string full = tok.Decode(ids);
    // Each emitted prefix is a prefix of the full text (no lookahead needed, nothing reordered).
    IncrementalDetokenizer d(tok);
    std::string so_far;
    for (int32_t id : ids) {
      so_far += d.Push(id);
      ASSERT_EQ(full.compare(0, so_far.size(), so_far), 0);
      ASSERT_LE(d.pending_bytes(), 3u);
    }
    so_far += d.Flush();
    EXPECT_EQ(so_far, full);
  }
}

// --- the algorithm on small vocabularies ----------------------------------------------------

TokenizerMetadata SmallVocab(const std::vector<std::pair<std::string, float>>& normal) {
  TokenizerMetadata m;
  m.model = "llama";
  m.tokens = {"<unk>", "<s>", "</s>"};
  m.scores = {0, 0, 0};
  m.token_types = {TokenType::kUnknown, TokenType::kControl, TokenType::kControl};
  for (const auto& [text, score] : normal) {
    m.tokens.push_back(text);
    m.scores.push_back(score);
    m.token_types.push_back(TokenType::kNormal);
  }
  m.bos_id = 1;
  m.eos_id = 2;
  m.unk_id = 0;
  return m;
}

TEST(TokenizerAlgorithm, HighestScoreFirstThenLeftmost) {
  // ids: 3 "▁", 4 "a", 5 "b", 6 "ab", 7 "ba"
  {
    auto t = Tokenizer::Create(
        SmallVocab({{"\xE2\x96\x81", 0}, {"a", 0}, {"b", 0}, {"ab", -1}, {"ba", -1}}));
    ASSERT_TRUE(t.ok()) << t.status();
    // Equal scores: the leftmost pair "ab" wins.
    EXPECT_THAT((*t)->Encode("aba", false, false), ElementsAre(3, 6, 4));
  }
  {
    auto t = Tokenizer::Create(
        SmallVocab({{"\xE2\x96\x81", 0}, {"a", 0}, {"b", 0}, {"ab", -2}, {"ba", -1}}));
    ASSERT_TRUE(t.ok());
    EXPECT_THAT((*t)->Encode("aba", false, false), ElementsAre(3, 4, 7));
  }
}

TEST(TokenizerAlgorithm, MissingByteTokensFallBackToUnk) {
  auto t = Tokenizer::Create(SmallVocab({{"\xE2\x96\x81", 0}, {"a", 0}}));
  ASSERT_TRUE(t.ok());
  EXPECT_THAT((*t)->Encode("a\xC3\xA9", true, false), ElementsAre(1, 3, 4, 0, 0));
}

TEST(TokenizerAlgorithm, UserDefinedAndUnusedPiecesAreEmptyAsIn9656026) {
  TokenizerMetadata m = SmallVocab({{"x\xE2\x96\x81y", 0}, {"<user>", 0}, {"<unused>", 0}});
  m.token_types[4] = TokenType::kUserDefined;
  m.token_types[5] = TokenType::kUnused;
  auto t = Tokenizer::Create(m);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ((*t)->TokenToPiece(3), "x y");
  EXPECT_EQ((*t)->TokenToPiece(4), "");
  EXPECT_EQ((*t)->TokenToPiece(5), "");
}

TEST(TokenizerAlgorithm, DuplicateTextMapsToLastId) {
  auto t = Tokenizer::Create(SmallVocab({{"\xE2\x96\x81", 0}, {"q", 0}, {"q", 0}}));
  ASSERT_TRUE(t.ok());
  EXPECT_EQ((*t)->FindToken("q"), 5);
  EXPECT_THAT((*t)->Encode("q", false, false), ElementsAre(3, 5));
}

TEST(TokenizerAlgorithm, CreateRejectsBadMetadata) {
  TokenizerMetadata m = SmallVocab({});
  m.model = "gpt2";
  EXPECT_FALSE(Tokenizer::Create(m).ok());
  m = SmallVocab({});
  m.scores.pop_back();
  EXPECT_FALSE(Tokenizer::Create(m).ok());
  m = SmallVocab({});
  m.token_types.push_back(TokenType::kNormal);
  EXPECT_FALSE(Tokenizer::Create(m).ok());
  m = SmallVocab({});
  m.bos_id = 3;
  EXPECT_FALSE(Tokenizer::Create(m).ok());
  m = SmallVocab({});
  m.tokens.clear();
  m.scores.clear();
  m.token_types.clear();
  EXPECT_FALSE(Tokenizer::Create(m).ok());
}

TEST(TokenizerAlgorithm, InvalidUtf8InputDoesNotCrash) {
  const Tokenizer& tok = LlamaVocab();
  // A truncated lead byte at the end, a lone continuation byte, and a lead byte swallowing an
  // ASCII byte (llama.cpp splits characters by the lead byte only).
  for (const std::string& s :
       {std::string("abc\xE2"), std::string("\x80x"), std::string("\xC3y")}) {
    const auto ids = tok.Encode(s, false, false);
    EXPECT_FALSE(ids.empty());
    for (int32_t id : ids) EXPECT_TRUE(tok.IsValid(id));
  }
}

// Straightforward SentencePiece merge (scan for the best adjacent pair after every merge), the
// reference for long texts, which the library merges in independent segments.
std::vector<int32_t> NaiveSpm(const Tokenizer& tok, const std::string& text) {
  std::string s;
  for (char c : " " + text) s += c == ' ' ? std::string("\xE2\x96\x81") : std::string(1, c);
  std::vector<std::string> syms;
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = s[i];
    const size_t n = std::min<size_t>(c < 0xC0 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4, s.size() - i);
    syms.push_back(s.substr(i, n));
    i += n;
  }
  constexpr float kNone = -1e30f;
  auto pair_score = [&](size_t i) {
    const auto id = tok.FindToken(syms[i] + syms[i + 1]);
    return id ? tok.Score(*id) : kNone;
  };
  std::vector<float> score(syms.size() > 1 ? syms.size() - 1 : 0);
  for (size_t i = 0; i < score.size(); ++i) score[i] = pair_score(i);
  while (true) {
    size_t best = score.size();
    for (size_t i = 0; i < score.size(); ++i) {
      if (score[i] != kNone && (best == score.size() || score[i] > score[best])) best = i;
    }
    if (best == score.size()) break;
    syms[best] += syms[best + 1];
    syms.erase(syms.begin() + best + 1);
    score.erase(score.begin() + best);
    if (best < score.size()) score[best] = pair_score(best);
    if (best > 0) score[best - 1] = pair_score(best - 1);
  }
  std::vector<int32_t> ids;
  for (const std::string& sym : syms) {
    if (auto id = tok.FindToken(sym)) {
      ids.push_back(*id);
    } else {
      for (unsigned char c : sym) ids.push_back(c + 3);  // <0xNN> is id NN + 3 in this vocab
    }
  }
  return ids;
}

TEST(TokenizerAlgorithm, LongTextsMatchTheWholeTextMerge) {
  const Tokenizer& tok = LlamaVocab();
  const std::vector<std::string> parts = {"the ",
                                          "quick",
                                          " brown ",
                                          "fox",
                                          "  ",
                                          "\n",
                                          "aaaaaaaaaaa",
                                          "0123",
                                          "\xE4\xBD\xA0\xE5\xA5\xBD",  // 你好
                                          "\xE4\xB8\x96\xE7\x95\x8C",  // 世界
                                          "\xF0\x9F\x91\x8B",          // 👋
                                          "caf\xC3\xA9",
                                          "ing",
                                          "tion",
                                          "..",
                                          "\t",
                                          "Hello",
                                          "\xE2\x96\x81",
                                          "www",
                                          "=====",
                                          "<s>",
                                          "ab"};
  uint32_t state = 12345;
  auto next = [&] {
    state = state * 1664525u + 1013904223u;
    return state >> 8;
  };
  for (int iter = 0; iter < 12; ++iter) {
    std::string text;
    const size_t target = 2000 + next() % 5000;
    while (text.size() < target) {
      // Long runs of one part now and then, so that some cuts are hard to find.
      const std::string& p = parts[next() % parts.size()];
      const int reps = next() % 8 == 0 ? 50 + next() % 400 : 1;
      for (int r = 0; r < reps; ++r) text += p;
    }
    SCOPED_TRACE("iteration " + std::to_string(iter) + ", " + std::to_string(text.size()) +
                 " bytes");
    EXPECT_EQ(tok.Encode(text, false, false), NaiveSpm(tok, text));
  }
}

// --- speed ----------------------------------------------------------------------------------

TEST(TokenizerSpeed, LongTextsEncodeQuickly) {
  const Tokenizer& tok = LlamaVocab();
  std::string words;
  const char* kWords[] = {"the ", "quick ", "brown ", "fox ", "<s> ", "jumps\n", "naïve ", "42 "};
  for (int i = 0; words.size() < (1 << 20); ++i) words += kWords[(i * 7 + i / 3) % 8];
  const std::string as(1 << 20, 'a');
  for (const std::string* text : std::vector<const std::string*>{&words, &as}) {
    for (bool special : {false, true}) {
      const auto t0 = std::chrono::steady_clock::now();
      const auto ids = tok.Encode(*text, true, special);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      EXPECT_LT(s, 5.0 * pipeinfer::testing::TimeScale()) << "1 MiB took " << s << " s";
      EXPECT_GT(ids.size(), 1000u);
      // Round trip: decoding gives " " + text (nothing here is lost to byte fallback or unk).
      if (!special) {
        EXPECT_EQ(tok.Decode(ids), " " + *text);
      }
    }
  }
}

}  // namespace
