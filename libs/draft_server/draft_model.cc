#include "draft_server/draft_model.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "gguf/llama.h"
#include "gguf/reader.h"

namespace pipeinfer::draft_server {

absl::StatusOr<std::unique_ptr<DraftModel>> DraftModel::Load(const DraftModelOptions& o) {
  PI_ASSIGN_OR_RETURN(auto target_file, gguf::GgufFile::Open(o.target_path));
  PI_ASSIGN_OR_RETURN(auto target_vocab, gguf::TokenizerMetadata::FromGguf(*target_file));
  PI_ASSIGN_OR_RETURN(auto model, engine::StageModel::LoadFull(o.path));
  absl::StatusOr<gguf::TokenizerMetadata> draft_vocab =
      gguf::TokenizerMetadata::FromGguf(model->file());
  if (!draft_vocab.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("draft model ", o.path, ": ", draft_vocab.status().message()));
  }
  if (draft_vocab->tokens.size() != target_vocab.tokens.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the draft model ", o.path, " has ", draft_vocab->tokens.size(),
                     " tokens but the target ", o.target_path, " has ", target_vocab.tokens.size(),
                     ": the draft must use the target's vocabulary"));
  }
  for (size_t i = 0; i < target_vocab.tokens.size(); ++i) {
    if (draft_vocab->tokens[i] != target_vocab.tokens[i]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the draft model ", o.path, " and the target ", o.target_path,
          " have different vocabularies (token ", i, " is '", draft_vocab->tokens[i], "' vs '",
          target_vocab.tokens[i], "'): the draft must use the target's vocabulary"));
    }
  }
  if (static_cast<size_t>(model->hparams().n_vocab) != target_vocab.tokens.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the draft model ", o.path, " has an output head of ", model->hparams().n_vocab,
        " rows for ", target_vocab.tokens.size(), " tokens"));
  }
  auto d = std::unique_ptr<DraftModel>(new DraftModel());
  absl::StatusOr<std::string> name = model->file().GetString("general.name");
  d->name_ = name.ok() ? *name : o.path;
  d->n_vocab_ = static_cast<uint32_t>(model->hparams().n_vocab);
  if (!(o.noise >= 0.0 && o.noise <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("draft noise must be in [0, 1], got ", o.noise));
  }
  d->noise_ = o.noise;
  engine::EngineOptions eo;
  eo.threads = std::max(1, o.threads);
  const int64_t n_ctx = model->hparams().n_ctx_train;
  eo.kv_capacity_tokens = o.kv_tokens > 0 ? o.kv_tokens : 8 * n_ctx;
  PI_ASSIGN_OR_RETURN(d->engine_, engine::Engine::Create(std::move(model), eo));
  return d;
}

absl::StatusOr<std::vector<float>> DraftModel::Feed(uint64_t session, bool from_canonical,
                                                    int32_t keep, std::span<const int32_t> tokens) {
  if (tokens.empty()) return absl::InvalidArgumentError("nothing to feed the draft model");
  std::lock_guard<std::mutex> l(mu_);
  kv::KvCache& kv = engine_->kv();
  if (!kv.HasSession(session)) PI_RETURN_IF_ERROR(kv.OpenSession(session));
  if (keep + static_cast<int64_t>(tokens.size()) > engine_->max_context()) {
    return absl::OutOfRangeError(
        absl::StrCat("the draft model's context (", engine_->max_context(), " tokens) is full"));
  }
  // Re-create kSpec as the wanted prefix (blocks are shared, nothing is recomputed).
  const kv::Sequence* spec = kv.Find(session, kSpec);
  if (from_canonical || spec == nullptr) {
    if (spec != nullptr) PI_RETURN_IF_ERROR(kv.Release(session, kSpec));
    PI_RETURN_IF_ERROR(kv.Fork(session, kSpec, kv::KvCache::kCanonical, -1, keep));
  } else if (spec->size() != keep) {
    constexpr uint32_t kTmp = 2;
    PI_RETURN_IF_ERROR(kv.Fork(session, kTmp, kSpec, -1, keep));
    PI_RETURN_IF_ERROR(kv.Release(session, kSpec));
    PI_RETURN_IF_ERROR(kv.Fork(session, kSpec, kTmp, -1, keep));
    PI_RETURN_IF_ERROR(kv.Release(session, kTmp));
  }
  std::vector<float> logits;
  for (size_t off = 0; off < tokens.size(); off += static_cast<size_t>(max_run_tokens_)) {
    const size_t n = std::min(tokens.size() - off, static_cast<size_t>(max_run_tokens_));
    engine::ForwardInput in;
    in.session = session;
    in.partition = kSpec;
    in.tokens = tokens.subspan(off, n);
    const int32_t last = static_cast<int32_t>(n) - 1;
    const bool final_chunk = off + n == tokens.size();
    if (final_chunk) in.output_rows = std::span<const int32_t>(&last, 1);
    PI_ASSIGN_OR_RETURN(engine::ForwardOutput out, engine_->Forward(in));
    if (final_chunk) logits = std::move(out.logits);
  }
  return logits;
}

