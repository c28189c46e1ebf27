#include "draft_server/draft_model.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "draft_server/oracle_noise.h"
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
  d->rank_model_ = o.rank_model;
  if (o.emulate_us_per_token < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the emulated draft cost must be >= 0 us per token, got ", o.emulate_us_per_token));
  }
  d->emulate_us_per_token_ = o.emulate_us_per_token;
  engine::EngineOptions eo;
  eo.threads = std::max(1, o.threads);
  eo.weight_memory = o.weight_memory;
  const int64_t n_ctx = model->hparams().n_ctx_train;
  eo.kv_capacity_tokens = o.kv_tokens > 0 ? o.kv_tokens : 8 * n_ctx;
  PI_ASSIGN_OR_RETURN(d->engine_, engine::Engine::Create(std::move(model), eo));
  d->worker_ = std::thread([p = d.get()] { p->Worker(); });
  return d;
}

struct DraftModel::Request {
  uint64_t session = 0;
  bool from_canonical = false;
  int32_t keep = 0;
  std::vector<int32_t> tokens;  // a copy: the caller may leave before the pass that uses it ends
  size_t fed = 0;               // tokens already computed
  bool started = false;         // its KV was prepared (it can no longer be withdrawn)
  absl::Status status;
  std::vector<float> logits;
  bool done = false;
};

DraftModel::~DraftModel() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

std::shared_ptr<DraftModel::Request> DraftModel::Submit(uint64_t session, bool from_canonical,
                                                        int32_t keep,
                                                        std::span<const int32_t> tokens) {
  auto r = std::make_shared<Request>();
  r->session = session;
  r->from_canonical = from_canonical;
  r->keep = keep;
  r->tokens.assign(tokens.begin(), tokens.end());
  {
    std::lock_guard<std::mutex> l(mu_);
    queue_.push_back(r);
  }
  cv_.notify_all();
  return r;
}

absl::StatusOr<std::vector<float>> DraftModel::Await(const std::shared_ptr<Request>& r,
                                                     const std::function<bool()>& interrupt,
                                                     bool* withdrawn) {
  if (withdrawn) *withdrawn = false;
  std::unique_lock<std::mutex> l(mu_);
  while (!r->done) {
    if (interrupt && interrupt()) {
      auto it = std::find(queue_.begin(), queue_.end(), r);
      if (it != queue_.end() && !r->started) {  // not taken yet: withdraw it
        queue_.erase(it);
        r->done = true;
        r->status = absl::CancelledError("draft request withdrawn");
        if (withdrawn) *withdrawn = true;
      }
      return absl::CancelledError("draft wait interrupted");
    }
    // Woken when a pass ends, and by Wake() when the condition behind `interrupt` may have changed;
    // the timeout only bounds the delay for a caller that does not call Wake().
    cv_.wait_for(l, std::chrono::milliseconds(50));
  }
  if (!r->status.ok()) return r->status;
  return r->logits;
}

bool DraftModel::Done(const std::shared_ptr<Request>& r) const {
  std::lock_guard<std::mutex> l(mu_);
  return r->done;
}

void DraftModel::Wake() {
  { std::lock_guard<std::mutex> l(mu_); }  // a waiter is either before its check or waiting
  cv_.notify_all();
}

absl::StatusOr<std::vector<float>> DraftModel::Feed(uint64_t session, bool from_canonical,
                                                    int32_t keep, std::span<const int32_t> tokens) {
  if (tokens.empty()) return absl::InvalidArgumentError("nothing to feed the draft model");
  return Await(Submit(session, from_canonical, keep, tokens), nullptr);
}

void DraftModel::Worker() {
  std::unique_lock<std::mutex> l(mu_);
  while (true) {
    cv_.wait(l, [&] { return stop_ || !queue_.empty(); });
    if (stop_) break;
    // One pass over everything queued now (at most one request per session: each session's
    // drafter waits for its answer, or withdraws its request, before asking again). A request
    // that did not finish (part of a long prompt) goes back in front for the next pass, which
    // also takes whatever arrived meanwhile.
    std::vector<std::shared_ptr<Request>> batch(queue_.begin(), queue_.end());
    queue_.clear();
    busy_ = true;
    l.unlock();
    RunPass(batch);
    l.lock();
    busy_ = false;
    for (auto it = batch.rbegin(); it != batch.rend(); ++it) {
      if ((*it)->status.ok() && (*it)->fed < (*it)->tokens.size()) {
        queue_.push_front(*it);
      } else {
        (*it)->done = true;
      }
    }
    cv_.notify_all();
  }
}

