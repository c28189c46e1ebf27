// Byte-level BPE (tokenizer.ggml.model = "gpt2") as llama.cpp de3ff815 does it: each pre-token
// word's bytes are written as GPT-2's byte-to-unicode characters, one symbol per byte, and
// adjacent symbols are merged by the rank of their pair in tokenizer.ggml.merges (lowest rank
// first, ties to the leftmost pair) until no ranked pair is left.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "tokenizer/pretokenize.h"

namespace pipeinfer::tokenizer {

class BpeModel {
 public:
  // Token text -> id (the last id for a repeated text), owned by the caller and outliving this.
  using TokenMap = absl::flat_hash_map<std::string, int32_t>;

  // `merges` are "left right" strings in rank order (the first space after the first byte
  // separates them); a repeated pair keeps its first rank, and entries without such a space are
  // ignored, as in llama.cpp.
  static absl::StatusOr<std::unique_ptr<BpeModel>> Create(PreTokenizer pre,
                                                          const std::vector<std::string>& merges,
                                                          const TokenMap* token_to_id,
                                                          int32_t n_vocab);

  // Tokenizes one text fragment (no special tokens) and appends the ids.
  void Encode(std::string_view text, std::vector<int32_t>* out) const;

  // llama.cpp's llama_decode_text: the bytes that a NORMAL token's text stands for. A character
  // outside the byte alphabet becomes "[UNK_BYTE_0x<its UTF-8 in hex><token text>]".
  std::string DecodeTokenText(std::string_view text) const;

  // GPT-2's bytes_to_unicode: the character (UTF-8) that stands for byte b.
  const std::string& ByteChar(uint8_t b) const { return byte_chars_[b]; }
  PreTokenizer pre() const { return pre_; }
  size_t n_merges() const { return ranks_.size(); }

 private:
  struct Merge {
    int32_t rank;
    int32_t result;  // symbol id of the merged text
  };
  struct Symbol {
    int32_t id;  // symbol id (-1: a text that no merge involves and no token has)
    int32_t prev;
    int32_t next;
    uint32_t n;  // bytes of the word it covers; 0 once merged into its left neighbour
  };
  struct Candidate {
    int32_t rank;
    int32_t left;
    int32_t right;
    uint32_t n;      // left.n + right.n when queued (a different sum later means stale)
    int32_t result;  // symbol id of the merged pair
  };
  // Per-call scratch space, so that a word costs no allocations once warm.
  struct Scratch {
    std::vector<uint32_t> cps;
    std::vector<size_t> word_lengths;
    std::string word;
    std::string encoded;
    std::vector<Symbol> symbols;
    std::vector<Candidate> heap;
  };

  BpeModel() = default;
  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  int32_t LookupToken(std::string_view text) const;
  // Symbol ids: a vocab text has its token id; other texts that merges mention get ids from
  // n_vocab_ on.
  int32_t SymbolId(std::string_view text) const;
  int32_t AddSymbol(const std::string& text);
  void EncodeWord(std::string_view word, Scratch* s, std::vector<int32_t>* out) const;
  void PushCandidate(int32_t left, int32_t right, Scratch* s) const;

  PreTokenizer pre_ = PreTokenizer::kLlama3;
  bool ignore_merges_ = false;
  const TokenMap* token_to_id_ = nullptr;
  int32_t n_vocab_ = 0;
  std::array<std::string, 256> byte_chars_;
  std::array<int32_t, 256> byte_symbol_{};               // symbol id of each byte's character
  absl::flat_hash_map<uint32_t, uint8_t> char_to_byte_;  // inverse of byte_chars_
  absl::flat_hash_map<std::string, int32_t> extra_symbols_;
  absl::flat_hash_map<uint64_t, Merge> ranks_;
};

}  // namespace pipeinfer::tokenizer
