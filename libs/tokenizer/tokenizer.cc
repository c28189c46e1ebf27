#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "tokenizer/bpe.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/special_ids.h"

namespace pipeinfer::tokenizer {

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Create(const gguf::TokenizerMetadata& meta) {
  std::optional<PreTokenizer> pre;
  if (meta.model == "gpt2") {
    if (meta.pre.empty()) {
      return absl::UnimplementedError(
          absl::StrCat("byte-level BPE vocabulary without tokenizer.ggml.pre is not supported "
                       "(supported pre-tokenizers: ",
                       SupportedPreTokenizerNames(), ")"));
    }
    pre = PreTokenizerByName(meta.pre);
    if (!pre) {
      return absl::UnimplementedError(
          absl::StrCat("tokenizer.ggml.pre '", meta.pre,
                       "' is not supported (supported: ", SupportedPreTokenizerNames(), ")"));
    }
  } else if (meta.model != "llama") {
    return absl::UnimplementedError(
        absl::StrCat("tokenizer model '", meta.model,
                     "' is not supported (only 'llama' SentencePiece and 'gpt2' byte-level BPE)"));
  }
  const size_t n = meta.tokens.size();
  if (n == 0) return absl::InvalidArgumentError("tokenizer vocabulary is empty");
  if (n > static_cast<size_t>(INT32_MAX / 2)) {
    return absl::InvalidArgumentError("tokenizer vocabulary is too large");
  }
  if (!meta.scores.empty() && meta.scores.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer has ", meta.scores.size(), " scores for ", n, " tokens"));
  }
  if (!meta.token_types.empty() && meta.token_types.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer has ", meta.token_types.size(), " token types for ", n, " tokens"));
  }
  for (auto [name, id] : {std::pair{"bos", meta.bos_id}, std::pair{"eos", meta.eos_id},
                          std::pair{"unk", meta.unk_id}}) {
    if (id < -1 || id >= static_cast<int64_t>(n)) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " token id ", id, " is outside the vocabulary of ", n));
    }
  }

  auto t = std::unique_ptr<Tokenizer>(new Tokenizer());
  t->tokens_ = meta.tokens;
  t->scores_ = meta.scores.empty() ? std::vector<float>(n, 0.0f) : meta.scores;
  t->types_ = meta.token_types.empty() ? std::vector<gguf::TokenType>(n, gguf::TokenType::kNormal)
                                       : meta.token_types;
  t->bos_id_ = meta.bos_id;
  t->eos_id_ = meta.eos_id;
  t->unk_id_ = meta.unk_id;
  t->add_bos_ = meta.add_bos;
  t->token_to_id_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    t->token_to_id_.insert_or_assign(t->tokens_[i], static_cast<int32_t>(i));  // last id wins
  }
  if (pre) {
    t->kind_ = Kind::kByteLevelBpe;
    // llama.cpp sets add_bos for the Llama-3 pre-tokenizers unless the file says otherwise.
    if (!meta.add_bos_in_file) t->add_bos_ = *pre == PreTokenizer::kLlama3;
    PI_ASSIGN_OR_RETURN(
        t->bpe_, BpeModel::Create(*pre, meta.merges, &t->token_to_id_, static_cast<int32_t>(n)));
    t->BuildSpecialIds();  // may retype tokens CONTROL, so before the pieces
    t->InitBpe();
  } else {
    t->kind_ = Kind::kSentencePiece;
    t->InitSpm();
    t->BuildSpecialIds();
  }
  return t;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const gguf::GgufFile& f) {
  PI_ASSIGN_OR_RETURN(gguf::TokenizerMetadata meta, gguf::TokenizerMetadata::FromGguf(f));
  auto t = Create(meta);
  if (!t.ok()) {
    return absl::Status(t.status().code(), absl::StrCat(f.name(), ": ", t.status().message()));
  }
  return t;
}

void Tokenizer::BuildSpecialIds() {
  const DerivedSpecialIds d =
      DeriveSpecialIds([this](std::string_view text) { return FindToken(text); }, eos_id_,
                       /*retype=*/kind_ == Kind::kByteLevelBpe, &types_);
  eot_id_ = d.eot;
  eog_ids_ = d.eog;
}

void Tokenizer::InitBpe() {
  const size_t n = tokens_.size();
  pieces_.assign(n, std::string());
  rendered_pieces_.assign(n, std::string());
  is_special_.assign(n, false);
  matched_without_parse_special_.assign(n, false);
  for (size_t i = 0; i < n; ++i) {
    switch (types_[i]) {
      case gguf::TokenType::kNormal:
        pieces_[i] = rendered_pieces_[i] = bpe_->DecodeTokenText(tokens_[i]);
        break;
      case gguf::TokenType::kUserDefined:
        pieces_[i] = rendered_pieces_[i] = tokens_[i];
        is_special_[i] = matched_without_parse_special_[i] = true;
        break;
      case gguf::TokenType::kControl:
      case gguf::TokenType::kUnknown:
        rendered_pieces_[i] = tokens_[i];
        is_special_[i] = true;
        break;
      default:  // UNUSED, BYTE, UNDEFINED: "" in both renderings
        break;
    }
    if (tokens_[i].empty()) is_special_[i] = false;  // an empty text matches nowhere
  }
  IndexSpecialTokens();
}

