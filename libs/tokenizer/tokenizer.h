// SentencePiece ("llama") tokenizer built from GGUF metadata, reproducing llama.cpp 9656026
// (llama_tokenize / llama_token_to_piece) exactly, and a UTF-8 safe incremental detokenizer.
//
// Encoding, as llama.cpp 9656026 does it:
//  1. Optionally BOS. Empty text stops here.
//  2. With parse_special, the text is cut into fragments around the texts of "special" tokens
//     (see IsSpecial()); each occurrence becomes its token id.
//  3. Each remaining text fragment is tokenized on its own: the *first* fragment of the text gets
//     a " " prefix (so text that follows a special token gets none), spaces become U+2581 "▁",
//     the fragment is split into characters (by the lead byte's length), and adjacent symbols
//     are merged greedily by the vocab score of their concatenation (highest score first, ties
//     to the leftmost pair). Final symbols that are vocab tokens map to their id; the others
//     are emitted byte by byte as <0xNN> tokens (unk when such a token is missing).
// Encoding is O(n log n) in the text length.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "gguf/llama.h"
#include "gguf/reader.h"

namespace pipeinfer::tokenizer {

class Tokenizer {
 public:
  // Fails for tokenizer models other than "llama", an empty vocabulary, or inconsistent arrays.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Create(const gguf::TokenizerMetadata& meta);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const gguf::GgufFile& f);

  // llama_tokenize(text, add_bos, special=parse_special).
  std::vector<int32_t> Encode(std::string_view text, bool add_bos, bool parse_special) const;
  // The same, except that special-token text overlapping one of `literal` (byte ranges as
  // {offset, length} pairs, e.g. chat message content) is tokenized as plain text.
  std::vector<int32_t> Encode(std::string_view text, bool add_bos, bool parse_special,
                              std::span<const std::pair<size_t, size_t>> literal) const;

  // llama_token_to_piece: NORMAL -> text with "▁" turned into " "; BYTE -> the raw byte;
  // UNKNOWN -> "▅" (U+2585); CONTROL, USER_DEFINED, UNUSED, UNDEFINED and out-of-range ids -> "".
  std::string TokenToPiece(int32_t id) const;
  // Same, without a copy; valid while the tokenizer lives.
  const std::string& Piece(int32_t id) const;
  // Concatenation of the pieces (raw bytes; not necessarily valid UTF-8).
  std::string Decode(std::span<const int32_t> ids) const;

  int32_t n_vocab() const { return static_cast<int32_t>(tokens_.size()); }
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  int32_t unk_id() const { return unk_id_; }
  bool add_bos() const { return add_bos_; }

  bool IsValid(int32_t id) const { return id >= 0 && id < n_vocab(); }
  gguf::TokenType Type(int32_t id) const;
  bool IsControl(int32_t id) const { return Type(id) == gguf::TokenType::kControl; }
  bool IsByte(int32_t id) const { return Type(id) == gguf::TokenType::kByte; }
  // The end-of-generation token (EOS).
  bool IsEndOfGeneration(int32_t id) const { return IsValid(id) && id == eos_id_; }
  // Whether parse_special matches this token's text. As in llama.cpp 9656026 this is decided
  // from the vocabulary, not the token type: a token is special when its text has more than one
  // character and cannot be split into two vocab tokens. For the LLaMA vocab (and the byte
  // vocab) that is exactly the non-NORMAL tokens: <unk>, <s>, </s> and the <0xNN> byte tokens.
  bool IsSpecial(int32_t id) const { return IsValid(id) && is_special_[id]; }

  // Token text as stored in the vocabulary ("" for out-of-range ids).
  const std::string& TokenText(int32_t id) const;
  float Score(int32_t id) const { return IsValid(id) ? scores_[id] : 0.0f; }
  // The id of a vocab text (the last id when the vocabulary repeats a text, as llama.cpp).
  std::optional<int32_t> FindToken(std::string_view text) const;

 private:
  // Looked up with absl::string_view (Debian's Abseil does not alias std::string_view).
  using TokenMap = absl::flat_hash_map<std::string, int32_t>;

  struct Fragment {
    int32_t token;  // >= 0: a special token; -1: text [offset, offset + length)
    size_t offset;
    size_t length;
  };

  Tokenizer() = default;
  void BuildSpecialTokens();
  int32_t Lookup(std::string_view text) const;  // -1 when absent
  std::vector<Fragment> PartitionSpecial(std::string_view text,
                                         std::span<const std::pair<size_t, size_t>> literal) const;
  // SentencePiece merge + resegmentation of already escaped text. Long texts are cut where no
  // vocab token can span the cut (so the result is the same as for the whole text), which keeps
  // the merge queue small.
  void EncodeSpm(std::string_view text, std::vector<int32_t>* out) const;
  void EncodeSpmSegment(std::string_view text, std::vector<int32_t>* out) const;
  // Whether no vocab token can contain text[b - 1] and text[b] (b a character start) together.
  bool IsSafeCut(std::string_view text, size_t b) const;

  std::vector<std::string> tokens_;
  std::vector<float> scores_;
  std::vector<gguf::TokenType> types_;
  std::vector<std::string> pieces_;
  std::vector<bool> is_special_;
  TokenMap token_to_id_;
  std::array<int32_t, 256> byte_to_id_{};  // <0xNN> token per byte, -1 when absent
  size_t max_token_bytes_ = 0;
  // Hashes of every prefix (of 2 or more bytes) of every token text.
  absl::flat_hash_set<uint64_t> prefix_hashes_;
  // Special tokens in matching order (longest first, then lowest id), and what speeds up
  // finding which of them occur in a text.
  std::vector<int32_t> special_order_;
  std::vector<size_t> special_lengths_;  // distinct text lengths
  std::array<bool, 256> special_first_byte_{};
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  int32_t unk_id_ = -1;
  bool add_bos_ = true;
};

// Streams the text of a token sequence one id at a time. Each returned chunk is well-formed
// UTF-8: bytes of a character split over several tokens are held back until it is complete.
// Ill-formed bytes become U+FFFD (one per maximal subpart); Flush() emits what remains (an
// incomplete trailing sequence as one U+FFFD). For any id sequence whose Decode() is valid UTF-8,
// the concatenation of all chunks (including Flush()) equals Decode().
class IncrementalDetokenizer {
 public:
  explicit IncrementalDetokenizer(const Tokenizer& tokenizer) : tokenizer_(&tokenizer) {}

  std::string Push(int32_t id);
  std::string Flush();
  // Bytes held back waiting for the rest of a character.
  size_t pending_bytes() const { return pending_.size(); }
  void Reset() { pending_.clear(); }

 private:
  const Tokenizer* tokenizer_;
  std::string pending_;
};

}  // namespace pipeinfer::tokenizer
