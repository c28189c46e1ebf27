// TreeController's growth (docs/speculation.md, "Growing the tree"): drafting nodes, their
// values and timing weights, the cost inputs, and the best-first building of a run.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <queue>
#include <utility>

#include "sampling/speculative.h"
#include "spec/spec_budget.h"
#include "spec/top_k.h"
#include "spec/tree_controller.h"

namespace pipeinfer::spec {
namespace {

// Candidates kept per expanded node.
constexpr size_t kCands = 8;
// Cost model before the pipeline's own timings are known: a stage pass of n tokens costs
// 1 + kDefaultTokenCost * n (relative units).
constexpr double kDefaultTokenCost = 0.05;
// Nodes with a smaller value are never sent.
constexpr double kMinValue = 0.005;
// How much the cluster's counts weigh next to the request's own.
constexpr double kClusterWeight = 0.3;
// Nodes drafted ahead while the pipeline is full, per call (drafting is not free: most nodes
// drafted far ahead are never used).
constexpr uint32_t kPreExpandBudget = 2;
// A node sent one stage pass earlier than needed is worth this much of one sent on time.
constexpr double kEarly = 0.5;
// An unexpanded node can yield a child worth at most this fraction of its own value.
constexpr double kExpandBound = 0.95;
// Pacing: the next run is built when stage 0 has at most this many passes of a full run left of
// the runs before it (time to draft and send it). Measured on 6 emulated stages with the bundled
// pair: 0.0-0.2 gave the same speed, 0.5 and 1.0 about 2 % less (fresher runs win).
constexpr double kPaceLead = 0.2;

// The draft's most likely tokens with their probabilities (softmax at temperature 1), sorted.

}  // namespace

std::vector<int32_t> TreeController::PathTokens(int32_t node) const {
  std::vector<int32_t> below;
  for (int32_t n = node; n >= 0 && n != line_; n = nodes_[n].parent)
    below.push_back(nodes_[n].token);
  std::vector<int32_t> seq = committed_;
  seq.insert(seq.end(), below.rbegin(), below.rend());
  return seq;
}

bool TreeController::Expand(int32_t node, const std::function<bool()>& stop, Build& b) {
  if (!drafter_ || drafting_broken_) return false;
  if (stop && !b.nodes.empty() && stop()) return false;
  const std::vector<int32_t> seq = PathTokens(node);
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<std::span<const float>> logits = drafter_->NextLogits(seq);
  const double us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  if (absl::IsCancelled(logits.status())) return false;
  if (!logits.ok()) {
    ++counters_.draft_failures;
    drafting_broken_ = true;
    spdlog::warn("drafting stopped for this request: {}", std::string(logits.status().message()));
    return false;
  }
  draft_us_ = draft_us_ == 0 ? us : 0.8 * draft_us_ + 0.2 * us;
  ++b.expansions;
  Node& v = nodes_[node];
  v.expanded = true;
  std::vector<int32_t> pending(seq.begin() + static_cast<std::ptrdiff_t>(committed_.size()),
                               seq.end());
  if (greedy()) {
    // The target's bias and penalties apply to the draft's logits too (see Controller).
    std::span<const float> lg = *logits;
    std::vector<float> adjusted;
    if (sampling::AdjustsLogits(options_.sampling)) {
      adjusted.assign(lg.begin(), lg.end());
      sampler_.AdjustAfter(adjusted, pending);
      lg = adjusted;
    }
    const sampling::SparseDist q = DraftTopK(lg, kCands);
    for (size_t i = 0; i < q.size(); ++i) {
      v.cands.push_back(Cand{q.ids[i], q.probs[i], static_cast<int>(i) + 1});
    }
  } else {
    v.q_dist = sampler_.DistributionAfter(*logits, pending);
    const std::vector<int32_t> draws =
        sampling::DraftCandidates(v.q_dist, static_cast<int32_t>(kCands), sampler_.rng());
    // Whether the i-th draw becomes a child may depend on the draws before it, never on the draw
    // itself (the multi-draft rejection sampling's condition): so a draw is valued by q's i-th
    // largest probability, not by its own.
    std::vector<float> sorted = v.q_dist.probs;
    std::sort(sorted.begin(), sorted.end(), std::greater<float>());
    for (size_t i = 0; i < draws.size(); ++i) {
      v.cands.push_back(
          Cand{draws[i], sorted[std::min(i, sorted.size() - 1)], static_cast<int>(i) + 1});
    }
  }
  return true;
}

double TreeController::Acceptance(int rank, float q) const {
  return local_.Estimate(rank, q, &cluster_, kClusterWeight);
}

void TreeController::ComputeValues() {
  if (line_ < 0) return;
  nodes_[line_].value = 1.0;
  std::vector<int32_t> stack{line_};
  while (!stack.empty()) {
    const int32_t n = stack.back();
    stack.pop_back();
    for (int32_t c : nodes_[n].children) {
      nodes_[c].value = nodes_[n].value * Acceptance(nodes_[c].rank, nodes_[c].q);
      stack.push_back(c);
    }
  }
}

double TreeController::StageA() const {
  if (options_.costs) {
    const SpecBudget::Snapshot s = options_.costs->snapshot();
    if (s.have_model && s.a_us > 0) return s.a_us;
  }
  return 10000.0;
}

double TreeController::StageB() const {
  if (options_.costs) {
    const SpecBudget::Snapshot s = options_.costs->snapshot();
    if (s.have_model && s.a_us > 0) return std::max(s.b_us, 0.0);
  }
  return 10000.0 * kDefaultTokenCost;
}

uint32_t TreeController::RoomBelow(int32_t node) const {
  const uint32_t child = nodes_[node].pos + 1;
  return child < limit_ ? limit_ - child : 0;
}

uint32_t TreeController::InflightLimit() const {
  if (options_.spec.max_inflight != 0 || !options_.costs) return max_inflight_;
  return options_.costs->InflightShare(max_inflight_);
}

bool TreeController::Paced() const {
  if (options_.spec.no_continuous || !options_.costs) return false;
  const SpecBudget::Snapshot s = options_.costs->snapshot();
  return s.have_model && s.a_us > 0;
}

std::optional<std::chrono::steady_clock::time_point> TreeController::Stage0Free() const {
  if (!Paced()) return std::nullopt;
  const SpecBudget::Snapshot s = options_.costs->snapshot();
  std::chrono::steady_clock::time_point t{};
  for (const InFlight& f : ledger_) {
    const double us = s.a_us + std::max(0.0, s.b_us) * f.tokens;
    t = std::max(t, f.sent) + std::chrono::microseconds(static_cast<int64_t>(us));
  }
  return t;
}

double TreeController::StepsUntilLineRow() const {
  // One run returns per stage pass once the pipeline is full: the row of line_ comes back when
  // its run has crossed every stage.
  if (line_ < 0) return 0;
  for (const InFlight& f : ledger_) {
    if (f.id != nodes_[line_].run) continue;
    const double pass = StageA() + StageB() * static_cast<double>(f.nodes.size());
    const double elapsed =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - f.sent)
            .count();
    return std::max(0.0, static_cast<double>(options_.n_stages) - elapsed / pass);
  }
  return 0;
}

