// What both speculation controllers (the paper's, controller.cc, and the dynamic tree,
// tree_controller.cc) do the same way: checking a prompt, splitting the prefill into runs,
// applying the stop rules to a committed token, and reading a result row as a distribution.
#pragma once

#include <algorithm>
#include <cstdint>
#include <deque>
#include <set>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "sampling/sampling.h"
#include "spec/pipeline_types.h"

namespace pipeinfer::spec {

// Checks a prompt against the stop rules' context; returns the limit on positions: no token at a
// position >= the limit is ever needed (prompt + max_new_tokens, at most max_context).
absl::StatusOr<uint32_t> PositionLimit(std::span<const int32_t> prompt, const StopRules& stop);

// The prefill as plain runs of at most `max_run_tokens` tokens; the last one returns the row of
// the prompt's last token.
std::vector<RunSpec> PrefillRuns(std::span<const int32_t> prompt, uint32_t max_run_tokens);

// The run size for a prefill of `prompt_len` tokens. The runs are sent back to back and follow
// each other through the stages (a stage takes one run of a request per pass), so on an idle
// pipeline whose passes cost a + b * tokens (the stage cost fit of options.costs), smaller runs
// bring the first token sooner while the per-token cost dominates: plan::BestPrefillRuns, the
// planner's model. Without a fit, with other requests' runs in flight (every extra run costs each
// stage a fixed cost that others wait for) or with split_prefill off: max_run_tokens.
uint32_t PrefillRunTokens(uint32_t prompt_len, const ControllerOptions& options);

// A plain run that feeds the newest committed token into canonical (one result row).
RunSpec NewestTokenRun(const std::vector<int32_t>& committed);

// The committed tokens from index *emitted on (the ones not streamed yet); *emitted moves to the
// end.
std::vector<int32_t> TakeSince(const std::vector<int32_t>& committed, size_t* emitted);

// How a request ends once `token` is committed and it has `length` tokens (prompt included).
Finish FinishAfter(const StopRules& stop, int32_t token, size_t length, uint32_t limit);

// The target's distribution for the next token from a result row: a single token for ARGMAX
// (greedy requests only), the row's own filtered distribution for SPARSE, the sampler's for FULL.
absl::StatusOr<sampling::SparseDist> RowDistribution(const TargetRow& row, bool greedy,
                                                     sampling::Sampler& sampler, uint64_t run_id);

// Verification at one node, from the row its run returned: the token the target emits after it and
// which of its children (in order) that token is, -1 for none. Greedy: the row's most likely token.
// Sampled: multi-draft rejection sampling over the children, drawn without replacement from
// `children_q` (sampling/speculative.h), or a plain draw from the row without children.
struct Choice {
  int32_t token = -1;
  int32_t chosen = -1;
};
absl::StatusOr<Choice> ChooseToken(const TargetRow& row, bool greedy, sampling::Sampler& sampler,
                                   const sampling::SparseDist& children_q,
                                   std::span<const int32_t> children, uint64_t run_id);

// The log-probability of `token` under the row's raw logits (log-softmax at temperature 1) and
// the `n_top` most likely tokens (ties to the lower id). Needs a FULL row (INTERNAL otherwise).
absl::StatusOr<TokenLogprob> RowLogprob(const TargetRow& row, int32_t token, uint32_t n_top);

// With options.logprobs >= 0, appends RowLogprob(row, token, options.logprobs) to `out`.
absl::Status RecordLogprob(const ControllerOptions& options, const TargetRow& row, int32_t token,
                           std::vector<TokenLogprob>* out);

// The outcome intake both controllers share. An outcome of a dropped (invalidated) run is
// counted and ignored: returns false. Otherwise it must be the oldest run in flight's, which is
// popped into `front` (returns true); a tombstone for it is ABORTED (the pipeline skipped work
// the request needed).
template <typename InFlightT>
absl::StatusOr<bool> TakeOutcome(const Outcome& o, std::set<uint64_t>& dropped,
                                 std::deque<InFlightT>& ledger, Counters& counters,
                                 InFlightT* front) {
  if (auto it = dropped.find(o.run_id); it != dropped.end()) {
    dropped.erase(it);
    if (o.tombstone) ++counters.runs_tombstoned;
    return false;
  }
  if (ledger.empty() || ledger.front().id != o.run_id) {
    return absl::InternalError(absl::StrCat("unexpected outcome for run ", o.run_id,
                                            " (expected run ",
                                            ledger.empty() ? 0 : ledger.front().id, ")"));
  }
  *front = std::move(ledger.front());
  ledger.pop_front();
  if (o.tombstone) {
    ++counters.runs_tombstoned;
    return absl::AbortedError(
        absl::StrCat("run ", front->id, " was skipped by the pipeline (", o.tombstone_reason, ")"));
  }
  return true;
}

// Appends `node` (its parent, if any, already in `nodes`) and links it as its parent's newest
// child; returns its id.
template <typename NodeT>
int32_t AddNode(std::vector<NodeT>& nodes, NodeT node) {
  const int32_t parent = node.parent;
  nodes.push_back(std::move(node));
  const int32_t id = static_cast<int32_t>(nodes.size()) - 1;
  if (parent >= 0) nodes[static_cast<size_t>(parent)].children.push_back(id);
  return id;
}

// Run ids whose outcome is still to come: the dropped ones and those in flight, ascending.
template <typename InFlightT>
std::vector<uint64_t> OutstandingIds(const std::set<uint64_t>& dropped,
                                     const std::deque<InFlightT>& ledger) {
  std::vector<uint64_t> ids(dropped.begin(), dropped.end());
  for (const InFlightT& f : ledger) ids.push_back(f.id);
  std::sort(ids.begin(), ids.end());
  return ids;
}

}  // namespace pipeinfer::spec
