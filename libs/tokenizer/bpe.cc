#include "tokenizer/bpe.h"

#include <algorithm>
#include <cstdio>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace pipeinfer::tokenizer {
namespace {

// Heap order: the candidate with the lowest rank, then the leftmost one, is on top.
struct CandidateAfter {
  template <typename C>
  bool operator()(const C& a, const C& b) const {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  }
};

// GPT-2's bytes_to_unicode: printable Latin-1 bytes ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF)
// stand for themselves; the other 68 bytes, in increasing order, get U+0100, U+0101, ...
std::array<uint32_t, 256> ByteCodepoints() {
  std::array<uint32_t, 256> cp{};
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    cp[b] = printable ? b : next++;
  }
  return cp;
}

}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::Create(PreTokenizer pre,
                                                           const std::vector<std::string>& merges,
                                                           const TokenMap* token_to_id,
                                                           int32_t n_vocab) {
  if (merges.empty()) {
    return absl::InvalidArgumentError("byte-level BPE vocabulary has no tokenizer.ggml.merges");
  }
  if (merges.size() > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError("tokenizer.ggml.merges is too large");
  }
  auto m = std::unique_ptr<BpeModel>(new BpeModel());
  m->pre_ = pre;
  m->ignore_merges_ = IgnoresMerges(pre);
  m->token_to_id_ = token_to_id;
  m->n_vocab_ = n_vocab;
  const std::array<uint32_t, 256> cps = ByteCodepoints();
  for (int b = 0; b < 256; ++b) {
    AppendUtf8(cps[b], &m->byte_chars_[b]);
    m->char_to_byte_[cps[b]] = static_cast<uint8_t>(b);
  }
  m->ranks_.reserve(merges.size());
  std::string joined;
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string& line = merges[i];
    const size_t space = line.find(' ', 1);
    if (space == std::string::npos) continue;
    const std::string left = line.substr(0, space);
    const std::string right = line.substr(space + 1);
    joined = left;
    joined += right;
    const int32_t a = m->AddSymbol(left);
    const int32_t b = m->AddSymbol(right);
    const int32_t result = m->AddSymbol(joined);
    m->ranks_.try_emplace(PairKey(a, b), Merge{static_cast<int32_t>(i), result});  // first wins
  }
  for (int b = 0; b < 256; ++b) m->byte_symbol_[b] = m->SymbolId(m->byte_chars_[b]);
  return m;
}

int32_t BpeModel::LookupToken(std::string_view text) const {
  const auto it = token_to_id_->find(absl::string_view(text.data(), text.size()));
  return it == token_to_id_->end() ? -1 : it->second;
}

int32_t BpeModel::SymbolId(std::string_view text) const {
  const int32_t id = LookupToken(text);
  if (id >= 0) return id;
  const auto it = extra_symbols_.find(absl::string_view(text.data(), text.size()));
  return it == extra_symbols_.end() ? -1 : it->second;
}

int32_t BpeModel::AddSymbol(const std::string& text) {
  const int32_t id = LookupToken(text);
  if (id >= 0) return id;
  const int32_t next = n_vocab_ + static_cast<int32_t>(extra_symbols_.size());
  return extra_symbols_.try_emplace(text, next).first->second;
}

void BpeModel::Encode(std::string_view text, std::vector<int32_t>* out) const {
  Scratch s;
  DecodeUtf8Lenient(text, &s.cps);
  SplitWords(pre_, s.cps, &s.word_lengths);
  size_t p = 0;
  for (size_t len : s.word_lengths) {
    // The word as llama.cpp re-encodes it (invalid input bytes are U+FFFD by now).
    s.word.clear();
    for (size_t i = p; i < p + len; ++i) AppendUtf8(s.cps[i], &s.word);
    p += len;
    EncodeWord(s.word, &s, out);
  }
}

void BpeModel::PushCandidate(int32_t left, int32_t right, Scratch* s) const {
  if (left < 0 || right < 0) return;
  const Symbol& l = s->symbols[left];
  const Symbol& r = s->symbols[right];
  if (l.id < 0 || r.id < 0) return;
  const auto it = ranks_.find(PairKey(l.id, r.id));
  if (it == ranks_.end()) return;
  s->heap.push_back({it->second.rank, left, right, l.n + r.n, it->second.result});
  std::push_heap(s->heap.begin(), s->heap.end(), CandidateAfter());
}

void BpeModel::EncodeWord(std::string_view word, Scratch* s, std::vector<int32_t>* out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    s->encoded.clear();
    for (char c : word) s->encoded += byte_chars_[static_cast<uint8_t>(c)];
    const int32_t whole = LookupToken(s->encoded);
    if (whole >= 0) {
      out->push_back(whole);
      return;
    }
  }
  const auto n = static_cast<int32_t>(word.size());
  s->symbols.clear();
  for (int32_t i = 0; i < n; ++i) {
    s->symbols.push_back(
        {byte_symbol_[static_cast<uint8_t>(word[i])], i - 1, i + 1 == n ? -1 : i + 1, 1});
  }
  s->heap.clear();
  for (int32_t i = 1; i < n; ++i) PushCandidate(i - 1, i, s);

  while (!s->heap.empty()) {
    std::pop_heap(s->heap.begin(), s->heap.end(), CandidateAfter());
    const Candidate c = s->heap.back();
    s->heap.pop_back();
    Symbol& left = s->symbols[c.left];
    Symbol& right = s->symbols[c.right];
    if (left.n == 0 || right.n == 0 || left.n + right.n != c.n) continue;  // stale
    left.id = c.result;
    left.n += right.n;
    right.n = 0;
    left.next = right.next;
    if (right.next >= 0) s->symbols[right.next].prev = c.left;
    PushCandidate(left.prev, c.left, s);
    PushCandidate(c.left, left.next, s);
  }

  size_t offset = 0;
  for (int32_t i = 0; i != -1; i = s->symbols[i].next) {
    const Symbol& sym = s->symbols[i];
    if (sym.id >= 0 && sym.id < n_vocab_) {
      out->push_back(sym.id);
    } else {
      // Not a token: as llama.cpp, each byte of the symbol's text that is a one-byte token.
      for (size_t k = offset; k < offset + sym.n; ++k) {
        for (char c : byte_chars_[static_cast<uint8_t>(word[k])]) {
          const int32_t id = LookupToken(std::string_view(&c, 1));
          if (id >= 0) out->push_back(id);
        }
      }
    }
    offset += sym.n;
  }
}

std::string BpeModel::DecodeTokenText(std::string_view text) const {
  std::vector<uint32_t> cps;
  DecodeUtf8Lenient(text, &cps);
  std::string out;
  for (uint32_t cp : cps) {
    const auto it = char_to_byte_.find(cp);
    if (it != char_to_byte_.end()) {
      out.push_back(static_cast<char>(it->second));
      continue;
    }
    std::string utf8;
    AppendUtf8(cp, &utf8);
    out += "[UNK_BYTE_0x";
    for (unsigned char c : utf8) {
      char hex[3];
      std::snprintf(hex, sizeof(hex), "%02x", c);
      out += hex;
    }
    out.append(text);
    out += "]";
  }
  return out;
}

}  // namespace pipeinfer::tokenizer
