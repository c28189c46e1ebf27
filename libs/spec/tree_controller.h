// The dynamic token tree (docs/speculation.md): the default speculation of `sync` and `pipeinfer`
// (the paper's micro-batches stay in controller.cc behind `paper_tree`). Transport-free and
// engine-free, driven like Controller (it is Controller's implementation when paper_tree is off).
//
// One tree per request. Its root is the newest committed token that has been fed (line_); its
// nodes are draft guesses, each a child of the node whose token it follows. A node is created when
// it is sent: every node in the tree is in flight or already computed. Candidates are the draft's
// top alternatives at an expanded node (greedy: its 8 most likely tokens; sampling: 8 tokens drawn
// without replacement from the filtered draft distribution, in draw order), and a node's children
// are always a prefix of its candidates, so sampled verification over siblings stays lossless.
//
// Value. A node's value is the estimated probability that verification accepts it: the product of
// the acceptance estimates (acceptance_model.h, learned online by rank and draft probability) of
// the edges from line_ down to it.
//
// Growth (pipeinfer). While fewer than InflightLimit() runs are in flight, and stage 0 is about to
// need one (pacing, Stage0Free), the controller builds a run best-first from the candidates whose
// parent is in the tree (or in the run being built), expanding nodes (one draft pass each) as
// their candidates are needed. A candidate's score is its value times a timing weight (is it due
// by the time a run sent now arrives?), and it is added while score x refill >= b + d: a refill
// (stages x a pass) is what a needed but unsent node costs, b a token's share of a stage pass
// (fitted from the results' stage timings), d a draft pass. An explicit draft_max is a fixed
// budget instead (filled best-first); 0 self-tunes up to kDynamicRunCap nodes.
//
// KV. The tree lives in one partition per tree: its first run forks it from canonical at the
// root's position, later runs append to it and hang their roots off the slots of their parents
// (Run.anchors); branch label = slot, so a commit names any node. When a result verifies a node,
// the walk goes on down the tree; siblings of accepted nodes and their subtrees die, and runs with
// nothing alive left are cancelled (the stages skip them, or stop them mid-pass). When
// verification yields a token the tree does not hold (a correction, or a bonus token after the
// deepest node), the tree ends: canonical adopts the path to the last accepted node (Commit),
// the partition is released, and the token is fed as the lead of a run that carries the next
// tree's first nodes (sync: the next round; pipeinfer: the first run of the refill).
//
// Sync: one run per round, [the newest committed token, then a best-first tree under it], sized
// for (1 + V) / (stages (a + b (n + 1)) + d e).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <set>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "sampling/sampling.h"
#include "spec/acceptance_model.h"
#include "spec/pipeline_types.h"

namespace pipeinfer::spec {

class TreeController {
 public:
  TreeController(const ControllerOptions& options, PipelineSink* sink, Drafter* drafter, Mode mode,
                 uint32_t max_inflight);

  absl::Status Start(std::span<const int32_t> prompt);
  absl::Status OnOutcome(const Outcome& outcome);
  absl::StatusOr<int> Speculate(const std::function<bool()>& result_waiting);

  bool finished() const { return finish_ != Finish::kNone; }
  Finish finish_reason() const { return finish_; }
  std::vector<int32_t> TakeEmitted();
  // The log-probabilities of the tokens TakeEmitted returned (options.logprobs >= 0).
  std::vector<TokenLogprob> TakeLogprobs();
  const std::vector<int32_t>& committed() const { return committed_; }
  uint32_t prompt_length() const { return prompt_len_; }
  std::vector<uint64_t> OutstandingRunIds() const;
  bool Dropped(uint64_t run_id) const { return dropped_.count(run_id) > 0; }
  const Counters& counters() const { return counters_; }
  size_t live_partitions() const { return part_ != 0 ? 1 : 0; }
  size_t runs_in_flight() const { return ledger_.size(); }
  // Pipeinfer paces its runs to stage 0 (see Paced): when Speculate held a run back, the time to
  // call it again even if no outcome arrives; nullopt otherwise.
  std::optional<std::chrono::steady_clock::time_point> wake_at() const { return wake_at_; }

 private:
  struct Cand {
    int32_t token = -1;
    float q = 0;   // the draft's probability of it
    int rank = 1;  // 1 = the draft's favourite (sampling: the first draw)
  };
  struct Node {
    int32_t token = -1;
    uint32_t pos = 0;
    int32_t parent = -1;
    std::vector<int32_t> children;  // a prefix of the parent's candidates, in their order
    float q = 1;
    int rank = 1;
    double value = 1;   // estimated P(accepted), from line_
    uint64_t run = 0;   // the run that feeds it
    int32_t row = -1;   // its result row in that run
    int32_t slot = -1;  // its slot in the tree partition (-1: canonical, at slot = pos)
    bool dead = false;
    bool expanded = false;
    std::vector<Cand> cands;
    size_t next = 0;              // cands[next] is the next child to add
    sampling::SparseDist q_dist;  // sampling: the distribution the candidates were drawn from
  };
  struct InFlight {
    uint64_t id = 0;
    bool speculative = false;
    uint32_t tokens = 0;
    std::chrono::steady_clock::time_point sent;
    std::vector<int32_t> nodes;  // row order
  };
  // A run being built: nodes in run order (parents before children).
  struct Build {
    std::vector<int32_t> nodes;
    double value = 0;
    uint32_t expansions = 0;
  };