absl::Status DraftModel::PrepareKv(Request& r) {
  kv::KvCache& kv = engine_->kv();
  int32_t adopt = -1;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = adopt_.find(r.session);
    if (it != adopt_.end()) {
      adopt = it->second;
      adopt_.erase(it);
    }
  }
  if (!kv.HasSession(r.session)) PI_RETURN_IF_ERROR(kv.OpenSession(r.session));
  if (adopt >= 0 && kv.Find(r.session, kSpec) != nullptr) {
    PI_RETURN_IF_ERROR(kv.Commit(r.session, kSpec, -1, adopt));
  }
  if (r.keep + static_cast<int64_t>(r.tokens.size()) > engine_->max_context()) {
    return absl::OutOfRangeError(
        absl::StrCat("the draft model's context (", engine_->max_context(), " tokens) is full"));
  }
  // Re-create kSpec as the wanted prefix (blocks are shared, nothing is recomputed).
  const kv::Sequence* spec = kv.Find(r.session, kSpec);
  if (r.from_canonical || spec == nullptr) {
    if (spec != nullptr) PI_RETURN_IF_ERROR(kv.Release(r.session, kSpec));
    PI_RETURN_IF_ERROR(kv.Fork(r.session, kSpec, kv::KvCache::kCanonical, -1, r.keep));
  } else if (spec->size() != r.keep) {
    constexpr uint32_t kTmp = 2;
    PI_RETURN_IF_ERROR(kv.Fork(r.session, kTmp, kSpec, -1, r.keep));
    PI_RETURN_IF_ERROR(kv.Release(r.session, kSpec));
    PI_RETURN_IF_ERROR(kv.Fork(r.session, kSpec, kTmp, -1, r.keep));
    PI_RETURN_IF_ERROR(kv.Release(r.session, kTmp));
  }
  return absl::OkStatus();
}