absl::Status DraftModel::Adopt(uint64_t session, int32_t n) {
  std::lock_guard<std::mutex> l(mu_);
  return engine_->kv().Commit(session, kSpec, -1, n);
}

void DraftModel::CloseSession(uint64_t session) {
  std::lock_guard<std::mutex> l(mu_);
  if (engine_->kv().HasSession(session)) (void)engine_->kv().CloseSession(session);
}

SessionDrafter::~SessionDrafter() { model_->CloseSession(session_); }

void SessionDrafter::Committed(std::span<const int32_t> committed) {
  size_t n = canon_;
  while (n < fed_.size() && n < committed.size() && fed_[n] == committed[n]) ++n;
  if (n <= canon_) return;
  if (model_->Adopt(session_, static_cast<int32_t>(n)).ok()) canon_ = n;
}

absl::StatusOr<std::span<const float>> SessionDrafter::NextLogits(
    std::span<const int32_t> sequence) {
  if (sequence.empty()) return absl::InvalidArgumentError("empty sequence");
  size_t common = 0;
  while (common < fed_.size() && common < sequence.size() && fed_[common] == sequence[common]) {
    ++common;
  }
  if (common == sequence.size() && common == fed_.size()) return std::span<const float>(logits_);
  // At least the last token is fed again, so that its logits come out.
  if (common == sequence.size()) --common;
  // Below the committed prefix (never happens for a well-behaved caller): start over from the
  // part of canonical that still matches.
  const bool from_canonical = common < canon_;
  if (from_canonical) canon_ = common;
  absl::StatusOr<std::vector<float>> l = model_->Feed(
      session_, from_canonical, static_cast<int32_t>(common), sequence.subspan(common));
  if (!l.ok()) {
    fed_.clear();
    logits_.clear();
    canon_ = 0;
    return l.status();
  }
  tokens_fed_ += sequence.size() - common;
  fed_.assign(sequence.begin(), sequence.end());
  logits_ = std::move(*l);
  if (model_->noise_ > 0.0 && !logits_.empty()) {
    // A hash of the whole sequence decides, so the same context always gets the same draft.
    uint64_t h = 0x9e3779b97f4a7c15ull;
    for (int32_t t : sequence) {
      h ^= static_cast<uint64_t>(t) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
      h *= 0xff51afd7ed558ccdull;
      h ^= h >> 33;
    }
    if (static_cast<double>(h % 1000000) < model_->noise_ * 1e6) {
      const auto top = std::max_element(logits_.begin(), logits_.end()) - logits_.begin();
      const size_t other =
          ((h >> 20) % (logits_.size() - 1) + 1 + static_cast<size_t>(top)) % logits_.size();
      std::swap(logits_[static_cast<size_t>(top)], logits_[other]);
    }
  }
  return std::span<const float>(logits_);
}

}  // namespace pipeinfer::draft_server
