#include "spec/controller.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <utility>

#include "absl/strings/str_cat.h"
#include "sampling/speculative.h"
#include "spec/controller_common.h"
#include "spec/top_k.h"

namespace pipeinfer::spec {

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
  if (mode_ != Mode::kPlain && !options_.spec.paper_tree) {
    tree_ = std::make_unique<TreeController>(options_, sink_, drafter_, mode_, max_inflight_);
  }
}

std::optional<std::chrono::steady_clock::time_point> Controller::WakeAt() const {
  if (tree_) return tree_->wake_at();
  return std::nullopt;
}

bool Controller::finished() const { return tree_ ? tree_->finished() : finish_ != Finish::kNone; }
Finish Controller::finish_reason() const { return tree_ ? tree_->finish_reason() : finish_; }
const std::vector<int32_t>& Controller::committed() const {
  return tree_ ? tree_->committed() : committed_;
}
uint32_t Controller::prompt_length() const { return tree_ ? tree_->prompt_length() : prompt_len_; }
const Counters& Controller::counters() const { return tree_ ? tree_->counters() : counters_; }
size_t Controller::live_partitions() const {
  return tree_ ? tree_->live_partitions() : live_partitions_.size();
}
size_t Controller::runs_in_flight() const {
  return tree_ ? tree_->runs_in_flight() : ledger_.size();
}

float Controller::Adjust(uint32_t iter) const {
  return static_cast<float>(iter) * options_.spec.p_recovery -
         static_cast<float>(n_failed_) * options_.spec.p_decay;
}

std::vector<int32_t> Controller::Assumed() const {
  std::vector<int32_t> a = committed_;
  if (line_ < 0) return a;
  for (int32_t n = line_; n != tip_;) {
    n = nodes_[n].children.front();
    a.push_back(nodes_[n].token);
  }
  return a;
}

int32_t Controller::NewNode(int32_t token, uint32_t pos, int32_t parent, uint32_t branch) {
  Node n;
  n.token = token;
  n.pos = pos;
  n.parent = parent;
  n.branch = branch;
  return AddNode(nodes_, std::move(n));
}

absl::Status Controller::Start(std::span<const int32_t> prompt) {
  if (tree_) return tree_->Start(prompt);
  if (!committed_.empty()) return absl::FailedPreconditionError("Start called twice");
  absl::StatusOr<uint32_t> limit = PositionLimit(prompt, options_.stop);
  if (!limit.ok()) return limit.status();
  limit_ = *limit;
  committed_.assign(prompt.begin(), prompt.end());
  prompt_len_ = static_cast<uint32_t>(prompt.size());
  emitted_ = committed_.size();
  for (int32_t t : prompt) sampler_.Accept(t);
  uint32_t off = 0;
  for (const RunSpec& run :
       PrefillRuns(prompt, PrefillRunTokens(static_cast<uint32_t>(prompt.size()), options_))) {
    absl::StatusOr<uint64_t> id = sink_->SendRun(run);
    if (!id.ok()) return id.status();
    InFlight f;
    f.id = *id;
    f.start = off;
    off += static_cast<uint32_t>(run.tokens.size());
    if (!run.result_rows.empty()) {
      const int32_t node = NewNode(committed_.back(), prompt_len_ - 1, -1, 0);
      nodes_[node].run = f.id;
      nodes_[node].row = 0;
      f.nodes.push_back(node);
      f.rows = 1;
      line_ = tip_ = node;
    }
    ledger_.push_back(std::move(f));
    ++counters_.runs_plain;
  }
  allowance_ = 1;
  return absl::OkStatus();
}

absl::Status Controller::SendPlain() {
  // Feeds the newest committed token into canonical.
  const uint32_t pos = static_cast<uint32_t>(committed_.size()) - 1;
  absl::StatusOr<uint64_t> id = sink_->SendRun(NewestTokenRun(committed_));
  if (!id.ok()) return id.status();
  const int32_t node = NewNode(committed_.back(), pos, -1, 0);
  nodes_[node].run = *id;
  nodes_[node].row = 0;
  InFlight f;
  f.id = *id;
  f.start = pos;
  f.nodes.push_back(node);
  f.rows = 1;
  ledger_.push_back(std::move(f));
  line_ = tip_ = node;
  ++counters_.runs_plain;
  return absl::OkStatus();
}

