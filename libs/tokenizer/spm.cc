// SentencePiece specifics of Tokenizer (llama.cpp 9656026): vocab-derived special tokens, pieces
// and the score-driven merge.
#include <algorithm>
#include <cstdlib>
#include <queue>
#include <utility>

#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace pipeinfer::tokenizer {
namespace {

constexpr std::string_view kSpaceMarker = "\xE2\x96\x81";   // U+2581 "▁"
constexpr std::string_view kUnknownPiece = "\xE2\x96\x85";  // U+2585 "▅"

std::string ReplaceAll(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (true) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(s.substr(pos, hit - pos));
    out.append(to);
    pos = hit + from.size();
  }
  out.append(s.substr(pos));
  return out;
}

// Byte value of a <0xNN> token: the two characters after "<0x" read as hex (strtol semantics,
// as llama.cpp does).
uint8_t ByteTokenValue(const std::string& text) {
  if (text.size() < 3) return 0;
  const std::string digits = text.substr(3, 2);
  return static_cast<uint8_t>(std::strtol(digits.c_str(), nullptr, 16));
}

// FNV-1a; only used to rule out cut points, so a collision merely forgoes a cut.
constexpr uint64_t kHashSeed = 1469598103934665603ull;
inline uint64_t HashStep(uint64_t h, char c) {
  return (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
}
uint64_t HashBytes(std::string_view s) {
  uint64_t h = kHashSeed;
  for (char c : s) h = HashStep(h, c);
  return h;
}

// Long texts are merged in segments of about this many bytes.
constexpr size_t kSegmentBytes = 1024;
// How far past a segment's nominal end to look for a safe cut before extending the segment.
constexpr size_t kCutSearchBytes = 128;

// One adjacent pair of symbols whose concatenation is a vocab token.
struct Bigram {
  float score;
  int left;
  int right;
  size_t size;  // bytes of the concatenation when it was queued
};

// Priority order: higher score first, then the leftmost pair.
struct BigramLess {
  bool operator()(const Bigram& a, const Bigram& b) const {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  }
};

}  // namespace

void Tokenizer::InitSpm() {
  const size_t n = tokens_.size();
  for (const std::string& text : tokens_)
    max_token_bytes_ = std::max(max_token_bytes_, text.size());
  size_t n_prefixes = 0;
  for (const std::string& text : tokens_) n_prefixes += text.size() > 1 ? text.size() - 1 : 0;
  prefix_hashes_.reserve(n_prefixes);
  for (const std::string& text : tokens_) {
    uint64_t h = kHashSeed;  // HashBytes of each prefix, extended one byte at a time
    for (size_t i = 0; i < text.size(); ++i) {
      h = HashStep(h, text[i]);
      if (i >= 1) prefix_hashes_.insert(h);
    }
  }
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) {
    const char name[] = {'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>'};
    byte_to_id_[b] = Lookup(std::string_view(name, sizeof(name)));
  }

  pieces_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    switch (types_[i]) {
      case gguf::TokenType::kNormal:
        pieces_[i] = ReplaceAll(tokens_[i], kSpaceMarker, " ");
        break;
      case gguf::TokenType::kUnknown:
        pieces_[i] = std::string(kUnknownPiece);
        break;
      case gguf::TokenType::kByte:
        pieces_[i] = std::string(1, static_cast<char>(ByteTokenValue(tokens_[i])));
        break;
      default:  // CONTROL, and (as llama.cpp 9656026) USER_DEFINED, UNUSED, UNDEFINED
        break;
    }
  }
  matched_without_parse_special_.assign(n, false);
  rendered_pieces_ = pieces_;
  for (size_t i = 0; i < n; ++i) {
    if (types_[i] == gguf::TokenType::kControl) rendered_pieces_[i] = tokens_[i];
  }
  BuildSpecialTokens();
}

void Tokenizer::BuildSpecialTokens() {
  // llama.cpp's test: a text of more than one character that cannot be cut (at a byte whose
  // lead-length is 1) into two texts that are both in the vocabulary.
  is_special_.assign(tokens_.size(), false);
  for (const auto& [text, id] : token_to_id_) {
    if (text.size() <= 1) continue;
    bool splittable = false;
    for (size_t i = 1; i < text.size();) {
      const size_t len = Utf8LeadLength(static_cast<uint8_t>(text[i - 1]));
      if (len == 1) {
        const std::string_view v = text;
        if (Lookup(v.substr(0, i)) >= 0 && Lookup(v.substr(i)) >= 0) {
          splittable = true;
          break;
        }
        ++i;
      } else {
        i += len - 1;
      }
    }
    if (splittable) continue;
    size_t chars = 0;
    for (size_t i = 0; i < text.size(); i += Utf8LeadLength(static_cast<uint8_t>(text[i]))) {
      ++chars;
    }
    if (chars > 1) is_special_[id] = true;
  }
  IndexSpecialTokens();
}

