#include "spec/controller.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <utility>

#include "absl/strings/str_cat.h"
#include "sampling/speculative.h"

namespace pipeinfer::spec {
namespace {

// Top-1 token of raw logits and its softmax probability (temperature 1): the greedy draft's pick
// and its confidence.
std::pair<int32_t, float> Top1(std::span<const float> logits) {
  int32_t best = -1;
  float max_l = -INFINITY;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (logits[i] > max_l) {
      max_l = logits[i];
      best = static_cast<int32_t>(i);
    }
  }
  if (best < 0) return {-1, 0.0f};
  double sum = 0.0;
  for (float l : logits) {
    if (std::isfinite(l)) sum += std::exp(static_cast<double>(l) - max_l);
  }
  return {best, sum > 0.0 ? static_cast<float>(1.0 / sum) : 0.0f};
}

}  // namespace

Controller::Controller(ControllerOptions options, PipelineSink* sink, Drafter* drafter)
    : options_(std::move(options)),
      sink_(sink),
      drafter_(drafter),
      mode_(drafter ? options_.spec.mode : Mode::kPlain),
      sampler_(options_.sampling) {
  max_inflight_ = options_.spec.max_inflight != 0 ? options_.spec.max_inflight
                                                  : DefaultMaxInflight(options_.n_stages);
  max_inflight_ = std::max<uint32_t>(max_inflight_, 1);
  if (options_.max_run_tokens == 0) options_.max_run_tokens = 1;
}

std::vector<int32_t> Controller::Assumed() const {
  std::vector<int32_t> a = committed_;
  for (const Guess& g : guesses_) a.push_back(g.token);
  return a;
}

absl::Status Controller::Start(std::span<const int32_t> prompt) {
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  if (!committed_.empty()) return absl::FailedPreconditionError("Start called twice");
  const StopRules& sr = options_.stop;
  if (sr.max_context == 0 || prompt.size() >= sr.max_context) {
    return absl::OutOfRangeError(absl::StrCat(
        "the prompt (", prompt.size(), " tokens) does not fit max_context ", sr.max_context));
  }
  committed_.assign(prompt.begin(), prompt.end());
  prompt_len_ = static_cast<uint32_t>(prompt.size());
  emitted_ = committed_.size();
  for (int32_t t : prompt) sampler_.Accept(t);
  const uint64_t want = static_cast<uint64_t>(prompt_len_) + sr.max_new_tokens;
  limit_ = static_cast<uint32_t>(std::min<uint64_t>(want, sr.max_context));

  for (uint32_t off = 0; off < prompt_len_; off += options_.max_run_tokens) {
    const uint32_t n = std::min(options_.max_run_tokens, prompt_len_ - off);
    RunSpec run;
    std::vector<uint32_t> row_pos;
    for (uint32_t i = 0; i < n; ++i) {
      run.tokens.push_back(committed_[off + i]);
      run.positions.push_back(off + i);
    }
    if (off + n == prompt_len_) {
      run.result_rows.push_back(n - 1);
      row_pos.push_back(prompt_len_);
    }
    if (absl::Status st = Launch(std::move(run), off, off + n, std::move(row_pos), false);
        !st.ok()) {
      return st;
    }
  }
  allowance_ = 1;
  return absl::OkStatus();
}

absl::Status Controller::Launch(RunSpec run, uint32_t start, uint32_t end,
                                std::vector<uint32_t> row_pos, bool speculative) {
  run.speculative = speculative;
  absl::StatusOr<uint64_t> id = sink_->SendRun(run);
  if (!id.ok()) return id.status();
  InFlight f;
  f.id = *id;
  f.speculative = speculative;
  f.partition = run.partition;
  f.start = start;
  f.end = end;
  f.row_pos = std::move(row_pos);
  ledger_.push_back(std::move(f));
  fed_ = end;
  if (speculative) {
    ++counters_.runs_speculative;
  } else {
    ++counters_.runs_plain;
  }
  return absl::OkStatus();
}

absl::Status Controller::SendPlain() {
  // Feeds the newest committed token (at position fed_) into canonical.
  RunSpec run;
  run.tokens.push_back(committed_[fed_]);
  run.positions.push_back(fed_);
  run.result_rows.push_back(0);
  return Launch(std::move(run), fed_, fed_ + 1, {fed_ + 1}, false);
}