Controller::Draft Controller::DraftTree(std::vector<int32_t> context, float cutoff, float split,
                                        uint32_t budget, uint32_t max_branches,
                                        const std::function<bool()>& stop) {
  Draft d;
  if (!drafter_ || drafting_broken_ || budget == 0) return d;
  // Guesses not yet committed, for the sampler's history (penalties).
  std::vector<int32_t> pending(context.begin() + static_cast<std::ptrdiff_t>(committed_.size()),
                               context.end());
  uint32_t branches = 1;
  int32_t prev_main = -1;  // run-local index of the previous main-chain token
  while (d.tokens.size() < budget) {
    if (!d.tokens.empty() && stop && stop()) {
      d.interrupted = true;
      break;
    }
    absl::StatusOr<std::span<const float>> logits = drafter_->NextLogits(context);
    if (absl::IsCancelled(logits.status())) {  // interrupted: a result is waiting
      d.interrupted = true;
      break;
    }
    if (!logits.ok()) {
      ++counters_.draft_failures;
      drafting_broken_ = true;
      spdlog::warn("drafting stopped for this request: {}", std::string(logits.status().message()));
      break;
    }
    sampling::SparseDist q;
    std::vector<int32_t> picks;
    if (greedy()) {
      // The draft's logits get the target's bias and penalties too, so that it guesses the
      // target's adjusted argmax.
      std::span<const float> lg = *logits;
      std::vector<float> adjusted;
      if (sampling::AdjustsLogits(options_.sampling)) {
        adjusted.assign(lg.begin(), lg.end());
        sampler_.AdjustAfter(adjusted, pending);
        lg = adjusted;
      }
      q = DraftTopK(lg, 1 + std::max<uint32_t>(max_branches, 1));
      if (q.empty() || q.probs[0] < cutoff) break;
      picks.push_back(q.ids[0]);
      for (size_t i = 1; i < q.size() && branches + (picks.size() - 1) < max_branches; ++i) {
        if (q.probs[i] > split) picks.push_back(q.ids[i]);
      }
    } else {
      q = sampler_.DistributionAfter(*logits, pending);
      if (q.empty()) break;
      const float top = *std::max_element(q.probs.begin(), q.probs.end());
      if (top < cutoff) break;
      // How many siblings is decided from q alone, before drawing, so that the candidates are
      // plain draws without replacement from q.
      uint32_t k = 1;
      for (float p : q.probs) {
        if (p > split && branches + (k - 1) < max_branches) ++k;
      }
      k = std::min<uint32_t>(k, static_cast<uint32_t>(q.size()));
      picks = sampling::DraftCandidates(q, static_cast<int32_t>(std::max<uint32_t>(k, 1)),
                                        sampler_.rng());
      if (picks.empty()) break;
    }
    // Siblings never push the batch past the budget: keep room for the main token.
    const size_t room = budget - d.tokens.size();
    if (picks.size() > room) picks.resize(room);
    if (prev_main < 0) {
      d.root_q = q;
    } else {
      d.child_q[static_cast<size_t>(prev_main)] = q;
    }
    const int32_t main_index = static_cast<int32_t>(d.tokens.size());
    for (size_t i = 0; i < picks.size(); ++i) {
      d.tokens.push_back(picks[i]);
      d.parents.push_back(prev_main);
      d.branches.push_back(i == 0 ? 0 : branches++);
      d.child_q.emplace_back();
    }
    ++d.main_len;
    prev_main = main_index;
    context.push_back(picks[0]);
    pending.push_back(picks[0]);
  }
  return d;
}