void DraftModel::RunPass(std::vector<std::shared_ptr<Request>>& batch) {
  // Drafting tokens (one or a few per request) go first; prompts fill what is left of the pass in
  // chunks, so that a long prompt never holds up the other sessions' drafting for long.
  std::vector<Request*> order;
  for (auto& r : batch) {
    if (!r->started) {
      r->started = true;
      r->status = PrepareKv(*r);
    }
    if (r->status.ok()) order.push_back(r.get());
  }
  std::stable_sort(order.begin(), order.end(), [](const Request* a, const Request* b) {
    return a->tokens.size() - a->fed < b->tokens.size() - b->fed;
  });
  int32_t budget = max_pass_tokens_;
  engine::Engine::Batch pass(*engine_);
  std::vector<Request*> in_pass;
  std::vector<size_t> n_of;
  std::vector<int32_t> last_rows(order.size());
  for (Request* r : order) {
    const size_t want = std::min(r->tokens.size() - r->fed, static_cast<size_t>(max_run_tokens_));
    // The first request always gets its chunk (progress); later ones only what fits.
    const size_t n = in_pass.empty() ? want : std::min<size_t>(want, std::max(budget, 0));
    if (n == 0) continue;
    engine::ForwardInput in;
    in.session = r->session;
    in.partition = kSpec;
    in.tokens = std::span<const int32_t>(r->tokens).subspan(r->fed, n);
    int32_t& last = last_rows[in_pass.size()];
    last = static_cast<int32_t>(n) - 1;
    if (r->fed + n == r->tokens.size()) in.output_rows = std::span<const int32_t>(&last, 1);
    if (absl::Status st = pass.Add(in); !st.ok()) {
      r->status = st;
      continue;
    }
    in_pass.push_back(r);
    n_of.push_back(n);
    budget -= static_cast<int32_t>(n);
  }
  if (in_pass.empty()) return;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<engine::ForwardOutput> outs = pass.Run();
  if (emulate_us_per_token_ > 0) {
    // Benchmarks: pad the pass to the emulated cost of its tokens (nothing when the real compute
    // took longer). Only this worker waits; sessions keep queueing meanwhile.
    int64_t tokens = 0;
    for (size_t n : n_of) tokens += static_cast<int64_t>(n);
    std::this_thread::sleep_until(t0 + std::chrono::microseconds(emulate_us_per_token_ * tokens));
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  {
    std::lock_guard<std::mutex> l(mu_);
    ++passes_;
    requests_ += in_pass.size();
  }
  if (on_pass_) on_pass_(in_pass.size(), seconds);
  for (size_t k = 0; k < in_pass.size(); ++k) {
    Request& r = *in_pass[k];
    r.fed += n_of[k];
    if (r.fed == r.tokens.size()) r.logits = std::move(outs[k].logits);
  }
}

void DraftModel::Adopt(uint64_t session, int32_t n) {
  std::lock_guard<std::mutex> l(mu_);
  adopt_[session] = n;
}

void DraftModel::CloseSession(uint64_t session) {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [&] { return !busy_; });  // the KV cache is the worker's while it computes
  // A request of the session still queued (part of a prompt) is dropped.
  for (auto it = queue_.begin(); it != queue_.end();) {
    if ((*it)->session == session) {
      (*it)->done = true;
      (*it)->status = absl::CancelledError("the draft session was closed");
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
  adopt_.erase(session);
  if (engine_->kv().HasSession(session)) (void)engine_->kv().CloseSession(session);
}

uint64_t DraftModel::passes() const {
  std::lock_guard<std::mutex> l(mu_);
  return passes_;
}

uint64_t DraftModel::requests() const {
  std::lock_guard<std::mutex> l(mu_);
  return requests_;
}

SessionDrafter::~SessionDrafter() { model_->CloseSession(session_); }

void SessionDrafter::Committed(std::span<const int32_t> committed) {
  size_t n = canon_;
  while (n < fed_.size() && n < committed.size() && fed_[n] == committed[n]) ++n;
  if (n <= canon_) return;
  model_->Adopt(session_, static_cast<int32_t>(n));
  canon_ = n;
}

void SessionDrafter::Take(std::span<const int32_t> sequence, std::vector<float> logits) {
  fed_.assign(sequence.begin(), sequence.end());
  logits_ = std::move(logits);
  if (model_->noise_ > 0.0 && !logits_.empty()) {
    // A hash of the whole sequence decides, so the same context always gets the same draft.
    ApplyDraftNoise(logits_, SequenceHash(sequence), model_->noise_, model_->rank_model_);
  }
}

absl::StatusOr<std::span<const float>> SessionDrafter::NextLogits(
    std::span<const int32_t> sequence) {
  if (sequence.empty()) return absl::InvalidArgumentError("empty sequence");
  if (pending_) {
    // An answer whose wait was interrupted: kSpec will hold its sequence once its pass ends.
    absl::StatusOr<std::vector<float>> l = model_->Await(pending_, interrupt_);
    if (absl::IsCancelled(l.status()) && !model_->Done(pending_)) return l.status();  // running
    pending_.reset();
    if (!l.ok()) {
      fed_.clear();
      logits_.clear();
      canon_ = 0;
      return l.status();
    }
    Take(pending_sequence_, std::move(*l));
  }
  size_t common = 0;
  while (common < fed_.size() && common < sequence.size() && fed_[common] == sequence[common]) {
    ++common;
  }
  if (common == sequence.size() && common == fed_.size() && !logits_.empty()) {
    return std::span<const float>(logits_);
  }
  // At least the last token is fed again, so that its logits come out.
  if (common == sequence.size()) --common;
  // Below the committed prefix (never happens for a well-behaved caller): start over from the
  // part of canonical that still matches.
  const bool from_canonical = common < canon_;
  if (from_canonical) canon_ = common;
  std::shared_ptr<DraftModel::Request> r = model_->Submit(
      session_, from_canonical, static_cast<int32_t>(common), sequence.subspan(common));
  bool withdrawn = false;
  absl::StatusOr<std::vector<float>> l = model_->Await(r, interrupt_, &withdrawn);
  if (absl::IsCancelled(l.status())) {
    // Interrupted: a withdrawn request changed nothing; one in a pass completes `sequence` later.
    if (!withdrawn) {
      pending_ = std::move(r);
      pending_sequence_.assign(sequence.begin(), sequence.end());
      tokens_fed_ += sequence.size() - common;
    }
    return l.status();
  }
  if (!l.ok()) {
    fed_.clear();
    logits_.clear();
    canon_ = 0;
    return l.status();
  }
  tokens_fed_ += sequence.size() - common;
  Take(sequence, std::move(*l));
  return std::span<const float>(logits_);
}

}  // namespace pipeinfer::draft_server