void TreeController::Grow(Build& b, uint32_t cap, bool sync, const std::function<bool()>& stop) {
  ComputeValues();
  const double a = StageA(), bt = StageB();
  const double stages = std::max<uint32_t>(options_.n_stages, 1);
  // Sync: the round's expected tokens per unit of time, (1 + V) / (stages passes + drafting).
  auto sync_rate = [&](size_t n, double v, uint32_t e) {
    return (1.0 + v) / (stages * (a + bt * static_cast<double>(n + 1)) + draft_us_ * e);
  };
  // Pipeinfer: a node is worth what it saves. Accepted without having been sent, its token would
  // need a plain run and a refill of the pipeline (`refill`); sent now, it is computed by the time
  // its parent's row arrives if that is at least a pipeline's crossing away, and otherwise it
  // saves only part of the wait: weight min(1, (steps until its parent's row) / stages). Its cost
  // is one token more in every stage pass and one draft pass.
  const double r = sync ? 0.0 : StepsUntilLineRow();
  const double refill = stages * (a + bt * 4.0);
  const double line_pos = line_ >= 0 ? nodes_[line_].pos : 0;
  // When is a node needed? Its parent is verified after line_'s row (r stage passes) and about
  // (depth - 1) / g more results (g: tokens the request commits per result); a node sent now
  // arrives after `stages` passes. Sent late, it saves only part of a refill; sent early, it could
  // have waited for a later run (halved per pass it is early), which leaves room for the nodes
  // that are due now, such as the siblings of the level the pipeline verifies next.
  const double g = levels_per_result_;
  auto weight = [&](uint32_t pos) {
    if (sync) return 1.0;
    const double d = static_cast<double>(pos) - line_pos;  // depth below line_
    const double due = r + (d - 1.0) / g;                  // passes until its parent's row
    if (due < stages) return std::max(due, 1.0) / stages;
    return std::pow(kEarly, std::max(0.0, due - stages - 1.0));
  };
  // A draft_max the request or service names is a fixed budget (the run is filled best-first up
  // to it); 0 lets the cost model decide.
  const bool fixed = options_.spec.draft_max != 0;
  // Paced runs are drafted while stage 0 is still busy with the runs before them (PreExpand, and
  // the drafting below is bounded to half a pass), so their draft passes delay nothing: only
  // the token's share of the passes is priced. Measured on the oracle draft (1-3 ms a pass) at
  // agreement 0.8: 36.4 tokens/s against 33.7 with d priced too; no change on the bundled pair.
  const double node_cost = bt + (Paced() ? 0.0 : draft_us_);
  auto worth = [&](double score) {
    if (sync || fixed) return score >= kMinValue;
    return score * refill >= node_cost && score >= kMinValue;
  };
  // What expanding a node is expected to yield: its value times a typical first child's
  // acceptance (the draft's favourite at a middling confidence).
  const double typical_child = std::min(kExpandBound, Acceptance(1, 0.3f));
  using Entry = std::pair<double, int32_t>;  // (score bound, node)
  std::priority_queue<Entry> cands;          // parents with an unused candidate, by child score
  std::priority_queue<Entry> unexpanded;     // parents not yet expanded, by a child's best score
  auto offer = [&](int32_t n) {
    const Node& u = nodes_[n];
    if (u.dead || RoomBelow(n) == 0) return;
    const double w = weight(u.pos + 1);
    if (!u.expanded) {
      unexpanded.push({u.value * typical_child * w, n});
    } else if (u.next < u.cands.size()) {
      const Cand& c = u.cands[u.next];
      cands.push({u.value * Acceptance(c.rank, c.q) * w, n});
    }
  };
  if (line_ >= 0) {
    std::vector<int32_t> stack{line_};
    while (!stack.empty()) {
      const int32_t n = stack.back();
      stack.pop_back();
      offer(n);
      for (int32_t c : nodes_[n].children) stack.push_back(c);
    }
  }
  for (int32_t n : b.nodes) offer(n);
  while (b.nodes.size() < cap) {
    // Drafting must keep up with the pipeline: a run's draft passes take at most a stage pass.
    if (!sync && !fixed && !b.nodes.empty() && draft_us_ * b.expansions > 0.5 * a) break;
    const double best = cands.empty() ? 0.0 : cands.top().first;
    if (!unexpanded.empty() && unexpanded.top().first > best && worth(unexpanded.top().first)) {
      const int32_t n = unexpanded.top().second;
      unexpanded.pop();
      if (!Expand(n, stop, b)) break;  // interrupted (a result waits) or drafting failed
      offer(n);
      continue;
    }
    if (cands.empty()) break;
    const auto [score, parent] = cands.top();
    cands.pop();
    if (!worth(score)) break;
    Node& p = nodes_[parent];
    const Cand c = p.cands[p.next++];
    const double v = nodes_[parent].value * Acceptance(c.rank, c.q);
    if (sync && !b.nodes.empty() &&
        sync_rate(b.nodes.size() + 1, b.value + v, b.expansions) <
            sync_rate(b.nodes.size(), b.value, b.expansions)) {
      break;
    }
    const int32_t id = NewNode(c.token, nodes_[parent].pos + 1, parent);
    nodes_[id].q = c.q;
    nodes_[id].rank = c.rank;
    nodes_[id].value = v;
    b.nodes.push_back(id);
    b.value += v;
    offer(parent);
    offer(id);
  }
}