absl::Status Controller::LaunchTree(RunSpec run, const Draft& d, int32_t attach, int32_t lead) {
  // Run layout: [lead?] then the draft's tokens; parents are run-local.
  const int32_t off = lead >= 0 ? 1 : 0;
  const uint32_t base = nodes_[attach].pos + 1;
  bool linear = true;
  std::vector<uint32_t> pos(d.tokens.size());
  for (size_t i = 0; i < d.tokens.size(); ++i) {
    pos[i] = d.parents[i] < 0 ? base : pos[static_cast<size_t>(d.parents[i])] + 1;
    if (d.parents[i] != static_cast<int32_t>(i) - 1 || d.branches[i] != 0) linear = false;
  }
  for (size_t i = 0; i < d.tokens.size(); ++i) {
    run.tokens.push_back(d.tokens[i]);
    run.positions.push_back(pos[i]);
  }
  if (!linear) {
    if (lead >= 0) {
      run.parents.push_back(-1);
      run.branches.push_back(0);
    }
    for (size_t i = 0; i < d.tokens.size(); ++i) {
      // Roots hang off the lead token when there is one, else off the partition's prefix.
      run.parents.push_back(d.parents[i] < 0 ? (lead >= 0 ? 0 : -1) : d.parents[i] + off);
      run.branches.push_back(d.branches[i]);
    }
  }
  for (size_t i = 0; i < run.tokens.size(); ++i)
    run.result_rows.push_back(static_cast<uint32_t>(i));
  run.speculative = true;
  absl::StatusOr<uint64_t> id = sink_->SendRun(run);
  if (!id.ok()) return id.status();

  InFlight f;
  f.id = *id;
  f.speculative = true;
  f.partition = run.partition;
  f.start = run.positions.front();
  if (lead >= 0) {
    nodes_[lead].run = *id;
    nodes_[lead].row = 0;
    f.nodes.push_back(lead);
  }
  std::vector<int32_t> ids(d.tokens.size());
  nodes_[attach].child_q = d.root_q;
  for (size_t i = 0; i < d.tokens.size(); ++i) {
    const int32_t parent = d.parents[i] < 0 ? attach : ids[static_cast<size_t>(d.parents[i])];
    ids[i] = NewNode(d.tokens[i], pos[i], parent, d.branches[i]);
    nodes_[ids[i]].run = *id;
    nodes_[ids[i]].row = static_cast<int32_t>(i) + off;
    f.nodes.push_back(ids[i]);
  }
  for (size_t i = 0; i < d.tokens.size(); ++i) nodes_[ids[i]].child_q = d.child_q[i];
  f.rows = f.nodes.size();
  ledger_.push_back(std::move(f));
  counters_.tokens_drafted += d.tokens.size();
  ++counters_.runs_speculative;
  RecomputeTip();
  return absl::OkStatus();
}

absl::Status Controller::SendSync() {
  // One run: the newest committed token plus a drafted tree, all rows verified by this run.
  const uint32_t base = static_cast<uint32_t>(committed_.size()) - 1;
  const uint32_t room = limit_ > base + 1 ? limit_ - (base + 1) : 0;
  Draft d;
  if (room > 0 && !drafting_broken_) {
    d = DraftTree(committed_, options_.spec.p_accept, options_.spec.p_split,
                  std::min({EffectiveDraftMax(options_.spec), room, options_.max_run_tokens - 1}),
                  options_.spec.max_branches);
  }
  if (d.tokens.empty()) return SendPlain();
  RunSpec run;
  run.verified = true;  // it carries the newest committed token
  run.partition = AllocPartition();
  run.fork = ForkSpec{run.partition, 0, 0, base};
  run.tokens.push_back(committed_.back());
  run.positions.push_back(base);
  const int32_t lead = NewNode(committed_.back(), base, -1, 0);
  line_ = tip_ = lead;
  return LaunchTree(std::move(run), d, lead, lead);
}