absl::Status Controller::SendSync() {
  // One run: the newest committed token plus a drafted chain, all rows verified by this run.
  const uint32_t base = fed_;  // committed_.size() == fed_ + 1
  const uint32_t room = limit_ > base + 1 ? limit_ - (base + 1) : 0;
  std::vector<Guess> chain;
  if (room > 0 && !drafting_broken_) {
    chain = DraftChain(options_.spec.p_accept,
                       std::min({options_.spec.draft_max, room, options_.max_run_tokens - 1}));
  }
  if (chain.empty()) return SendPlain();
  RunSpec run;
  run.partition = AllocPartition();
  run.fork = ForkSpec{run.partition, 0, 0, base};
  run.tokens.push_back(committed_[base]);
  run.positions.push_back(base);
  std::vector<uint32_t> row_pos{base + 1};
  run.result_rows.push_back(0);
  for (size_t i = 0; i < chain.size(); ++i) {
    run.tokens.push_back(chain[i].token);
    run.positions.push_back(base + 1 + static_cast<uint32_t>(i));
    run.result_rows.push_back(static_cast<uint32_t>(i + 1));
    row_pos.push_back(base + 2 + static_cast<uint32_t>(i));
  }
  counters_.tokens_drafted += chain.size();
  const uint32_t end = base + 1 + static_cast<uint32_t>(chain.size());
  for (Guess& g : chain) guesses_.push_back(std::move(g));
  return Launch(std::move(run), base, end, std::move(row_pos), true);
}

std::vector<Controller::Guess> Controller::DraftChain(float cutoff, uint32_t max_tokens) {
  std::vector<Guess> out;
  if (!drafter_ || drafting_broken_ || max_tokens == 0) return out;
  std::vector<int32_t> seq = Assumed();
  std::vector<int32_t> pending;  // guesses not yet committed, for the sampler's history
  for (const Guess& g : guesses_) pending.push_back(g.token);
  while (out.size() < max_tokens) {
    absl::StatusOr<std::span<const float>> logits = drafter_->NextLogits(seq);
    if (!logits.ok()) {
      ++counters_.draft_failures;
      drafting_broken_ = true;
      std::fprintf(stderr, "spec: drafting stopped for this request: %s\n",
                   std::string(logits.status().message()).c_str());
      break;
    }
    Guess g;
    float confidence = 0.0f;
    if (greedy()) {
      auto [tok, p] = Top1(*logits);
      g.token = tok;
      confidence = p;
    } else {
      g.q = sampler_.DistributionAfter(*logits, pending);
      if (g.q.empty()) break;
      confidence = *std::max_element(g.q.probs.begin(), g.q.probs.end());
      if (confidence >= cutoff) g.token = sampling::Sample(g.q, sampler_.rng());
    }
    if (g.token < 0 || confidence < cutoff) break;
    seq.push_back(g.token);
    pending.push_back(g.token);
    out.push_back(std::move(g));
  }
  return out;
}

absl::StatusOr<int> Controller::Speculate(const std::function<bool()>& result_waiting) {
  if (mode_ != Mode::kPipeInfer || finished() || drafting_broken_) return 0;
  int launched = 0;
  uint32_t iter = 0;
  while (true) {
    if (ledger_.size() >= max_inflight_) break;
    if (options_.spec.no_continuous && allowance_ == 0) break;
    if (result_waiting && result_waiting()) break;
    const uint32_t base = fed_;
    if (committed_.size() + guesses_.size() != base) break;  // a committed token awaits its run
    if (base >= limit_) break;
    const float cutoff = options_.spec.p_accept +
                         static_cast<float>(iter) * options_.spec.p_recovery -
                         static_cast<float>(n_failed_) * options_.spec.p_decay;
    if (cutoff >= 1.0f) break;
    std::vector<Guess> chain = DraftChain(
        cutoff, std::min({options_.spec.draft_max, limit_ - base, options_.max_run_tokens}));
    if (chain.empty()) {
      ++n_failed_;
      break;
    }
    RunSpec run;
    run.partition = AllocPartition();
    // Fork from the tip of the chain: the newest in-flight speculative run's partition (its path
    // is exactly A[0, base)), else canonical, which holds A[0, base) once the runs before this one
    // have been applied.
    uint32_t src = 0;
    if (!ledger_.empty() && ledger_.back().speculative) src = ledger_.back().partition;
    run.fork = ForkSpec{run.partition, src, 0, base};
    std::vector<uint32_t> row_pos;
    for (size_t i = 0; i < chain.size(); ++i) {
      run.tokens.push_back(chain[i].token);
      run.positions.push_back(base + static_cast<uint32_t>(i));
      run.result_rows.push_back(static_cast<uint32_t>(i));
      row_pos.push_back(base + 1 + static_cast<uint32_t>(i));
    }
    const uint32_t end = base + static_cast<uint32_t>(chain.size());
    counters_.tokens_drafted += chain.size();
    for (Guess& g : chain) guesses_.push_back(std::move(g));
    if (absl::Status st = Launch(std::move(run), base, end, std::move(row_pos), true); !st.ok()) {
      return st;
    }
    ++launched;
    ++iter;
    if (allowance_ > 0) --allowance_;
  }
  return launched;
}