absl::StatusOr<int> TreeController::Speculate(const std::function<bool()>& result_waiting) {
  if (finished() || drafting_broken_) return 0;
  if (mode_ == Mode::kSync) {
    // While the prefill is in flight, draft after the prompt: the drafter's cache then holds it,
    // and the first round's drafting (done before the first token is streamed) is short.
    if (line_ >= 0 && !nodes_[line_].expanded && !(result_waiting && result_waiting())) {
      Build scratch;
      scratch.nodes.push_back(line_);
      Expand(line_, result_waiting, scratch);
    }
    return 0;
  }
  if (mode_ != Mode::kPipeInfer) return 0;
  int launched = 0;
  uint32_t cap = std::min(EffectiveDraftMax(options_.spec), options_.max_run_tokens);
  if (options_.spec.draft_max == 0) cap = std::min(cap, kDynamicRunCap);  // self-tuned
  wake_at_.reset();
  const uint32_t inflight_limit = InflightLimit();
  while (ledger_.size() < inflight_limit && !frozen_ && line_ >= 0) {
    // The no_continuous ablation: one run per verification, none while results are outstanding.
    if (options_.spec.no_continuous && allowance_ == 0) break;
    if (result_waiting && result_waiting()) break;
    if (const auto free = Stage0Free()) {
      // Paced: the lead covers at least the run's own drafting (a slow draft needs its time).
      const auto lead = std::chrono::microseconds(static_cast<int64_t>(
          std::max(kPaceLead * (StageA() + StageB() * cap), expansions_per_run_ * draft_us_)));
      if (*free - lead > std::chrono::steady_clock::now()) {
        wake_at_ = *free - lead;
        break;
      }
    }
    Build b;
    Grow(b, cap, /*sync=*/false, result_waiting);
    if (b.nodes.empty()) break;
    if (absl::Status st = Launch(b, -1); !st.ok()) return st;
    expansions_per_run_ = 0.8 * expansions_per_run_ + 0.2 * b.expansions;
    ++launched;
    if (allowance_ > 0) --allowance_;
  }
  if (!frozen_) PreExpand(kPreExpandBudget, result_waiting);
  // The committed frontier is always drafted: its candidates are scored by the next verification,
  // which is how the acceptance estimates learn even while nothing seems worth sending.
  if (line_ >= 0 && !nodes_[line_].expanded && !drafting_broken_ &&
      !(result_waiting && result_waiting())) {
    Build scratch;
    scratch.nodes.push_back(line_);
    Expand(line_, result_waiting, scratch);
  }
  return launched;
}