absl::StatusOr<int> Controller::Speculate(const std::function<bool()>& result_waiting) {
  if (tree_) return tree_->Speculate(result_waiting);
  if (mode_ != Mode::kPipeInfer || finished() || drafting_broken_) return 0;
  int launched = 0;
  uint32_t iter = 0;
  while (true) {
    if (ledger_.size() >= max_inflight_) break;
    if (options_.spec.no_continuous && allowance_ == 0) break;
    if (result_waiting && result_waiting()) break;
    if (tip_ < 0) break;  // a committed token awaits its plain run
    const uint32_t base = nodes_[tip_].pos + 1;
    if (base >= limit_) break;
    const float adjust = Adjust(iter);
    const float cutoff = options_.spec.p_accept + adjust;
    if (cutoff >= 1.0f) break;
    Draft d = DraftTree(
        Assumed(), cutoff, options_.spec.p_split + adjust,
        std::min({EffectiveDraftMax(options_.spec), limit_ - base, options_.max_run_tokens}),
        options_.spec.max_branches, result_waiting);
    if (d.tokens.empty()) {
      if (!d.interrupted) ++n_failed_;
      break;
    }
    RunSpec run;
    run.partition = AllocPartition();
    // Fork from the partition that holds the tip's path: the tip's run's partition (on the tip's
    // branch), or canonical when the tip came from a plain run (canonical holds it once the runs
    // before this one have been applied).
    uint32_t src = 0, src_branch = 0;
    for (const InFlight& f : ledger_) {
      if (f.id == nodes_[tip_].run && f.speculative) {
        src = f.partition;
        src_branch = nodes_[tip_].branch;
      }
    }
    run.fork = ForkSpec{run.partition, src, src_branch, base};
    if (absl::Status st = LaunchTree(std::move(run), d, tip_, -1); !st.ok()) return st;
    ++launched;
    ++iter;
    if (allowance_ > 0) --allowance_;
  }
  return launched;
}

void Controller::CommitToken(int32_t token, int32_t node) {
  committed_.push_back(token);
  sampler_.Accept(token);
  line_ = node;
  finish_ = FinishAfter(options_.stop, token, committed_.size(), limit_);
}

void Controller::RecomputeTip() {
  if (line_ < 0) {
    tip_ = -1;
    return;
  }
  int32_t n = line_;
  while (!nodes_[n].children.empty()) n = nodes_[n].children.front();
  tip_ = n;
}

absl::Status Controller::InvalidateStale() {
  // Runs that still matter hold descendants of line_.
  std::set<uint64_t> keep;
  if (line_ >= 0) {
    std::vector<int32_t> stack{line_};
    while (!stack.empty()) {
      const int32_t n = stack.back();
      stack.pop_back();
      keep.insert(nodes_[n].run);
      for (int32_t c : nodes_[n].children) stack.push_back(c);
    }
  }
  std::vector<uint64_t> ids;
  std::vector<uint32_t> parts;
  std::deque<InFlight> kept;
  for (InFlight& f : ledger_) {
    // Plain runs feed committed tokens only, so nothing can invalidate them.
    if (keep.count(f.id) || !f.speculative) {
      kept.push_back(std::move(f));
      continue;
    }
    ids.push_back(f.id);
    dropped_.insert(f.id);
    parts.push_back(f.partition);
    for (int32_t n : f.nodes) {
      nodes_[n].dead = true;
      if (const int32_t p = nodes_[n].parent; p >= 0) {
        auto& ch = nodes_[p].children;
        ch.erase(std::remove(ch.begin(), ch.end(), n), ch.end());
      }
    }
  }
  ledger_ = std::move(kept);
  if (ids.empty()) return absl::OkStatus();
  counters_.runs_invalidated += ids.size();
  if (!options_.spec.no_cancel) {
    sink_->Cancel(ids);
    counters_.runs_cancelled += ids.size();
  }
  KvOpSpec rel;
  rel.kind = KvOpSpec::Kind::kRelease;
  rel.partitions = parts;
  for (uint32_t p : parts) FreePartition(p);
  return sink_->SendKvOp(rel);
}