void Tokenizer::IndexSpecialTokens() {
  for (size_t i = 0; i < tokens_.size(); ++i) {
    if (!is_special_[i]) continue;
    special_order_.push_back(static_cast<int32_t>(i));
    special_first_byte_[static_cast<uint8_t>(tokens_[i][0])] = true;
    if (std::find(special_lengths_.begin(), special_lengths_.end(), tokens_[i].size()) ==
        special_lengths_.end()) {
      special_lengths_.push_back(tokens_[i].size());
    }
  }
  // Longest text first (as llama.cpp's sort), ties by id.
  std::stable_sort(special_order_.begin(), special_order_.end(),
                   [this](int32_t a, int32_t b) { return tokens_[a].size() > tokens_[b].size(); });
}

int32_t Tokenizer::Lookup(std::string_view text) const {
  const auto it = token_to_id_.find(absl::string_view(text.data(), text.size()));
  return it == token_to_id_.end() ? -1 : it->second;
}

std::optional<int32_t> Tokenizer::FindToken(std::string_view text) const {
  const int32_t id = Lookup(text);
  if (id < 0) return std::nullopt;
  return id;
}

gguf::TokenType Tokenizer::Type(int32_t id) const {
  return IsValid(id) ? types_[id] : gguf::TokenType::kUndefined;
}

bool Tokenizer::IsEndOfGeneration(int32_t id) const {
  return std::binary_search(eog_ids_.begin(), eog_ids_.end(), id);
}

const std::string& Tokenizer::TokenText(int32_t id) const {
  static const std::string kEmpty;
  return IsValid(id) ? tokens_[id] : kEmpty;
}

const std::string& Tokenizer::Piece(int32_t id) const {
  static const std::string kEmpty;
  return IsValid(id) ? pieces_[id] : kEmpty;
}

const std::string& Tokenizer::RenderedPiece(int32_t id) const {
  static const std::string kEmpty;
  return IsValid(id) ? rendered_pieces_[id] : kEmpty;
}

std::string Tokenizer::TokenToPiece(int32_t id) const { return Piece(id); }

std::string Tokenizer::Decode(std::span<const int32_t> ids, bool render_special) const {
  std::string out;
  for (int32_t id : ids) out += render_special ? RenderedPiece(id) : Piece(id);
  return out;
}

std::vector<Tokenizer::Fragment> Tokenizer::PartitionSpecial(
    std::string_view text, bool parse_special,
    std::span<const std::pair<size_t, size_t>> literal) const {
  const auto in_literal = [&](size_t begin, size_t len) {
    for (const auto& [off, n] : literal) {
      if (begin < off + n && off < begin + len) return true;
    }
    return false;
  };
  const auto wanted = [&](int32_t id) {
    return is_special_[id] && (parse_special || matched_without_parse_special_[id]);
  };
  std::vector<Fragment> frags = {{-1, 0, text.size()}};
  if (special_order_.empty()) return frags;

  // Which special tokens occur at all (one pass over the text).
  std::vector<bool> occurs(tokens_.size(), false);
  bool any = false;
  for (size_t pos = 0; pos < text.size(); ++pos) {
    if (!special_first_byte_[static_cast<uint8_t>(text[pos])]) continue;
    for (size_t len : special_lengths_) {
      if (len > text.size() - pos) continue;
      const int32_t id = Lookup(text.substr(pos, len));
      if (id >= 0 && wanted(id)) occurs[id] = any = true;
    }
  }
  if (!any) return frags;

  // As llama.cpp: one special token at a time, cut every remaining text fragment at each of its
  // (non-overlapping, leftmost-first) occurrences.
  for (int32_t id : special_order_) {
    if (!occurs[id]) continue;
    const std::string_view needle = tokens_[id];
    std::vector<Fragment> next;
    next.reserve(frags.size() + 2);
    for (const Fragment& f : frags) {
      if (f.token >= 0) {
        next.push_back(f);
        continue;
      }
      const std::string_view piece = text.substr(f.offset, f.length);
      size_t start = 0, search = 0;
      while (true) {
        const size_t hit = piece.find(needle, search);
        if (hit == std::string_view::npos) break;
        if (in_literal(f.offset + hit, needle.size())) {
          search = hit + 1;  // plain text here
          continue;
        }
        if (hit > start) next.push_back({-1, f.offset + start, hit - start});
        next.push_back({id, 0, 0});
        start = search = hit + needle.size();
      }
      if (start < piece.size()) next.push_back({-1, f.offset + start, piece.size() - start});
    }
    frags = std::move(next);
  }
  return frags;
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_bos,
                                       bool parse_special) const {
  return Encode(text, add_bos, parse_special, {});
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_bos, bool parse_special,
                                       std::span<const std::pair<size_t, size_t>> literal) const {
  std::vector<int32_t> out;
  if (add_bos && bos_id_ >= 0) out.push_back(bos_id_);
  if (text.empty()) return out;

  const bool bpe = kind_ == Kind::kByteLevelBpe;
  std::vector<Fragment> frags;
  if (parse_special || bpe) {
    frags = PartitionSpecial(text, parse_special, literal);
  } else {
    frags.push_back({-1, 0, text.size()});
  }
  for (size_t i = 0; i < frags.size(); ++i) {
    const Fragment& f = frags[i];
    if (f.token >= 0) {
      out.push_back(f.token);
    } else if (bpe) {
      bpe_->Encode(text.substr(f.offset, f.length), &out);
    } else {
      EncodeSpmFragment(text.substr(f.offset, f.length), /*first=*/i == 0, &out);
    }
  }
  return out;
}

}  // namespace pipeinfer::tokenizer