void Tokenizer::EncodeSpmFragment(std::string_view text, bool first,
                                  std::vector<int32_t>* out) const {
  // Only the first fragment of the whole text gets the leading space.
  const std::string raw = (first ? std::string(" ") : std::string()) + std::string(text);
  EncodeSpm(ReplaceAll(raw, " ", kSpaceMarker), out);
}

bool Tokenizer::IsSafeCut(std::string_view text, size_t b) const {
  // A merge across b would form a token text[a, e) with a < b < e, whose prefix text[a, b + 1)
  // (at least 2 bytes, at most max_token_bytes_) would be a prefix of a token.
  const size_t lowest = b + 1 > max_token_bytes_ ? b + 1 - max_token_bytes_ : 0;
  for (size_t a = b; a-- > lowest;) {
    if (prefix_hashes_.contains(HashBytes(text.substr(a, b + 1 - a)))) return false;
  }
  return true;
}

void Tokenizer::EncodeSpm(std::string_view text, std::vector<int32_t>* out) const {
  size_t start = 0;  // a character start
  size_t pos = 0;    // walks the character starts, as the merge splits them
  auto next_char = [&](size_t p) {
    return p + std::min(Utf8LeadLength(static_cast<uint8_t>(text[p])), text.size() - p);
  };
  while (text.size() - start > kSegmentBytes + kCutSearchBytes) {
    size_t cut = 0;
    size_t target = start + kSegmentBytes;
    while (cut == 0 && target < text.size()) {
      while (pos < target) pos = next_char(pos);
      for (; pos < text.size() && pos < target + kCutSearchBytes; pos = next_char(pos)) {
        if (IsSafeCut(text, pos)) {
          cut = pos;
          break;
        }
      }
      target += kSegmentBytes;
    }
    if (cut == 0) break;  // no safe cut: the rest is one segment
    EncodeSpmSegment(text.substr(start, cut - start), out);
    start = cut;
  }
  EncodeSpmSegment(text.substr(start), out);
}

void Tokenizer::EncodeSpmSegment(std::string_view text, std::vector<int32_t>* out) const {
  struct Symbol {
    int prev;
    int next;
    size_t start;
    size_t n;  // 0 once merged into its left neighbour
  };
  std::vector<Symbol> syms;
  syms.reserve(text.size());
  for (size_t offs = 0; offs < text.size();) {
    const size_t n = std::min(Utf8LeadLength(static_cast<uint8_t>(text[offs])), text.size() - offs);
    const int index = static_cast<int>(syms.size());
    syms.push_back({index - 1, offs + n == text.size() ? -1 : index + 1, offs, n});
    offs += n;
  }
  if (syms.empty()) return;

  std::priority_queue<Bigram, std::vector<Bigram>, BigramLess> queue;
  auto try_add = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const size_t size = syms[left].n + syms[right].n;
    if (size > max_token_bytes_) return;
    const int32_t id = Lookup(text.substr(syms[left].start, size));
    if (id < 0) return;
    queue.push({scores_[id], left, right, size});
  };
  for (size_t i = 1; i < syms.size(); ++i) try_add(static_cast<int>(i) - 1, static_cast<int>(i));

  while (!queue.empty()) {
    const Bigram b = queue.top();
    queue.pop();
    Symbol& left = syms[b.left];
    Symbol& right = syms[b.right];
    // Stale: one side was merged away or grew since the pair was queued.
    if (left.n == 0 || right.n == 0 || left.n + right.n != b.size) continue;
    left.n += right.n;
    right.n = 0;
    left.next = right.next;
    if (right.next >= 0) syms[right.next].prev = b.left;
    try_add(left.prev, b.left);
    try_add(b.left, left.next);
  }

  for (int i = 0; i != -1; i = syms[i].next) {
    const std::string_view s = text.substr(syms[i].start, syms[i].n);
    const int32_t id = Lookup(s);
    if (id >= 0) {
      out->push_back(id);
      continue;
    }
    for (char c : s) {  // byte fallback
      const int32_t byte_id = byte_to_id_[static_cast<uint8_t>(c)];
      if (byte_id >= 0) {
        out->push_back(byte_id);
      } else if (unk_id_ >= 0) {
        out->push_back(unk_id_);
      }
    }
  }
}

}  // namespace pipeinfer::tokenizer