void Controller::CommitToken(int32_t token) {
  committed_.push_back(token);
  sampler_.Accept(token);
  const StopRules& sr = options_.stop;
  const bool eos =
      !sr.ignore_eos && std::find(sr.eos_ids.begin(), sr.eos_ids.end(), token) != sr.eos_ids.end();
  const bool stop = std::find(sr.stop_ids.begin(), sr.stop_ids.end(), token) != sr.stop_ids.end();
  if (eos || stop) {
    finish_ = Finish::kStop;
  } else if (committed_.size() >= limit_) {
    finish_ = Finish::kLength;
  }
}

absl::Status Controller::Invalidate(size_t from_index) {
  std::vector<uint64_t> ids;
  std::vector<uint32_t> parts;
  for (size_t i = from_index; i < ledger_.size(); ++i) {
    const InFlight& f = ledger_[i];
    if (!f.speculative) {
      // Plain runs only follow a verified result, so nothing can invalidate them.
      return absl::InternalError(absl::StrCat("plain run ", f.id, " was invalidated"));
    }
    ids.push_back(f.id);
    dropped_.insert(f.id);
    parts.push_back(f.partition);
  }
  ledger_.erase(ledger_.begin() + static_cast<std::ptrdiff_t>(from_index), ledger_.end());
  if (ids.empty()) return absl::OkStatus();
  counters_.runs_cancelled += ids.size();
  if (!options_.spec.no_cancel) sink_->Cancel(ids);
  KvOpSpec rel;
  rel.kind = KvOpSpec::Kind::kRelease;
  rel.partitions = parts;
  for (uint32_t p : parts) FreePartition(p);
  return sink_->SendKvOp(rel);
}