void TreeController::PreExpand(uint32_t budget, const std::function<bool()>& result_waiting) {
  // The pipeline is full: draft now the nodes the next runs will most likely grow from, so that a
  // run is ready as soon as a result makes room (drafting then costs the pipeline nothing).
  if (line_ < 0 || drafting_broken_) return;
  ComputeValues();
  std::vector<std::pair<double, int32_t>> todo;
  std::vector<int32_t> stack{line_};
  while (!stack.empty()) {
    const int32_t n = stack.back();
    stack.pop_back();
    const Node& u = nodes_[n];
    if (!u.expanded && RoomBelow(n) > 0 && u.value >= kMinValue) todo.push_back({u.value, n});
    for (int32_t c : u.children) stack.push_back(c);
  }
  // In the order Grow would want them: by the weighted score of their best possible child.
  const double stages = std::max<uint32_t>(options_.n_stages, 1);
  const double r = StepsUntilLineRow();
  for (auto& [score, n] : todo) {
    const double d = static_cast<double>(nodes_[n].pos + 1) - nodes_[line_].pos;
    const double due = r + (d - 1.0) / levels_per_result_;
    score *= due < stages ? std::max(due, 1.0) / stages
                          : std::pow(kEarly, std::max(0.0, due - stages - 1.0));
  }
  std::sort(todo.begin(), todo.end(), std::greater<>());
  const double typical_child = std::min(kExpandBound, Acceptance(1, 0.3f));
  const double refill = stages * (StageA() + StageB() * 4.0);
  while (!todo.empty() && todo.back().first * typical_child * refill < StageB() + draft_us_) {
    todo.pop_back();  // not worth a draft pass (the same test as Grow's)
  }
  Build scratch;
  for (size_t i = 0; i < todo.size() && i < budget; ++i) {
    if (result_waiting && result_waiting()) break;
    scratch.nodes.push_back(todo[i].second);  // so that Expand may be interrupted
    if (!Expand(todo[i].second, result_waiting, scratch)) break;
  }
}

}  // namespace pipeinfer::spec
