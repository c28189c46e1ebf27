#include "spec/tree_controller.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "sampling/speculative.h"
#include "spec/controller_common.h"
#include "spec/kv_demand.h"

namespace pipeinfer::spec {
namespace {

// A pipeinfer correction goes out as a lead run (SendLead) only while a draft pass costs at most
// kLeadDraftPass of a stage pass's fixed cost, and drafts for at most kLeadDraftShare of it.
constexpr double kLeadDraftPass = 0.25;
constexpr double kLeadDraftShare = 0.5;

}  // namespace

TreeController::TreeController(const ControllerOptions& options, PipelineSink* sink,
                               Drafter* drafter, Mode mode, uint32_t max_inflight)
    : options_(options),
      sink_(sink),
      drafter_(drafter),
      mode_(mode),
      max_inflight_(max_inflight),
      sampler_(options_.sampling) {
  slot_cap_ = TreeSlotCap(options_.spec, options_.n_stages);
  if (options_.acceptance) cluster_ = options_.acceptance->Snapshot();
}

int32_t TreeController::NewNode(int32_t token, uint32_t pos, int32_t parent) {
  Node n;
  n.token = token;
  n.pos = pos;
  n.parent = parent;
  return AddNode(nodes_, std::move(n));
}

absl::Status TreeController::Start(std::span<const int32_t> prompt) {
  if (!committed_.empty()) return absl::FailedPreconditionError("Start called twice");
  absl::StatusOr<uint32_t> limit = PositionLimit(prompt, options_.stop);
  if (!limit.ok()) return limit.status();
  limit_ = *limit;
  committed_.assign(prompt.begin(), prompt.end());
  prompt_len_ = static_cast<uint32_t>(prompt.size());
  emitted_ = committed_.size();
  for (int32_t t : prompt) sampler_.Accept(t);
  for (const RunSpec& run :
       PrefillRuns(prompt, PrefillRunTokens(static_cast<uint32_t>(prompt.size()), options_))) {
    absl::StatusOr<uint64_t> id = sink_->SendRun(run);
    if (!id.ok()) return id.status();
    InFlight f;
    f.id = *id;
    f.tokens = static_cast<uint32_t>(run.tokens.size());
    f.sent = std::chrono::steady_clock::now();
    if (!run.result_rows.empty()) {
      const int32_t node = NewNode(committed_.back(), prompt_len_ - 1, -1);
      nodes_[node].run = *id;
      nodes_[node].row = 0;
      f.nodes.push_back(node);
      line_ = fed_ = node;
    }
    ledger_.push_back(std::move(f));
    ++counters_.runs_plain;
  }
  return absl::OkStatus();
}

int32_t TreeController::SlotOf(int32_t node) const {
  const Node& u = nodes_[node];
  return u.slot >= 0 ? u.slot : static_cast<int32_t>(u.pos);
}

absl::Status TreeController::Launch(const Build& b, int32_t lead) {
  RunSpec run;
  run.speculative = true;
  const int32_t root = lead >= 0 ? lead : line_;
  if (part_ == 0) {
    part_ = next_part_++;
    // The tree's prefix: canonical up to its root (a sync lead is fed by this run itself).
    part_base_ = static_cast<int32_t>(nodes_[root].pos) + (lead >= 0 ? 0 : 1);
    part_size_ = part_base_;
    run.fork = ForkSpec{part_, 0, 0, static_cast<uint32_t>(part_base_)};
  }
  run.partition = part_;
  std::vector<int32_t> order;
  if (lead >= 0) order.push_back(lead);
  order.insert(order.end(), b.nodes.begin(), b.nodes.end());
  std::vector<int32_t> local(nodes_.size(), -1);
  for (size_t i = 0; i < order.size(); ++i) local[order[i]] = static_cast<int32_t>(i);
  for (size_t i = 0; i < order.size(); ++i) {
    Node& u = nodes_[order[i]];
    u.slot = part_size_ + static_cast<int32_t>(i);
    run.tokens.push_back(u.token);
    run.positions.push_back(u.pos);
    run.branches.push_back(static_cast<uint32_t>(u.slot));
    run.result_rows.push_back(static_cast<uint32_t>(i));
    if (u.parent >= 0 && local[u.parent] >= 0) {
      run.parents.push_back(local[u.parent]);
      run.anchors.push_back(-1);
    } else {
      run.parents.push_back(-1);
      run.anchors.push_back(u.parent >= 0 ? SlotOf(u.parent) : -1);
    }
  }
  run.verified = lead >= 0;
  absl::StatusOr<uint64_t> id = sink_->SendRun(run);
  if (!id.ok()) return id.status();
  part_size_ += static_cast<int32_t>(order.size());
  InFlight f;
  f.id = *id;
  f.speculative = true;
  f.tokens = static_cast<uint32_t>(order.size());
  f.sent = std::chrono::steady_clock::now();
  for (size_t i = 0; i < order.size(); ++i) {
    nodes_[order[i]].run = *id;
    nodes_[order[i]].row = static_cast<int32_t>(i);
    f.nodes.push_back(order[i]);
  }
  ledger_.push_back(std::move(f));
  counters_.tokens_drafted += b.nodes.size();
  ++counters_.runs_speculative;
  if (part_size_ - part_base_ >= static_cast<int32_t>(slot_cap_)) frozen_ = true;
  return absl::OkStatus();
}

absl::Status TreeController::SendPlain() {
  const uint32_t pos = static_cast<uint32_t>(committed_.size()) - 1;
  absl::StatusOr<uint64_t> id = sink_->SendRun(NewestTokenRun(committed_));
  if (!id.ok()) return id.status();
  const int32_t node = NewNode(committed_.back(), pos, -1);
  nodes_[node].run = *id;
  nodes_[node].row = 0;
  InFlight f;
  f.id = *id;
  f.tokens = 1;
  f.sent = std::chrono::steady_clock::now();
  f.nodes.push_back(node);
  ledger_.push_back(std::move(f));
  line_ = fed_ = node;
  ++counters_.runs_plain;
  return absl::OkStatus();
}

absl::Status TreeController::SendLead() {
  const uint32_t pos = static_cast<uint32_t>(committed_.size()) - 1;
  const int32_t lead = NewNode(committed_.back(), pos, -1);
  line_ = lead;
  Build b;
  uint32_t cap = std::min(EffectiveDraftMax(options_.spec), options_.max_run_tokens - 1);
  std::function<bool()> stop;
  bool draft = !drafting_broken_ && RoomBelow(lead) > 0;
  if (mode_ == Mode::kPipeInfer) {
    if (options_.spec.draft_max == 0) cap = std::min(cap, kDynamicRunCap - 1);
    // The drafting delays the token itself; a plain run of it would let the next run follow one
    // pass behind, so the lead run pays only while its drafting stays well within a pass (a slow
    // draft sends the token alone, as before).
    const double budget_us = kLeadDraftShare * StageA();
    draft = draft && draft_us_ <= kLeadDraftPass * StageA();
    const auto t0 = std::chrono::steady_clock::now();
    stop = [t0, budget_us] {
      return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
                 .count() > budget_us;
    };
  }
  if (draft) Grow(b, cap, /*sync=*/true, stop);
  if (b.nodes.empty()) {
    nodes_[lead].dead = true;
    line_ = -1;
    return SendPlain();
  }
  if (absl::Status st = Launch(b, lead); !st.ok()) return st;
  fed_ = lead;
  return absl::OkStatus();
}

void TreeController::CommitToken(int32_t token) {
  committed_.push_back(token);
  sampler_.Accept(token);
  finish_ = FinishAfter(options_.stop, token, committed_.size(), limit_);
}

void TreeController::Observe(const Node& u, int32_t target) {
  // Every candidate of a verified node is scored (greedy: the target picked `target`).
  for (const Cand& c : u.cands) {
    const bool hit = c.token == target;
    local_.Observe(c.rank, c.q, hit);
    if (options_.acceptance) options_.acceptance->Observe(c.rank, c.q, hit);
  }
}

absl::Status TreeController::Prune() {
  // Alive = line_ and its subtree; a run with none of it is cancelled.
  std::vector<uint8_t> alive(nodes_.size(), 0);
  if (line_ >= 0) {
    std::vector<int32_t> stack{line_};
    while (!stack.empty()) {
      const int32_t n = stack.back();
      stack.pop_back();
      alive[n] = 1;
      for (int32_t c : nodes_[n].children) stack.push_back(c);
    }
  }
  // Nodes outside it are never visited again (growth starts at line_): nothing to mark.
  std::vector<uint64_t> ids;
  std::deque<InFlight> kept;
  for (InFlight& f : ledger_) {
    bool any = !f.speculative;  // plain runs feed committed tokens only
    for (int32_t n : f.nodes) any = any || alive[n];
    if (any) {
      kept.push_back(std::move(f));
    } else {
      ids.push_back(f.id);
      dropped_.insert(f.id);
    }
  }
  ledger_ = std::move(kept);
  if (ids.empty()) return absl::OkStatus();
  counters_.runs_invalidated += ids.size();
  if (!options_.spec.no_cancel) {
    sink_->Cancel(ids);
    counters_.runs_cancelled += ids.size();
  }
  return absl::OkStatus();
}

absl::Status TreeController::EndTree() {
  if (absl::Status st = Prune(); !st.ok()) return st;
  if (part_ == 0) return absl::OkStatus();
  KvOpSpec op;
  const bool adopt = fed_ >= 0 && nodes_[fed_].slot >= 0;
  if (adopt) {
    // Canonical adopts the verified path (its runs have all returned).
    op.kind = KvOpSpec::Kind::kCommit;
    op.partition = part_;
    op.branch = static_cast<uint32_t>(nodes_[fed_].slot);
    op.n_positions = nodes_[fed_].pos + 1;
    op.release = true;
  } else {
    op.kind = KvOpSpec::Kind::kRelease;
    op.partitions.push_back(part_);
  }
  part_ = 0;
  frozen_ = false;
  return sink_->SendKvOp(op);
}

absl::Status TreeController::OnOutcome(const Outcome& o) {
  InFlight r;
  absl::StatusOr<bool> taken = TakeOutcome(o, dropped_, ledger_, counters_, &r);
  if (!taken.ok()) return taken.status();
  if (!*taken) return absl::OkStatus();
  const size_t want_rows = r.nodes.size();
  if (o.rows.size() != want_rows) {
    return absl::InternalError(absl::StrCat("run ", r.id, " returned ", o.rows.size(),
                                            " result rows, expected ", want_rows));
  }
  if (finished()) return absl::OkStatus();
  if (!o.rows.empty()) ++counters_.verifications;
  allowance_ = 1;
  if (options_.acceptance) cluster_ = options_.acceptance->Snapshot();

  bool emitted = false;
  const size_t committed_before = committed_.size();
  while (!finished() && line_ >= 0 && nodes_[line_].run == r.id) {
    const Node& u = nodes_[line_];
    std::vector<int32_t> cand;
    for (int32_t c : u.children) cand.push_back(nodes_[c].token);
    absl::StatusOr<Choice> choice =
        ChooseToken(o.rows[static_cast<size_t>(u.row)], greedy(), sampler_, u.q_dist, cand, r.id);
    if (!choice.ok()) return choice.status();
    const int32_t token = choice->token, chosen = choice->chosen;
    if (absl::Status st =
            RecordLogprob(options_, o.rows[static_cast<size_t>(u.row)], token, &logprobs_);
        !st.ok()) {
      return st;
    }
    if (greedy()) {
      Observe(u, token);
    } else {
      for (size_t i = 0; i < cand.size(); ++i) {
        const Node& c = nodes_[u.children[i]];
        local_.Observe(c.rank, c.q, static_cast<int32_t>(i) == chosen);
        if (options_.acceptance) {
          options_.acceptance->Observe(c.rank, c.q, static_cast<int32_t>(i) == chosen);
        }
        if (static_cast<int32_t>(i) == chosen) break;
      }
    }
    emitted = true;
    fed_ = line_;
    if (chosen >= 0) {
      const int32_t child = u.children[static_cast<size_t>(chosen)];
      ++counters_.tokens_accepted;
      if (nodes_[child].rank > 1) ++counters_.sibling_accepts;
      if (nodes_[child].rank == 1 && u.rank > 1 && u.slot >= 0) ++counters_.branch_accepts;
      CommitToken(token);
      line_ = child;
      fed_ = child;
    } else {
      CommitToken(token);
      line_ = -1;  // a correction or a bonus token: not fed yet
    }
  }
  if (!o.rows.empty()) {
    levels_per_result_ = std::clamp(
        0.9 * levels_per_result_ + 0.1 * static_cast<double>(committed_.size() - committed_before),
        0.5, 8.0);
  }
  if (finished()) return absl::OkStatus();
  if (emitted && drafter_ && !drafting_broken_) drafter_->Committed(committed_);
  if (line_ >= 0) return Prune();
  if (absl::Status st = EndTree(); !st.ok()) return st;
  if (!ledger_.empty()) {
    return absl::InternalError(absl::StrCat("after run ", r.id, ": ", ledger_.size(),
                                            " runs in flight but the newest token is not fed"));
  }
  // Both modes feed the token with a tree grown under it in the same run (pipeinfer: no bigger
  // than its other runs), so that its first result already verifies the guesses after it.
  return SendLead();
}

std::vector<int32_t> TreeController::TakeEmitted() { return TakeSince(committed_, &emitted_); }

std::vector<TokenLogprob> TreeController::TakeLogprobs() { return std::exchange(logprobs_, {}); }

std::vector<uint64_t> TreeController::OutstandingRunIds() const {
  return OutstandingIds(dropped_, ledger_);
}

}  // namespace pipeinfer::spec