absl::Status Controller::OnOutcome(const Outcome& o) {
  if (auto it = dropped_.find(o.run_id); it != dropped_.end()) {
    dropped_.erase(it);
    if (o.tombstone) ++counters_.runs_tombstoned;
    return absl::OkStatus();
  }
  if (ledger_.empty() || ledger_.front().id != o.run_id) {
    return absl::InternalError(absl::StrCat("unexpected outcome for run ", o.run_id,
                                            " (expected run ",
                                            ledger_.empty() ? 0 : ledger_.front().id, ")"));
  }
  InFlight r = std::move(ledger_.front());
  ledger_.pop_front();
  if (o.tombstone) {
    return absl::AbortedError(
        absl::StrCat("run ", r.id, " was skipped by the pipeline (", o.tombstone_reason, ")"));
  }
  if (o.rows.size() != r.row_pos.size()) {
    return absl::InternalError(absl::StrCat("run ", r.id, " returned ", o.rows.size(),
                                            " result rows, expected ", r.row_pos.size()));
  }
  if (finished()) return absl::OkStatus();
  if (!o.rows.empty()) ++counters_.verifications;

  bool mismatch = false;
  bool emitted = false;
  for (size_t i = 0; i < o.rows.size() && !finished(); ++i) {
    const uint32_t x = r.row_pos[i];
    if (x < committed_.size()) continue;  // already decided (cannot happen for a valid run)
    if (x > committed_.size()) {
      return absl::InternalError(absl::StrCat("run ", r.id, " row predicts position ", x,
                                              " but only ", committed_.size(),
                                              " tokens are committed"));
    }
    const TargetRow& row = o.rows[i];
    sampling::SparseDist p;
    switch (row.kind) {
      case TargetRow::Kind::kArgmax:
        if (!greedy()) return absl::InternalError("an ARGMAX row for a sampled request");
        if (row.argmax < 0) return absl::InternalError("an ARGMAX row without a token");
        p.ids.push_back(row.argmax);
        p.probs.push_back(1.0f);
        break;
      case TargetRow::Kind::kSparse:
        p = row.sparse;
        break;
      case TargetRow::Kind::kFull:
        p = sampler_.Distribution(row.logits);
        break;
    }
    if (p.empty()) return absl::InternalError(absl::StrCat("run ", r.id, " row ", i, " is empty"));
    const bool has_guess = !guesses_.empty();
    int32_t token = -1;
    bool accepted = false;
    if (greedy()) {
      token = p.ids[static_cast<size_t>(std::max_element(p.probs.begin(), p.probs.end()) -
                                        p.probs.begin())];
      accepted = has_guess && guesses_.front().token == token;
    } else if (has_guess) {
      sampling::AcceptResult a =
          sampling::AcceptDraftToken(p, guesses_.front().q, guesses_.front().token, sampler_.rng());
      token = a.token;
      accepted = a.accepted;
    } else {
      token = sampling::Sample(p, sampler_.rng());
    }
    if (token < 0) return absl::InternalError(absl::StrCat("run ", r.id, ": no token sampled"));
    emitted = true;
    if (accepted) {
      guesses_.pop_front();
      ++counters_.tokens_accepted;
      CommitToken(token);
      continue;
    }
    // A correction (rejected guess) or a bonus token (no guess): everything assumed from here on
    // is gone.
    mismatch = has_guess;
    guesses_.clear();
    CommitToken(token);
    break;
  }
  if (emitted) n_failed_ = 0;
  if (finished()) return absl::OkStatus();

  // Adopt the verified part of a speculative run's partition into canonical.
  if (r.speculative) {
    const uint32_t n = std::min<uint32_t>(r.end, static_cast<uint32_t>(committed_.size()) - 1);
    KvOpSpec op;
    if (n > r.start) {
      op.kind = KvOpSpec::Kind::kCommit;
      op.partition = r.partition;
      op.n_positions = n;
      op.release = true;
    } else {
      op.kind = KvOpSpec::Kind::kRelease;
      op.partitions.push_back(r.partition);
    }
    FreePartition(r.partition);
    if (absl::Status st = sink_->SendKvOp(op); !st.ok()) return st;
  }
  if (mismatch) {
    // Every later run assumed a token that is not committed now; the correction is fed next.
    if (absl::Status st = Invalidate(0); !st.ok()) return st;
    fed_ = static_cast<uint32_t>(committed_.size()) - 1;
  }
  allowance_ = 1;
  if (!ledger_.empty()) return absl::OkStatus();  // a valid run covers the next position
  if (committed_.size() != static_cast<size_t>(fed_) + 1) {
    return absl::InternalError(absl::StrCat("after run ", r.id, ": ", committed_.size(),
                                            " committed tokens but ", fed_, " fed"));
  }
  if (mode_ == Mode::kSync) return SendSync();
  return SendPlain();
}

std::vector<int32_t> Controller::TakeEmitted() {
  std::vector<int32_t> out(committed_.begin() + static_cast<std::ptrdiff_t>(emitted_),
                           committed_.end());
  emitted_ = committed_.size();
  return out;
}

std::vector<uint64_t> Controller::OutstandingRunIds() const {
  std::vector<uint64_t> ids(dropped_.begin(), dropped_.end());
  for (const InFlight& f : ledger_) ids.push_back(f.id);
  std::sort(ids.begin(), ids.end());
  return ids;
}

uint32_t Controller::AllocPartition() {
  uint32_t p;
  if (!free_partitions_.empty()) {
    p = *free_partitions_.begin();
    free_partitions_.erase(free_partitions_.begin());
  } else {
    p = next_partition_++;
  }
  live_partitions_.insert(p);
  return p;
}

void Controller::FreePartition(uint32_t p) {
  if (live_partitions_.erase(p) > 0) free_partitions_.insert(p);
}

}  // namespace pipeinfer::spec