  bool greedy() const { return options_.sampling.temperature <= 0.0f; }
  int32_t NewNode(int32_t token, uint32_t pos, int32_t parent);
  void CommitToken(int32_t token);
  // The sequence a node's children follow: committed tokens, then the path below line_ to it.
  std::vector<int32_t> PathTokens(int32_t node) const;
  // Draft pass at `node`: its candidates. False when the drafter stopped (interrupted or failed).
  bool Expand(int32_t node, const std::function<bool()>& stop, Build& b);
  double Acceptance(int rank, float q) const;
  void ComputeValues();
  // Best-first growth into `b` below the eligible nodes (line_'s subtree and `b`'s own nodes).
  // `sync` picks the sync objective (the run leads with the committed token).
  void Grow(Build& b, uint32_t cap, bool sync, const std::function<bool()>& stop);
  // Drafts (expands) up to `budget` of the most valuable unexpanded nodes while no result waits.
  void PreExpand(uint32_t budget, const std::function<bool()>& result_waiting);
  absl::Status SendPlain();
  // Feeds the newest committed token as the lead of a run with a best-first tree under it (the
  // sync objective; pipeinfer: at most kDynamicRunCap tokens when self-tuned); a plain run when
  // nothing is worth drafting.
  absl::Status SendLead();
  // Sends `b` as a speculative run into the tree partition (forking it when the tree starts);
  // `lead` is a sync run's leading committed token (a node without a run yet) or -1.
  absl::Status Launch(const Build& b, int32_t lead);
  // The node's slot in the tree partition.
  int32_t SlotOf(int32_t node) const;
  // Kills nodes outside line_'s subtree and cancels runs with nothing alive.
  absl::Status Prune();
  // The tree ended: cancels what is in flight, adopts the verified path, releases the partition.
  absl::Status EndTree();
  void Observe(const Node& u, int32_t target);
  // Stage passes until line_'s row comes back (estimated from when its run was sent).
  double StepsUntilLineRow() const;
  double StageA() const;
  double StageB() const;
  uint32_t RoomBelow(int32_t node) const;
  // Pacing: a run is built only when stage 0 is about to need it, so that it is grown from every
  // result back by then (runs sent at once queue at stage 0, built from older knowledge). Stage 0
  // takes this request's live runs in send order, each for a + b * tokens (the stage cost fit):
  // the time it will be free. Nullopt when not Paced().
  std::optional<std::chrono::steady_clock::time_point> Stage0Free() const;
  // Runs are paced: there is a stage cost fit, and not the no_continuous ablation (which keeps the
  // paper's timing).
  bool Paced() const;
  // Runs this request may have in flight now: max_inflight (stages + 1 by default, one per stage
  // and one being built) when alone; beside other requests a derived limit is shared between
  // them (SpecBudget::InflightShare). A max_inflight the request or service names is kept as is.
  uint32_t InflightLimit() const;

  ControllerOptions options_;
  PipelineSink* sink_;
  Drafter* drafter_;
  Mode mode_;
  uint32_t max_inflight_;
  sampling::Sampler sampler_;

  std::vector<int32_t> committed_;
  std::vector<Node> nodes_;
  int32_t line_ = -1;  // node of the newest committed token, when it is fed
  int32_t fed_ = -1;   // the newest committed node that is fed (line_, or the one before a
                       // correction)
  uint32_t prompt_len_ = 0;
  uint32_t limit_ = 0;
  size_t emitted_ = 0;
  std::vector<TokenLogprob> logprobs_;  // not taken yet
  Finish finish_ = Finish::kNone;

  std::deque<InFlight> ledger_;
  std::set<uint64_t> dropped_;
  uint32_t part_ = 0;       // the tree partition (0: none yet)
  uint32_t next_part_ = 1;  // partition ids are never reused within a request
  int32_t part_size_ = 0;   // its length on the stages once every run sent has been applied
  int32_t part_base_ = 0;   // its prefix (the fork)
  bool frozen_ = false;     // it reached TreeSlotCap: no more runs until the tree ends
  uint32_t slot_cap_ = 0;
  bool drafting_broken_ = false;
  double draft_us_ = 0;              // drafting time per expansion (moving average)
  double levels_per_result_ = 1.0;   // tokens committed per verified result (moving average)
  double expansions_per_run_ = 1.0;  // draft passes while building a pipeinfer run (moving average)
  uint32_t allowance_ = 1;  // no_continuous: runs still allowed before the next verification
  std::optional<std::chrono::steady_clock::time_point> wake_at_;

  AcceptanceCounts local_;
  AcceptanceCounts cluster_;  // a snapshot of options_.acceptance
  Counters counters_;
};

}  // namespace pipeinfer::spec