absl::Status Controller::OnOutcome(const Outcome& o) {
  if (tree_) return tree_->OnOutcome(o);
  InFlight r;
  absl::StatusOr<bool> taken = TakeOutcome(o, dropped_, ledger_, counters_, &r);
  if (!taken.ok()) return taken.status();
  if (!*taken) return absl::OkStatus();
  if (o.rows.size() != r.rows) {
    return absl::InternalError(
        absl::StrCat("run ", r.id, " returned ", o.rows.size(), " result rows, expected ", r.rows));
  }
  if (finished()) return absl::OkStatus();
  if (!o.rows.empty()) ++counters_.verifications;

  // Walk down the tree from the committed line while this run holds the row that predicts the
  // next position.
  bool emitted = false;
  while (!finished() && line_ >= 0 && nodes_[line_].run == r.id) {
    const Node& u = nodes_[line_];
    std::vector<int32_t> cand;
    for (int32_t c : u.children) cand.push_back(nodes_[c].token);
    absl::StatusOr<Choice> choice =
        ChooseToken(o.rows[static_cast<size_t>(u.row)], greedy(), sampler_, u.child_q, cand, r.id);
    if (!choice.ok()) return choice.status();
    const int32_t token = choice->token, chosen = choice->chosen;
    if (absl::Status st =
            RecordLogprob(options_, o.rows[static_cast<size_t>(u.row)], token, &logprobs_);
        !st.ok()) {
      return st;
    }
    emitted = true;
    if (nodes_[line_].run == r.id) r.deepest = line_;
    if (chosen >= 0) {
      ++counters_.tokens_accepted;
      if (chosen > 0) ++counters_.sibling_accepts;
      CommitToken(token, u.children[static_cast<size_t>(chosen)]);
      if (nodes_[line_].run == r.id) r.deepest = line_;
    } else {
      CommitToken(token, -1);  // a correction or a bonus token: not fed yet
    }
  }
  if (emitted) n_failed_ = 0;
  if (finished()) return absl::OkStatus();
  if (emitted && drafter_ && !drafting_broken_) drafter_->Committed(committed_);

  // Adopt the verified part of a speculative run's partition into canonical.
  if (r.speculative) {
    KvOpSpec op;
    if (r.deepest >= 0) {
      op.kind = KvOpSpec::Kind::kCommit;
      op.partition = r.partition;
      op.branch = nodes_[r.deepest].branch;
      op.n_positions = nodes_[r.deepest].pos + 1;
      op.release = true;
    } else {
      op.kind = KvOpSpec::Kind::kRelease;
      op.partitions.push_back(r.partition);
    }
    FreePartition(r.partition);
    if (absl::Status st = sink_->SendKvOp(op); !st.ok()) return st;
  }
  if (absl::Status st = InvalidateStale(); !st.ok()) return st;
  RecomputeTip();
  allowance_ = 1;
  if (line_ >= 0) return absl::OkStatus();  // a valid run already feeds the newest token
  if (!ledger_.empty()) {
    return absl::InternalError(absl::StrCat("after run ", r.id, ": ", ledger_.size(),
                                            " runs in flight but the newest token is not fed"));
  }
  if (mode_ == Mode::kSync) return SendSync();
  return SendPlain();
}

std::vector<int32_t> Controller::TakeEmitted() {
  if (tree_) return tree_->TakeEmitted();
  return TakeSince(committed_, &emitted_);
}

std::vector<TokenLogprob> Controller::TakeLogprobs() {
  if (tree_) return tree_->TakeLogprobs();
  return std::exchange(logprobs_, {});
}

bool Controller::Dropped(uint64_t run_id) const {
  if (tree_) return tree_->Dropped(run_id);
  return dropped_.count(run_id) > 0;
}

std::vector<uint64_t> Controller::OutstandingRunIds() const {
  if (tree_) return tree_->OutstandingRunIds();
  return OutstandingIds(dropped_, ledger_);
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
