// Tokenizers built from GGUF metadata, reproducing llama.cpp's llama_tokenize /
// llama_token_to_piece exactly, and a UTF-8 safe incremental detokenizer. Two vocabulary kinds:
//
// SentencePiece (tokenizer.ggml.model = "llama"), as llama.cpp 9656026 does it:
//  1. Optionally BOS. Empty text stops here.
//  2. With parse_special, the text is cut into fragments around the texts of "special" tokens
//     (see IsSpecial()); each occurrence becomes its token id.
//  3. Each remaining text fragment is tokenized on its own: the *first* fragment of the text gets
//     a " " prefix (so text that follows a special token gets none), spaces become U+2581 "▁",
//     the fragment is split into characters (by the lead byte's length), and adjacent symbols
//     are merged greedily by the vocab score of their concatenation (highest score first, ties
//     to the leftmost pair). Final symbols that are vocab tokens map to their id; the others
//     are emitted byte by byte as <0xNN> tokens (unk when such a token is missing).
//
// Byte-level BPE (tokenizer.ggml.model = "gpt2", tokenizer.ggml.pre = llama-bpe or qwen2), as
// llama.cpp de3ff815 does it:
//  1. Optionally BOS (the caller passes add_bos(), which is the vocabulary's flag).
//  2. The text is cut around special tokens: CONTROL (and UNKNOWN) token texts only with
//     parse_special, USER_DEFINED token texts (Qwen's <think> etc.) always.
//  3. Each text fragment is split into words by the pre-tokenizer regex (pretokenize.h) and each
//     word is merged by rank (bpe.h). No space is prefixed.
// Encoding is O(n log n) in the text length for both.
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

class BpeModel;

class Tokenizer {
 public:
  enum class Kind { kSentencePiece, kByteLevelBpe };

  // Fails for tokenizer models other than "llama" and "gpt2", for a gpt2 vocabulary whose
  // tokenizer.ggml.pre is not supported (the error names it) or that has no merges, an empty
  // vocabulary, or inconsistent arrays.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Create(const gguf::TokenizerMetadata& meta);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const gguf::GgufFile& f);
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // llama_tokenize(text, add_bos, special=parse_special).
  std::vector<int32_t> Encode(std::string_view text, bool add_bos, bool parse_special) const;
  // The same, except that special-token text overlapping one of `literal` (byte ranges as
  // {offset, length} pairs, e.g. chat message content) is tokenized as plain text.
  std::vector<int32_t> Encode(std::string_view text, bool add_bos, bool parse_special,
                              std::span<const std::pair<size_t, size_t>> literal) const;

  // llama_token_to_piece(special=false).
  //  SentencePiece: NORMAL -> text with "▁" turned into " "; BYTE -> the raw byte; UNKNOWN -> "▅"
  //  (U+2585); CONTROL, USER_DEFINED, UNUSED, UNDEFINED and out-of-range ids -> "".
  //  Byte-level BPE: NORMAL -> the bytes its characters stand for; USER_DEFINED -> its text;
  //  CONTROL, UNKNOWN, UNUSED, UNDEFINED, BYTE and out-of-range ids -> "".
  std::string TokenToPiece(int32_t id) const;
  // Same, without a copy; valid while the tokenizer lives.
  const std::string& Piece(int32_t id) const;
  // llama_token_to_piece(special=true): as Piece(), except that CONTROL tokens (and, for BPE,
  // UNKNOWN ones) give their text.
  const std::string& RenderedPiece(int32_t id) const;
  // Concatenation of the pieces (raw bytes; not necessarily valid UTF-8); with render_special,
  // of the RenderedPiece()s.
  std::string Decode(std::span<const int32_t> ids, bool render_special = false) const;

  Kind kind() const { return kind_; }
  int32_t n_vocab() const { return static_cast<int32_t>(tokens_.size()); }
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  int32_t unk_id() const { return unk_id_; }
  bool add_bos() const { return add_bos_; }
  // End of turn (<|eot_id|>, <|im_end|>, ...), -1 when the vocabulary has none.
  int32_t eot_id() const { return eot_id_; }
  // Every token that ends generation, as llama.cpp derives them (special_ids.h): EOS, EOT, EOM,
  // the FIM pad/repo/separator tokens and the texts llama.cpp lists. Sorted.
  const std::vector<int32_t>& eog_ids() const { return eog_ids_; }

  bool IsValid(int32_t id) const { return id >= 0 && id < n_vocab(); }
  gguf::TokenType Type(int32_t id) const;
  bool IsControl(int32_t id) const { return Type(id) == gguf::TokenType::kControl; }
  bool IsByte(int32_t id) const { return Type(id) == gguf::TokenType::kByte; }
  // Whether the token ends generation (one of eog_ids()).
  bool IsEndOfGeneration(int32_t id) const;
  // Whether parse_special matches this token's text.
  //  SentencePiece: as in llama.cpp 9656026 this is decided from the vocabulary, not the token
  //  type: a token is special when its text has more than one character and cannot be split
  //  into two vocab tokens. For the LLaMA vocab (and the byte vocab) that is exactly the
  //  non-NORMAL tokens: <unk>, <s>, </s> and the <0xNN> byte tokens.
  //  Byte-level BPE: CONTROL, USER_DEFINED and UNKNOWN tokens (after the retyping of
  //  special_ids.h). USER_DEFINED ones are matched even without parse_special.
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

  Tokenizer();
  void InitSpm();  // spm.cc
  void InitBpe();
  void BuildSpecialTokens();  // SentencePiece: the unsplittable texts (spm.cc)
  void IndexSpecialTokens();  // special_order_ etc. from is_special_
  void BuildSpecialIds();
  int32_t Lookup(std::string_view text) const;  // -1 when absent
  // Cuts out special tokens; without parse_special only the always-matched ones (BPE
  // USER_DEFINED).
  std::vector<Fragment> PartitionSpecial(std::string_view text, bool parse_special,
                                         std::span<const std::pair<size_t, size_t>> literal) const;
  // SentencePiece merge + resegmentation of already escaped text. Long texts are cut where no
  // vocab token can span the cut (so the result is the same as for the whole text), which keeps
  // the merge queue small.
  void EncodeSpm(std::string_view text, std::vector<int32_t>* out) const;
  // A text fragment: " " prefixed when `first`, spaces escaped, then EncodeSpm.
  void EncodeSpmFragment(std::string_view text, bool first, std::vector<int32_t>* out) const;
  void EncodeSpmSegment(std::string_view text, std::vector<int32_t>* out) const;
  // Whether no vocab token can contain text[b - 1] and text[b] (b a character start) together.
  bool IsSafeCut(std::string_view text, size_t b) const;

  std::vector<std::string> tokens_;
  std::vector<float> scores_;
  std::vector<gguf::TokenType> types_;
  Kind kind_ = Kind::kSentencePiece;
  std::unique_ptr<BpeModel> bpe_;  // byte-level BPE only
  std::vector<std::string> pieces_;
  std::vector<std::string> rendered_pieces_;
  std::vector<bool> is_special_;
  std::vector<bool> matched_without_parse_special_;
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
  int32_t eot_id_ = -1;
  std::vector<int32_t> eog_ids_;
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
